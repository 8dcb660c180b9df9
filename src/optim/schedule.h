// Learning-rate schedules, as transformers' get_{constant,linear,cosine}_schedule_with_warmup:
// step s (0-based) uses lr * s / warmup during warmup, then constant, linear or cosine decay to
// lr * min_lr_ratio at the last step.
#pragma once
#include <cstdint>
#include <string>

namespace ftune {

struct LrSchedule {
  std::string kind = "cosine";  // "constant", "linear", "cosine"
  double lr = 2e-4;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  double min_lr_ratio = 0.0;
  double at(int64_t step) const;
};

}  // namespace ftune
