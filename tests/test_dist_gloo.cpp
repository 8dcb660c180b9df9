// The Gloo communicator with 2, 3 and 4 ranks as threads of one process (and once as processes):
// sums equal, bit for bit, the sum in rank order and are alike on every rank; uneven
// reduce-scatter and all-gather; broadcast from a rank other than 0; send/recv around a ring; the
// barrier; a rank that never arrives, or that has gone, stops the others with an error naming it.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <latch>
#include <random>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "dist/communicator.h"
#include "dist/store.h"
#include "test_util.h"

namespace ftune::dist {
namespace {

using std::chrono::milliseconds;

constexpr milliseconds kTimeout(60000);  // bounds a healthy test; never reached
constexpr milliseconds kShort(2000);     // for the tests of ranks that do not arrive

// Values of many magnitudes and both signs, never zero, different for every seed: their sums
// round differently in different orders.
template <typename T>
std::vector<T> values(size_t n, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<double> frac(1.0, 2.0);
  std::uniform_int_distribution<int> expo(-12, 12);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(((g() & 1) ? -1.0 : 1.0) * std::ldexp(frac(g), expo(g)));
  return v;
}

uint64_t seed(int world, int rank, int k) { return 1000003ull * world + 7919ull * rank + k; }

// in[0] + in[1] + ... element by element, in that order.
template <typename T>
std::vector<T> rank_order_sum(const std::vector<std::vector<T>>& in) {
  std::vector<T> s = in[0];
  for (size_t r = 1; r < in.size(); ++r)
    for (size_t i = 0; i < s.size(); ++i) s[i] += in[r][i];
  return s;
}

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// Runs fn on `world` threads, each rank with its own communicator over one in-memory store; the
// ranks in `absent` never create one. Returns each rank's error ("" for none). A rank keeps its
// communicator (unless fn resets it) until every rank is done, so that no rank sees another's
// connections close early.
using RankFn = std::function<void(std::unique_ptr<Communicator>&)>;
std::vector<std::string> run_ranks(int world, milliseconds timeout, const RankFn& fn, const std::vector<int>& absent = {}) {
  auto store = make_memory_store(timeout);
  std::vector<std::string> errors(world);
  std::latch done(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      std::unique_ptr<Communicator> comm;
      if (std::find(absent.begin(), absent.end(), r) == absent.end()) {
        try {
          comm = make_gloo_communicator(*store, r, world, timeout);
          fn(comm);
        } catch (const std::exception& e) {
          errors[r] = e.what();
        }
      }
      done.arrive_and_wait();
    });
  for (auto& t : threads) t.join();
  return errors;
}

void expect_no_errors(const std::vector<std::string>& errors) {
  for (size_t r = 0; r < errors.size(); ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
}

template <typename T>
void check_all_reduce() {
  const std::vector<size_t> sizes{1, 3, 1000, 12347};
  for (int world : {2, 3, 4}) {
    // in[k][r]: rank r's input to the k-th all_reduce; out[k][r] what it got back (twice each).
    std::vector<std::vector<std::vector<T>>> in(sizes.size()), out(sizes.size()), again(sizes.size());
    for (size_t k = 0; k < sizes.size(); ++k) {
      out[k].resize(world);
      again[k].resize(world);
      for (int r = 0; r < world; ++r) in[k].push_back(values<T>(sizes[k], seed(world, r, static_cast<int>(k))));
    }
    expect_no_errors(run_ranks(world, kTimeout, [&](std::unique_ptr<Communicator>& c) {
      const int r = c->rank();
      for (size_t k = 0; k < sizes.size(); ++k) {
        out[k][r] = in[k][r];
        c->all_reduce_sum(out[k][r].data(), sizes[k]);
        again[k][r] = in[k][r];
        c->all_reduce_sum(again[k][r].data(), sizes[k]);
      }
    }));
    for (size_t k = 0; k < sizes.size(); ++k) {
      const std::vector<T> ref = rank_order_sum(in[k]);
      for (int r = 0; r < world; ++r) {
        EXPECT_TRUE(same_bits(out[k][r], ref)) << "world " << world << " n " << sizes[k] << " rank " << r;
        EXPECT_TRUE(same_bits(again[k][r], ref)) << "world " << world << " n " << sizes[k] << " rank " << r;
      }
    }
    if (world >= 3) {  // the inputs tell the orders apart: another order gives other bits
      std::vector<std::vector<T>> reversed(in.back().rbegin(), in.back().rend());
      EXPECT_FALSE(same_bits(rank_order_sum(reversed), rank_order_sum(in.back())));
    }
  }
}

TEST(DistGloo, AllReduceFloatIsTheRankOrderSumOnEveryRank) { check_all_reduce<float>(); }
TEST(DistGloo, AllReduceDoubleIsTheRankOrderSumOnEveryRank) { check_all_reduce<double>(); }

TEST(DistGloo, LargeAllReduce) {
  const int world = 3;
  const size_t n = 10'000'000;  // several chunks
  std::vector<std::vector<float>> in, out(world);
  for (int r = 0; r < world; ++r) in.push_back(values<float>(n, seed(world, r, 99)));
  expect_no_errors(run_ranks(world, kTimeout, [&](std::unique_ptr<Communicator>& c) {
    out[c->rank()] = in[c->rank()];
    c->all_reduce_sum(out[c->rank()].data(), n);
  }));
  const std::vector<float> ref = rank_order_sum(in);
  for (int r = 0; r < world; ++r) EXPECT_TRUE(same_bits(out[r], ref)) << "rank " << r;
}

void check_reduce_scatter(int world, const std::vector<size_t>& counts, int k) {
  size_t total = 0;
  for (size_t c : counts) total += c;
  std::vector<std::vector<float>> in, out(world);
  for (int r = 0; r < world; ++r) in.push_back(values<float>(total, seed(world, r, k)));
  expect_no_errors(run_ranks(world, kTimeout, [&](std::unique_ptr<Communicator>& c) {
    const int r = c->rank();
    out[r].assign(counts[r], 12345.0f);
    c->reduce_scatter_sum(in[r].data(), out[r].data(), counts);
  }));
  const std::vector<float> ref = rank_order_sum(in);
  size_t at = 0;
  for (int r = 0; r < world; ++r) {
    const std::vector<float> part(ref.begin() + at, ref.begin() + at + counts[r]);
    EXPECT_TRUE(same_bits(out[r], part)) << "world " << world << " rank " << r;
    at += counts[r];
  }
}

TEST(DistGloo, ReduceScatterUnevenParts) {
  const std::vector<size_t> counts{1000, 0, 17, 333};
  for (int world : {2, 3, 4}) check_reduce_scatter(world, std::vector<size_t>(counts.begin(), counts.begin() + world), 1);
  check_reduce_scatter(4, {1, 2, 3, 1000}, 2);
  check_reduce_scatter(3, {2'500'000, 1, 2'100'001}, 3);  // parts longer than a round
}

TEST(DistGloo, AllGatherUnevenParts) {
  for (int world : {2, 3, 4}) {
    const std::vector<size_t> all{5, 1234, 0, 77};
    const std::vector<size_t> counts(all.begin(), all.begin() + world);
    std::vector<std::vector<float>> in, out(world);
    std::vector<float> expected;
    for (int r = 0; r < world; ++r) {
      in.push_back(values<float>(counts[r], seed(world, r, 4)));
      expected.insert(expected.end(), in[r].begin(), in[r].end());
    }
    expect_no_errors(run_ranks(world, kTimeout, [&](std::unique_ptr<Communicator>& c) {
      const int r = c->rank();
      out[r].assign(expected.size(), 12345.0f);
      c->all_gather(in[r].data(), out[r].data(), counts);
    }));
    for (int r = 0; r < world; ++r) EXPECT_TRUE(same_bits(out[r], expected)) << "world " << world << " rank " << r;
  }
}

TEST(DistGloo, BroadcastFromANonZeroRoot) {
  for (int world : {2, 3, 4}) {
    const size_t bytes = 100003;
    std::vector<std::vector<uint8_t>> data(world);
    std::vector<uint8_t> sent(bytes), sent2(bytes);
    std::mt19937 g(world);
    for (auto& b : sent) b = static_cast<uint8_t>(g());
    for (auto& b : sent2) b = static_cast<uint8_t>(g());
    std::vector<std::vector<uint8_t>> second(world);
    expect_no_errors(run_ranks(world, kTimeout, [&](std::unique_ptr<Communicator>& c) {
      const int r = c->rank();
      const int root = world - 1;
      data[r] = r == root ? sent : std::vector<uint8_t>(bytes, static_cast<uint8_t>(r));
      c->broadcast(data[r].data(), bytes, root);
      second[r] = r == 1 ? sent2 : std::vector<uint8_t>(bytes, 0);
      c->broadcast(second[r].data(), bytes, 1);
      c->broadcast(nullptr, 0, 0);
    }));
    for (int r = 0; r < world; ++r) {
      EXPECT_EQ(data[r], sent) << "world " << world << " rank " << r;
      EXPECT_EQ(second[r], sent2) << "world " << world << " rank " << r;
    }
  }
}

TEST(DistGloo, SendRecvAroundARingMatchInOrder) {
  for (int world : {2, 3, 4}) {
    // Rank r sends two messages to r + 1: a long one, then a short one.
    auto first = [&](int r) { return values<float>(1000 + 17 * r, seed(world, r, 5)); };
    auto second = [&](int r) { return values<float>(3 + r, seed(world, r, 6)); };
    std::vector<std::vector<float>> got1(world), got2(world);
    expect_no_errors(run_ranks(world, kTimeout, [&](std::unique_ptr<Communicator>& c) {
      const int r = c->rank(), next = (r + 1) % world, prev = (r + world - 1) % world;
      const auto a = first(r), b = second(r);
      got1[r].assign(first(prev).size(), 0.0f);
      got2[r].assign(second(prev).size(), 0.0f);
      auto sends = [&] {
        c->send(a.data(), a.size() * sizeof(float), next);
        c->send(b.data(), b.size() * sizeof(float), next);
      };
      auto recvs = [&] {
        c->recv(got1[r].data(), got1[r].size() * sizeof(float), prev);
        c->recv(got2[r].data(), got2[r].size() * sizeof(float), prev);
      };
      // A send returns once received: even ranks send first, odd ranks receive first.
      if (r % 2 == 0) {
        sends();
        recvs();
      } else {
        recvs();
        sends();
      }
    }));
    for (int r = 0; r < world; ++r) {
      const int prev = (r + world - 1) % world;
      EXPECT_TRUE(same_bits(got1[r], first(prev))) << "world " << world << " rank " << r;
      EXPECT_TRUE(same_bits(got2[r], second(prev))) << "world " << world << " rank " << r;
    }
  }
}

TEST(DistGloo, SendRecvExchangesBetweenNeighboursWithoutWaiting) {
  // Pipeline stages in a line: every rank exchanges with the next one and then with the one before,
  // both ranks of a pair calling send_recv at once (two plain sends would wait for each other), with
  // sizes that differ per direction, an empty message, and a plain send and recv after each.
  for (int world : {2, 3, 4}) {
    auto msg = [&](int from, int to, int k) {
      return values<float>(k == 2 ? 0 : 500 + 31 * from + 7 * to + k, seed(world, from * 8 + to, 10 + k));
    };
    std::vector<std::vector<std::vector<float>>> got(world, std::vector<std::vector<float>>(6));
    expect_no_errors(run_ranks(world, kTimeout, [&](std::unique_ptr<Communicator>& c) {
      const int r = c->rank();
      auto& g = got[r];
      for (int k = 0; k < 3; ++k) {
        if (r + 1 < world) {  // with the next rank
          const auto out = msg(r, r + 1, k);
          g[k].assign(msg(r + 1, r, k).size(), 0.0f);
          c->send_recv(out.data(), out.size() * sizeof(float), g[k].data(), g[k].size() * sizeof(float), r + 1);
        }
        if (r > 0) {  // with the previous one
          const auto out = msg(r, r - 1, k);
          g[3 + k].assign(msg(r - 1, r, k).size(), 0.0f);
          c->send_recv(out.data(), out.size() * sizeof(float), g[3 + k].data(), g[3 + k].size() * sizeof(float), r - 1);
        }
      }
      // Point-to-point order is kept across both kinds of call.
      if (r + 1 < world) {
        const auto out = msg(r, r + 1, 5);
        c->send(out.data(), out.size() * sizeof(float), r + 1);
      }
      if (r > 0) {
        std::vector<float> in(msg(r - 1, r, 5).size());
        c->recv(in.data(), in.size() * sizeof(float), r - 1);
        EXPECT_TRUE(same_bits(in, msg(r - 1, r, 5))) << "world " << world << " rank " << r;
      }
    }));
    for (int r = 0; r < world; ++r)
      for (int k = 0; k < 3; ++k) {
        if (r + 1 < world) EXPECT_TRUE(same_bits(got[r][k], msg(r + 1, r, k))) << "world " << world << " rank " << r;
        if (r > 0) EXPECT_TRUE(same_bits(got[r][3 + k], msg(r - 1, r, k))) << "world " << world << " rank " << r;
      }
  }
}

TEST(DistGloo, BarrierWaitsForEveryRank) {
  for (int world : {2, 3, 4}) {
    std::atomic<int> arrived{0}, early{0};
    const int rounds = 5;
    expect_no_errors(run_ranks(world, kTimeout, [&](std::unique_ptr<Communicator>& c) {
      for (int k = 0; k < rounds; ++k) {
        std::this_thread::sleep_for(milliseconds(3 * c->rank()));  // later ranks come later
        ++arrived;
        c->barrier();
        if (arrived.load() < world * (k + 1)) ++early;  // passed before every rank arrived
      }
    }));
    EXPECT_EQ(arrived.load(), world * rounds);
    EXPECT_EQ(early.load(), 0) << "world " << world;
  }
}

TEST(DistGloo, ARankThatNeverJoinsIsNamed) {
  auto errors = run_ranks(3, kShort, [](std::unique_ptr<Communicator>&) {}, {2});
  EXPECT_EQ(errors[0], "gloo connect: rank 2 did not join within 2 s (dist.timeout_s)");
  EXPECT_EQ(errors[1], "gloo connect: rank 2 did not join within 2 s (dist.timeout_s)");
  errors = run_ranks(4, kShort, [](std::unique_ptr<Communicator>&) {}, {1, 3});
  EXPECT_EQ(errors[0], "gloo connect: ranks 1, 3 did not join within 2 s (dist.timeout_s)");
  EXPECT_EQ(errors[2], "gloo connect: ranks 1, 3 did not join within 2 s (dist.timeout_s)");
}

// Every rank below `present` calls op; the others never do. Returns the errors.
std::vector<std::string> run_without(int world, int present, const std::function<void(Communicator&)>& op) {
  return run_ranks(world, kShort, [&](std::unique_ptr<Communicator>& c) {
    if (c->rank() >= present) return;
    op(*c);
  });
}

TEST(DistGloo, ACollectiveARankNeverCallsNamesIt) {
  std::vector<float> v(1000, 1.0f), part(1000, 0.0f), all(3000, 0.0f);
  const std::vector<size_t> counts{1000, 1000, 1000};
  struct Case {
    const char* name;
    std::function<void(Communicator&)> op;
  };
  const std::vector<Case> cases{
      {"all_reduce", [&](Communicator& c) { std::vector<float> x = v; c.all_reduce_sum(x.data(), x.size()); }},
      {"reduce_scatter", [&](Communicator& c) { std::vector<float> x(1000); c.reduce_scatter_sum(all.data(), x.data(), counts); }},
      {"all_gather", [&](Communicator& c) { std::vector<float> x(3000); c.all_gather(v.data(), x.data(), counts); }},
      {"barrier", [](Communicator& c) { c.barrier(); }},
  };
  for (const auto& k : cases) {
    const auto errors = run_without(3, 2, k.op);
    const std::string expected = std::string(k.name) + ": rank 2 did not respond within 2 s (dist.timeout_s)";
    EXPECT_EQ(errors[0], expected);
    EXPECT_EQ(errors[1], expected);
    EXPECT_EQ(errors[2], "");
  }
  // Two ranks missing: both named.
  auto errors = run_without(4, 2, [&](Communicator& c) {
    std::vector<float> x = v;
    c.all_reduce_sum(x.data(), x.size());
  });
  EXPECT_EQ(errors[0], "all_reduce: ranks 2, 3 did not respond within 2 s (dist.timeout_s)");
  EXPECT_EQ(errors[1], "all_reduce: ranks 2, 3 did not respond within 2 s (dist.timeout_s)");
}

TEST(DistGloo, BroadcastAndRecvNameTheRankThatDoesNotCome) {
  // Rank 2 never takes part: the root, sending to it, names it; rank 1 got its copy.
  std::vector<uint8_t> got(64, 0);
  auto errors = run_ranks(3, kShort, [&](std::unique_ptr<Communicator>& c) {
    if (c->rank() == 2) return;
    std::vector<uint8_t> b(64, c->rank() == 0 ? 7 : 0);
    c->broadcast(b.data(), b.size(), 0);
    if (c->rank() == 1) got = b;
  });
  EXPECT_EQ(errors[0], "broadcast: rank 2 did not respond within 2 s (dist.timeout_s)");
  EXPECT_EQ(errors[1], "");
  EXPECT_EQ(errors[2], "");
  EXPECT_EQ(got, std::vector<uint8_t>(64, 7));
  errors = run_ranks(2, kShort, [](std::unique_ptr<Communicator>& c) {
    if (c->rank() == 1) return;
    float x = 0;
    c->recv(&x, sizeof(x), 1);
  });
  EXPECT_EQ(errors[0], "recv: rank 1 did not respond within 2 s (dist.timeout_s)");
  EXPECT_EQ(errors[1], "");
}

TEST(DistGloo, AStoppedCommunicatorRefusesFurtherCalls) {
  auto errors = run_ranks(2, kShort, [&](std::unique_ptr<Communicator>& c) {
    if (c->rank() == 1) return;
    try {
      c->barrier();
    } catch (const Error&) {
    }
    float x = 1;
    c->all_reduce_sum(&x, 1);
  });
  EXPECT_EQ(errors[0], "all_reduce: the communicator stopped at an earlier error: barrier: rank 1 did not respond within 2 s (dist.timeout_s)");
  EXPECT_EQ(errors[1], "");
}

TEST(DistGloo, ARankThatLeftIsNamed) {
  std::latch closed(1);
  const auto errors = run_ranks(3, kTimeout, [&](std::unique_ptr<Communicator>& c) {
    c->barrier();  // all connected
    if (c->rank() == 2) {
      c.reset();  // closes its connections
      closed.count_down();
      return;
    }
    closed.wait();
    std::vector<float> x(1000, 1.0f);
    c->all_reduce_sum(x.data(), x.size());
  });
  for (int r : {0, 1}) {
    EXPECT_EQ(errors[r].rfind("all_reduce: the connection to rank 2 failed (", 0), 0u) << errors[r];
    EXPECT_EQ(errors[r].find('\n'), std::string::npos);
  }
  EXPECT_EQ(errors[2], "");
}

TEST(DistGloo, BadArgumentsAreNamed) {
  std::vector<std::string> errs(2);
  expect_no_errors(run_ranks(2, kTimeout, [&](std::unique_ptr<Communicator>& c) {
    std::vector<float> x(4);
    try {
      c->reduce_scatter_sum(x.data(), x.data(), {1, 1, 2});
    } catch (const Error& e) {
      errs[c->rank()] = e.what();
    }
    try {
      c->send(x.data(), 4, c->rank());
    } catch (const Error& e) {
      errs[c->rank()] += std::string(" | ") + e.what();
    }
    c->barrier();  // still usable
  }));
  EXPECT_EQ(errs[0], "reduce_scatter: 3 counts given for a world of 2 | send: peer 0 is not another rank of a world of 2 (this is rank 0)");
  EXPECT_EQ(errs[1], "reduce_scatter: 3 counts given for a world of 2 | send: peer 1 is not another rank of a world of 2 (this is rank 1)");
}

TEST(DistGloo, WorldOfOne) {
  auto store = make_memory_store(kTimeout);
  auto c = make_gloo_communicator(*store, 0, 1, kTimeout, "127.0.0.1");
  std::vector<float> x = values<float>(10, 1), y(10);
  const std::vector<float> x0 = x;
  c->all_reduce_sum(x.data(), x.size());
  EXPECT_TRUE(same_bits(x, x0));
  c->reduce_scatter_sum(x.data(), y.data(), {10});
  EXPECT_TRUE(same_bits(y, x0));
  c->barrier();
  EXPECT_THROW(c->send(x.data(), 4, 0), Error);

  auto s = make_single_communicator();
  EXPECT_EQ(s->world(), 1);
  std::vector<float> z(10, 0.0f);
  s->all_gather(x.data(), z.data(), {10});
  EXPECT_TRUE(same_bits(z, x0));
  EXPECT_THROW(s->recv(z.data(), 4, 1), Error);
}

// ---- ranks as processes ----

// A store in a directory for ranks that are processes: one file a key, written whole (rename).
class FileStore final : public Store {
 public:
  FileStore(std::string dir, milliseconds timeout) : dir_(std::move(dir)), timeout_(timeout) {}
  void set(const std::string& key, const Bytes& value) override {
    const std::string tmp = path(key) + ".tmp" + std::to_string(getpid());
    std::ofstream(tmp, std::ios::binary).write(reinterpret_cast<const char*>(value.data()), value.size());
    std::filesystem::rename(tmp, path(key));
  }
  Bytes get(const std::string& key) override {
    wait({key}, timeout_);
    std::ifstream f(path(key), std::ios::binary);
    return Bytes(std::istreambuf_iterator<char>(f), {});
  }
  int64_t add(const std::string& key, int64_t delta) override {
    const int fd = ::open((dir_ + "/.lock").c_str(), O_CREAT | O_RDWR, 0600);
    flock(fd, LOCK_EX);
    int64_t v = delta;
    if (check({key})) {
      const Bytes b = get(key);
      v += std::stoll(std::string(b.begin(), b.end()));
    }
    const std::string s = std::to_string(v);
    set(key, Bytes(s.begin(), s.end()));
    flock(fd, LOCK_UN);
    ::close(fd);
    return v;
  }
  bool check(const std::vector<std::string>& keys) override {
    for (const auto& k : keys)
      if (!std::filesystem::exists(path(k))) return false;
    return true;
  }
  void wait(const std::vector<std::string>& keys, milliseconds timeout) override {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!check(keys)) {
      if (std::chrono::steady_clock::now() > deadline) fail("file store: keys did not appear within {} ms", timeout.count());
      std::this_thread::sleep_for(milliseconds(2));
    }
  }
  milliseconds timeout() const override { return timeout_; }

 private:
  std::string path(const std::string& key) const {
    std::string name;
    for (unsigned char ch : key) name += std::isalnum(ch) ? std::string(1, static_cast<char>(ch)) : fmt::format("%{:02X}", ch);
    return dir_ + "/" + name;
  }
  std::string dir_;
  milliseconds timeout_;
};

TEST(DistGloo, RanksAsProcesses) {
  const ftune::testing::TempDir dir("gloo");
  const int world = 3;
  const size_t n = 100003;
  std::vector<std::vector<float>> in;
  for (int r = 0; r < world; ++r) in.push_back(values<float>(n, seed(world, r, 7)));
  std::vector<pid_t> pids;
  for (int r = 0; r < world; ++r) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      alarm(120);  // a rank that hangs is killed
      int code = 0;
      try {
        FileStore store(dir.str(), kTimeout);
        auto c = make_gloo_communicator(store, r, world, kTimeout);
        std::vector<float> x = in[r];
        c->all_reduce_sum(x.data(), n);
        c->barrier();
        std::ofstream(dir / ("out" + std::to_string(r)), std::ios::binary)
            .write(reinterpret_cast<const char*>(x.data()), n * sizeof(float));
      } catch (const std::exception& e) {
        std::ofstream(dir / ("err" + std::to_string(r))) << e.what();
        code = 1;
      }
      _exit(code);
    }
    pids.push_back(pid);
  }
  const std::vector<float> ref = rank_order_sum(in);
  for (int r = 0; r < world; ++r) {
    int status = 0;
    ASSERT_EQ(waitpid(pids[r], &status, 0), pids[r]);
    std::ifstream err(dir / ("err" + std::to_string(r)));
    std::stringstream msg;
    msg << err.rdbuf();
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "rank " << r << ": " << msg.str();
    std::vector<float> got(n);
    std::ifstream(dir / ("out" + std::to_string(r)), std::ios::binary).read(reinterpret_cast<char*>(got.data()), n * sizeof(float));
    EXPECT_TRUE(same_bits(got, ref)) << "rank " << r;
  }
}

}  // namespace
}  // namespace ftune::dist
