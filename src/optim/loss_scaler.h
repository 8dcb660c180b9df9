// Dynamic loss scaling for fp16 training, with torch.cuda.amp.GradScaler's rules: the loss (and
// so every gradient) is multiplied by the scale; a step whose gradients overflow (inf or NaN) is
// skipped and the scale halved; after `growth_interval` clean steps in a row the scale doubles.
#pragma once
#include <cstdint>

namespace ftune {

class LossScaler {
 public:
  explicit LossScaler(double init = 65536.0, double growth = 2.0, double backoff = 0.5, int64_t interval = 2000)
      : scale_(init), growth_(growth), backoff_(backoff), interval_(interval) {}

  double scale() const { return scale_; }
  // After the backward: `finite` says whether every gradient is finite. Returns whether the
  // optimizer step may run (false: skip it); updates the scale for the next step.
  bool update(bool finite);
  int64_t skipped() const { return skipped_; }
  // What a checkpoint keeps, and its restoration on resume.
  struct State {
    double scale;
    int64_t clean, skipped;
  };
  State state() const { return {scale_, clean_, skipped_}; }
  void restore(const State& s) { scale_ = s.scale, clean_ = s.clean, skipped_ = s.skipped; }

 private:
  double scale_, growth_, backoff_;
  int64_t interval_;
  int64_t clean_ = 0;    // clean steps since the last change
  int64_t skipped_ = 0;  // steps skipped for overflow, in all
};

}  // namespace ftune
