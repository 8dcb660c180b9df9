// --out files written whole.
#include "cli/output_file.h"

#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace ftune {

void check_output_file_path(const std::string& path, bool overwrite, const std::string& input) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) fail("--out {}: is a directory; name a file", path);
  if (!input.empty() && fs::exists(path, ec) && fs::equivalent(path, input, ec))
    fail("--out {}: is the input file", path);
  if (fs::exists(path, ec) && !overwrite) fail("--out {}: exists (pass --overwrite to replace it)", path);
}

void write_output_file(const std::string& path, bool overwrite, const std::string& text) {
  namespace fs = std::filesystem;
  check_output_file_path(path, overwrite);
  const std::string tmp = path + ".partial";
  {
    std::ofstream f(tmp, std::ios::binary);
    if (!(f << text) || !f.flush()) {
      std::error_code ec;
      fs::remove(tmp, ec);
      fail("--out {}: cannot write", path);
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    fail("--out {}: cannot write ({})", path, ec.message());
  }
}

}  // namespace ftune
