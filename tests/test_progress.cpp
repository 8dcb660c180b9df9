// The progress line: one line per step into a log (not a terminal), with the fp16 steps skipped so
// far named only when there are some.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "train/progress.h"

namespace ftune {
namespace {

std::string line_of(const StepMetrics& m) {
  char buf[512] = {};
  FILE* f = fmemopen(buf, sizeof(buf) - 1, "w");
  {
    ProgressLine p(10, f);
    p.update(m);
  }
  std::fclose(f);
  return buf;
}

TEST(ProgressLine, NamesSkippedStepsOnlyWhenThereAreSome) {
  StepMetrics m;
  m.step = 3, m.loss = 2.5, m.lr = 1e-4, m.grad_norm = 0.75, m.tokens_per_s = 1234, m.elapsed_s = 3.0, m.memory_gib = 1.5;
  const std::string clean = line_of(m);
  EXPECT_EQ(clean, "step 3/10  loss 2.5000  lr 0.0001  grad_norm 0.750  1234 tok/s  1.50 GiB  ETA 0:00:07\n");
  m.skipped = true, m.skipped_steps = 2;
  EXPECT_EQ(line_of(m), "step 3/10  loss 2.5000  lr 0.0001  grad_norm 0.750  1234 tok/s  1.50 GiB  ETA 0:00:07  skipped 2 "
                        "(fp16 overflow)\n");
}

}  // namespace
}  // namespace ftune
