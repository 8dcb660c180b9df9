// The run's store and the join and plan checks through it. Keys (under the agent store's prefix
// when there is one): ftune/world (rank 0's WORLD_SIZE), ftune/rank/<r> (a count of the processes
// claiming rank r), ftune/joined (a count of the arrivals), ftune/all_joined (set by the last one),
// ftune/plan/<r> (rank r's run plan hash), ftune/plan_verdict (rank 0's: "ok" or the mismatch).
#include "dist/rendezvous.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"
#include "dist/tcp_store.h"

namespace ftune::dist {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

std::string secs(milliseconds t) { return fmt::format("{:g} s", static_cast<double>(t.count()) / 1000.0); }

std::string text(const Bytes& b) { return std::string(b.begin(), b.end()); }
Bytes bytes(const std::string& s) { return Bytes(s.begin(), s.end()); }

// The store of a run: the server rank 0 keeps (if any), the client, and the prefixed view.
class RunStore final : public Store {
 public:
  RunStore(std::unique_ptr<TcpStoreServer> server, std::unique_ptr<TcpStoreClient> client, const std::string& prefix)
      : server_(std::move(server)), client_(std::move(client)) {
    if (!prefix.empty()) view_ = prefixed(*client_, prefix);
  }
  void set(const std::string& key, const Bytes& value) override { store().set(key, value); }
  Bytes get(const std::string& key) override { return store().get(key); }
  int64_t add(const std::string& key, int64_t delta) override { return store().add(key, delta); }
  bool check(const std::vector<std::string>& keys) override { return store().check(keys); }
  void wait(const std::vector<std::string>& keys, milliseconds timeout) override { store().wait(keys, timeout); }
  milliseconds timeout() const override { return client_->timeout(); }

 private:
  Store& store() { return view_ ? *view_ : *client_; }
  // Destroyed in reverse: the view, the client, then the server.
  std::unique_ptr<TcpStoreServer> server_;
  std::unique_ptr<TcpStoreClient> client_;
  std::unique_ptr<Store> view_;
};

void join(Store& s, const Topology& t, milliseconds timeout) {
  const auto start = Clock::now();
  if (t.rank == 0) s.set("ftune/world", bytes(std::to_string(t.world)));
  if (const int64_t n = s.add(fmt::format("ftune/rank/{}", t.rank), 1); n > 1)
    fail("rank {} joined the store at {}:{} {} times: another process was also started with RANK={}", t.rank,
         t.master_addr, t.master_port, n, t.rank);
  const int64_t arrived = s.add("ftune/joined", 1);
  if (arrived > t.world)
    fail("more ranks than WORLD_SIZE={} joined the store at {}:{} (this one, rank {}, arrived as number {})", t.world,
         t.master_addr, t.master_port, t.rank, arrived);
  if (arrived == t.world) s.set("ftune/all_joined", bytes(std::to_string(arrived)));
  // Waited for in slices, counting the arrivals after each: when rank 0 gives up it takes its store
  // along, and the count seen last still says how far the join got.
  const auto deadline = start + timeout;
  int64_t seen = arrived;
  while (true) {
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
    try {
      s.wait({"ftune/all_joined"}, std::clamp(left, milliseconds(0), milliseconds(1000)));
      break;
    } catch (const Error&) {
    }
    try {
      seen = s.add("ftune/joined", 0);
    } catch (const Error& e) {
      fail("{} of {} ranks had arrived when the store at {}:{} went away after {} (WORLD_SIZE says {}): {}", seen,
           t.world, t.master_addr, t.master_port,
           secs(std::chrono::duration_cast<milliseconds>(Clock::now() - start)), t.world, e.what());
    }
    if (left <= milliseconds(0)) {
      std::string w0;  // a disagreement on WORLD_SIZE explains a join that never completes
      try {
        if (s.check({"ftune/world"})) w0 = text(s.get("ftune/world"));
      } catch (const Error&) {
      }
      if (!w0.empty() && w0 != std::to_string(t.world))
        fail("rank {} has WORLD_SIZE={}, rank 0 has WORLD_SIZE={}", t.rank, t.world, w0);
      fail("{} of {} ranks arrived within {} (WORLD_SIZE says {})", seen, t.world, secs(timeout), t.world);
    }
  }
  const std::string w0 = text(s.get("ftune/world"));
  if (w0 != std::to_string(t.world)) fail("rank {} has WORLD_SIZE={}, rank 0 has WORLD_SIZE={}", t.rank, t.world, w0);
}

}  // namespace

std::unique_ptr<Store> connect_store(const Topology& t, milliseconds timeout) {
  std::unique_ptr<TcpStoreServer> server;
  if (!t.agent_store && t.rank == 0) server = std::make_unique<TcpStoreServer>(t.master_port);
  auto client = std::make_unique<TcpStoreClient>(t.master_addr, t.master_port, timeout);
  auto store = std::make_unique<RunStore>(std::move(server), std::move(client), t.agent_store ? t.store_prefix : "");
  join(*store, t, timeout);
  return store;
}

void check_same_plan(Store& store, int rank, int world, const std::string& plan_hash) {
  const auto hash_of = [&](int r) {
    const std::string key = fmt::format("ftune/plan/{}", r);
    try {
      return text(store.get(key));
    } catch (const Error&) {
      fail("rank {} did not publish its run plan hash within {}", r, secs(store.timeout()));
    }
  };
  const auto differs = [](int r, const std::string& h, const std::string& h0) {
    return fmt::format("rank {}'s recipe differs from rank 0's (run plan hash {} vs {})", r, h, h0);
  };
  store.set(fmt::format("ftune/plan/{}", rank), bytes(plan_hash));
  if (rank == 0) {
    std::string verdict = "ok";
    for (int r = 1; r < world && verdict == "ok"; ++r)
      if (const std::string h = hash_of(r); h != plan_hash) verdict = differs(r, h, plan_hash);
    store.set("ftune/plan_verdict", bytes(verdict));
    if (verdict != "ok") fail("{}", verdict);
    return;
  }
  const std::string h0 = hash_of(0);
  if (h0 != plan_hash) fail("{}", differs(rank, plan_hash, h0));
  std::string verdict;
  try {
    verdict = text(store.get("ftune/plan_verdict"));
  } catch (const Error&) {
    fail("rank 0 did not compare the ranks' run plans within {}", secs(store.timeout()));
  }
  if (verdict != "ok") fail("{}", verdict);
}

}  // namespace ftune::dist
