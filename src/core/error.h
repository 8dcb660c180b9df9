// User-facing errors: one line that names the file, key or row, what was expected and what
// was found. The CLI prints what() and exits non-zero; nothing else catches these.
#pragma once
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace ftune {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

// Internal invariant (a bug in ftune, not in the user's input).
#define FT_ASSERT(cond)                                                                   \
  do {                                                                                    \
    if (!(cond)) ::ftune::fail("internal error: {} at {}:{}", #cond, __FILE__, __LINE__); \
  } while (0)

}  // namespace ftune
