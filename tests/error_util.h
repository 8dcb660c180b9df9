// expect_error: the call must throw an ftune Error whose one-line message contains `substr`.
#pragma once
#include <gtest/gtest.h>

#include <string>

#include "core/error.h"

namespace ftune::testing {

template <typename F>
void expect_error(F&& f, const std::string& substr) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing: " << substr;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(substr), std::string::npos) << "message: " << msg << "\nexpected: " << substr;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message spans lines: " << msg;
  }
}

}  // namespace ftune::testing
