// Output directory checks and the staged commit of a run's files.
#include "train/run_output.h"

#include <filesystem>
#include <set>
#include <vector>

#include "core/error.h"

namespace ftune {

namespace fs = std::filesystem;

RunOutput::RunOutput(std::string dir, bool overwrite, const std::vector<std::string>& protected_dirs)
    : dir_(std::move(dir)) {
  std::error_code ec;
  if (dir_.empty()) fail("output_dir is not set");
  for (const auto& p : protected_dirs)
    if (!p.empty() && fs::exists(dir_, ec) && fs::exists(p, ec) && fs::equivalent(dir_, p, ec))
      fail("{}: output_dir is the model directory {}; choose another directory so the model's files stay as they are",
           dir_, p);
  if (!fs::exists(dir_, ec)) return;
  if (!fs::is_directory(dir_, ec)) fail("{}: output_dir exists and is not a directory", dir_);
  bool empty = true;
  for (const auto& e : fs::directory_iterator(dir_, ec))
    if (e.path().filename() != kStagingName) empty = false;
  if (ec) fail("{}: cannot list output_dir: {}", dir_, ec.message());
  if (!empty && !overwrite)
    fail("{}: output_dir is not empty (pass --overwrite to replace the files ftune writes there)", dir_);
}

std::string RunOutput::staging_dir() const { return (fs::path(dir_) / kStagingName).string(); }

std::string RunOutput::staged(const std::string& name) const { return (fs::path(staging_dir()) / name).string(); }

void RunOutput::begin() {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) fail("{}: cannot create output_dir: {}", dir_, ec.message());
  fs::remove_all(staging_dir(), ec);  // what an interrupted earlier run left
  if (ec) fail("{}: cannot remove the stale staging directory: {}", staging_dir(), ec.message());
  fs::create_directory(staging_dir(), ec);
  if (ec) fail("{}: cannot create: {}", staging_dir(), ec.message());
  begun_ = true;
}

void RunOutput::commit(const std::function<bool(const std::string& name)>& stale) {
  FT_ASSERT(begun_ && !committed_);
  std::error_code ec;
  std::set<std::string> staged;
  for (const auto& e : fs::directory_iterator(staging_dir(), ec)) staged.insert(e.path().filename().string());
  for (const auto& e : fs::directory_iterator(staging_dir(), ec)) {
    const fs::path to = fs::path(dir_) / e.path().filename();
    if (fs::is_directory(to) && !fs::is_directory(e.path())) fail("{}: is a directory; cannot replace it with a file", to.string());
    if (fs::is_directory(to) && fs::is_directory(e.path())) fs::remove_all(to, ec);  // an earlier run's, replaced whole
    fs::rename(e.path(), to, ec);
    if (ec) fail("{}: cannot move into place: {}", to.string(), ec.message());
  }
  if (ec) fail("{}: cannot list: {}", staging_dir(), ec.message());
  if (stale) {
    std::vector<fs::path> old;
    for (const auto& e : fs::directory_iterator(dir_, ec)) {
      const std::string name = e.path().filename().string();
      if (e.is_regular_file() && !staged.count(name) && stale(name)) old.push_back(e.path());
    }
    for (const auto& p : old) fs::remove(p, ec);
  }
  fs::remove_all(staging_dir(), ec);
  committed_ = true;
}

}  // namespace ftune
