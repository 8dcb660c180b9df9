// The live progress line on the terminal: step/total, loss, lr, gradient norm, tokens/s, memory in
// use (device memory on the GPU, resident memory on the CPU), ETA, and the fp16 steps skipped so far.
#pragma once
#include <cstdint>
#include <cstdio>

#include "train/trainer.h"

namespace ftune {

class ProgressLine {
 public:
  ProgressLine(int64_t total_steps, FILE* out);
  ~ProgressLine();
  void update(const StepMetrics& m);

 private:
  int64_t total_;
  FILE* out_;
  bool tty_;
  bool open_line_ = false;
};

}  // namespace ftune
