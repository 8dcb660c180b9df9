// Training checkpoints: everything a run needs to continue exactly where it stopped, one directory
// per step under output_dir/checkpoints/: state.safetensors (the backend's weights and optimizer
// state), trainer.json (step, data position), config.yaml (the resolved recipe), metrics.jsonl (the
// metrics so far) and manifest.json (every file's size and CRC-32). A checkpoint is written in a
// temporary directory, each file fsynced, then renamed into place, so a checkpoint that exists
// under its final name is complete; one whose files do not match its manifest is never loaded.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/state_dict.h"
#include "data/batcher.h"

namespace ftune {

// A backend's training state: named arrays and integers.
using BackendState = StateDict;

struct TrainProgress {
  int64_t step = 0;           // optimizer steps completed
  BatcherState batcher;       // where the data continues
  int64_t skipped_steps = 0;  // fp16 steps skipped so far
};

struct Checkpoint {
  std::string dir;
  TrainProgress progress;
  BackendState state;
  std::string config_yaml;   // the recipe the run had
  std::string metrics;       // metrics.jsonl up to this step
};

inline constexpr const char* kCheckpointsDir = "checkpoints";

// Writes step `progress.step`'s checkpoint under root (output_dir/checkpoints), then deletes all
// but the newest `keep_last` complete ones (keep_last <= 0 keeps all). Returns its directory.
std::string write_checkpoint(const std::string& root, const TrainProgress& progress, const BackendState& state,
                             const std::string& config_yaml, const std::string& metrics, int64_t keep_last);

// The complete checkpoints under root, newest first (directory names only; not yet verified).
std::vector<std::string> list_checkpoints(const std::string& root);

// Reads and verifies a checkpoint directory (manifest, sizes, CRC-32s, contents); throws an Error
// naming the file and the reason when it is not a complete, intact checkpoint.
Checkpoint read_checkpoint(const std::string& dir);

}  // namespace ftune
