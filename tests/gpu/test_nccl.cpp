// The NCCL communicator at world size 1 (one GPU is what the test machine has; NCCL refuses two
// ranks on one GPU, where ftune uses host-staged Gloo instead): it initializes through the store,
// and an all-reduce leaves the data as it was; skipped without a GPU.
#include <gtest/gtest.h>

#include "../test_util.h"
#include "dist/store.h"
#include "gpu/nccl_communicator.h"
#include "ops/cuda/context.h"

namespace ftune {
namespace {

TEST(Nccl, WorldOfOneAllReduceIsTheIdentity) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  const auto store = dist::make_memory_store(std::chrono::milliseconds(10000));
  NcclCommunicator comm(*store, 0, 1, ctx, std::chrono::milliseconds(10000));
  const std::vector<float> x = testing::randn(1 << 20, 7);
  auto d = cuda::DeviceBuffer::from(x);
  comm.all_reduce_sum(d.as<float>(), x.size());
  ctx.synchronize();
  EXPECT_EQ(d.to_host<float>(x.size()), x);  // a sum over one rank: bit for bit
  EXPECT_TRUE(store->check({"ftune/nccl_id"}));
}

// ncclCommSplit: at world size 1 the one rank's color makes a group of one that still reduces;
// a negative color takes no part.
TEST(Nccl, SplitMakesASubGroup) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  const auto store = dist::make_memory_store(std::chrono::milliseconds(10000));
  NcclCommunicator comm(*store, 0, 1, ctx, std::chrono::milliseconds(10000));
  const auto sub = comm.split(3, 0);
  ASSERT_NE(sub, nullptr);
  EXPECT_EQ(sub->rank(), 0);
  EXPECT_EQ(sub->world(), 1);
  const std::vector<float> x = testing::randn(4096, 9);
  auto d = cuda::DeviceBuffer::from(x);
  sub->all_reduce_sum(d.as<float>(), x.size());
  ctx.synchronize();
  EXPECT_EQ(d.to_host<float>(x.size()), x);
  EXPECT_EQ(comm.split(-1, 0), nullptr);
}

}  // namespace
}  // namespace ftune
