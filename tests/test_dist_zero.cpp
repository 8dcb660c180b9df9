// ZeRO's partition of the flat layout: whole norm chunks per rank covering the range once, decay
// ranges cut to a shard, and a norm assembled from shards with the unsharded norm's bits.
#include <gtest/gtest.h>

#include <thread>

#include "dist/communicator.h"
#include "dist/zero.h"
#include "optim/flat_adamw.h"
#include "test_util.h"

namespace ftune {
namespace {

TEST(Zero, ShardsCoverTheRangeInWholeChunks) {
  for (int64_t n : {int64_t{0}, int64_t{5}, dist::kNormChunk, 3 * dist::kNormChunk + 7, 40 * dist::kNormChunk + 1})
    for (int world : {1, 2, 3, 4, 7}) {
      int64_t at = 0;
      for (int r = 0; r < world; ++r) {
        const dist::Shard s = dist::make_shard(n, r, world);
        EXPECT_EQ(s.begin, at) << n << " " << world << " " << r;
        EXPECT_TRUE(s.begin % dist::kNormChunk == 0 || s.begin == n);
        EXPECT_EQ(s.counts.size(), static_cast<size_t>(world));
        EXPECT_EQ(static_cast<int64_t>(s.counts[r]), s.size());
        at = s.end;
      }
      EXPECT_EQ(at, n);
    }
}

TEST(Zero, DecayRangesWithinAShard) {
  dist::Shard s{100, 200, {100, 100, 100}};
  const auto r = dist::ranges_within({{0, 50}, {90, 120}, {150, 160}, {190, 300}}, s);
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0], (std::pair<int64_t, int64_t>{0, 20}));
  EXPECT_EQ(r[1], (std::pair<int64_t, int64_t>{50, 60}));
  EXPECT_EQ(r[2], (std::pair<int64_t, int64_t>{90, 100}));
}

// Three ranks as threads over Gloo: the norm from their shards equals flat_grad_norm bit for bit.
TEST(Zero, ShardedNormHasTheUnshardedBits) {
  const int64_t n = 5 * dist::kNormChunk + 12345;
  const std::vector<float> g = testing::randn(static_cast<size_t>(n), 11, 3.0f);
  const double want = flat_grad_norm(g.data(), n);
  const auto store = dist::make_memory_store(std::chrono::milliseconds(30000));
  std::vector<double> got(3, -1);
  std::vector<std::thread> ranks;
  std::vector<std::unique_ptr<dist::Store>> views;
  for (int r = 0; r < 3; ++r) views.push_back(dist::prefixed(*store, "zero"));
  std::vector<std::unique_ptr<dist::Communicator>> comms(3);
  for (int r = 0; r < 3; ++r)
    ranks.emplace_back([&, r] {
      comms[r] = dist::make_gloo_communicator(*views[r], r, 3, std::chrono::milliseconds(30000), "127.0.0.1");
      const dist::Shard s = dist::make_shard(n, r, 3);
      got[r] = dist::sharded_grad_norm(g.data() + s.begin, s, n, *comms[r]);
    });
  for (auto& t : ranks) t.join();
  for (int r = 0; r < 3; ++r) EXPECT_EQ(got[r], want) << r;
}

}  // namespace
}  // namespace ftune
