// Dynamic loss scaling follows torch's GradScaler: halve and skip on overflow, double after
// growth_interval clean steps, the count restarting at every change.
#include <gtest/gtest.h>

#include "optim/loss_scaler.h"

namespace ftune {
namespace {

TEST(LossScaler, BacksOffOnOverflowAndGrowsAfterCleanSteps) {
  LossScaler s(1024.0, 2.0, 0.5, 3);
  EXPECT_EQ(s.scale(), 1024.0);
  EXPECT_TRUE(s.update(true));
  EXPECT_TRUE(s.update(true));
  EXPECT_EQ(s.scale(), 1024.0);
  EXPECT_TRUE(s.update(true));  // third clean step in a row: doubled
  EXPECT_EQ(s.scale(), 2048.0);
  EXPECT_TRUE(s.update(true));
  EXPECT_FALSE(s.update(false));  // overflow: skipped, halved, count restarted
  EXPECT_EQ(s.scale(), 1024.0);
  EXPECT_FALSE(s.update(false));
  EXPECT_EQ(s.scale(), 512.0);
  EXPECT_EQ(s.skipped(), 2);
  EXPECT_TRUE(s.update(true));
  EXPECT_TRUE(s.update(true));
  EXPECT_EQ(s.scale(), 512.0);
  EXPECT_TRUE(s.update(true));
  EXPECT_EQ(s.scale(), 1024.0);
}

TEST(LossScaler, TorchDefaults) {
  LossScaler s;
  EXPECT_EQ(s.scale(), 65536.0);
  for (int i = 0; i < 1999; ++i) s.update(true);
  EXPECT_EQ(s.scale(), 65536.0);
  s.update(true);
  EXPECT_EQ(s.scale(), 131072.0);
}

}  // namespace
}  // namespace ftune
