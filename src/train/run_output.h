// A command's output directory: checked before any work starts, filled through a staging
// directory inside it while the work runs, and moved into place only when the work completes, so
// the files a user finds there are all from one complete run (all old or all new).
#pragma once
#include <functional>
#include <string>
#include <vector>

namespace ftune {

class RunOutput {
 public:
  // Checks `dir`: absent, empty (a stale staging directory does not count), or `overwrite`; not a
  // file; not one of `protected_dirs` (the model a run reads). Creates nothing.
  RunOutput(std::string dir, bool overwrite, const std::vector<std::string>& protected_dirs = {});

  // Creates the output directory (if absent) and a fresh, empty staging directory in it. Call
  // when the work really starts: a start that fails before it leaves nothing behind.
  void begin();
  bool begun() const { return begun_; }

  // Where `name` is written during the run (inside the staging directory).
  std::string staged(const std::string& name) const;
  const std::string& dir() const { return dir_; }
  std::string staging_dir() const;

  // Renames every staged file over its name in the output directory (each rename is atomic),
  // then removes the staging directory. Files of the output directory that the run did not
  // write are left alone, except those `stale` says an earlier run of the same kind wrote (a
  // previous run's extra weight shards, which would otherwise sit beside the new ones).
  void commit(const std::function<bool(const std::string& name)>& stale = {});

  static constexpr const char* kStagingName = ".ftune-partial";

 private:
  std::string dir_;
  bool begun_ = false, committed_ = false;
};

}  // namespace ftune
