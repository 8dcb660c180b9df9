// Command-line reading the benchmark programs share.
#pragma once
#include <string>

#include "core/error.h"

namespace ftune::bench {

// The value after the flag argv[i], moving i onto it; a one-line error naming the flag when none follows.
inline std::string flag_value(int argc, char** argv, int& i) {
  if (i + 1 >= argc) fail("{} needs a value", argv[i]);
  return argv[++i];
}

}  // namespace ftune::bench
