// SIGTERM and SIGINT during training: the first asks the run to stop after the current step (it
// then writes a checkpoint and ends with kExitPreempted); a second one ends the process at once,
// which never leaves a half-written checkpoint since checkpoints are written under a temporary
// name and renamed when complete.
#pragma once
#include "core/error.h"

namespace ftune {

// The exit status of a run stopped by a signal after writing a checkpoint: "preempted, resumable"
// (EX_TEMPFAIL of sysexits.h: try again later).
inline constexpr int kExitPreempted = 75;

// Thrown once the checkpoint of a stopped run is written; the CLI exits with kExitPreempted.
class Preempted : public Error {
 public:
  using Error::Error;
};

// Installs the handlers for its lifetime and restores the previous ones after.
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  bool requested() const;  // a first signal arrived
  int signal() const;      // which one (0 if none)
  double seconds_since() const;  // since the first signal arrived (0 if none)
};

}  // namespace ftune
