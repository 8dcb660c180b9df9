// The communicator across processes and nodes, on Gloo (Debian's libgloo-dev, Gloo 0.5.0). The
// ranks meet in the run's dist::Store (keys under "gloo/": one communicator per store, or a
// prefixed() view for each), connect a full mesh of TCP pairs
// (gloo::transport::tcp, gloo::rendezvous::Context::connectFullMesh) and run every collective on
// Gloo's unbound buffers: point-to-point sends and receives matched by a slot tag. Gloo's own
// allreduce algorithms (ring, halving-doubling, bcube) add the ranks' values in an order that
// depends on the algorithm, the chunk and the rank; ftune needs every sum in one fixed order,
// rank 0 + 1 + ... + (W-1), so that every rank gets the same bits, run after run. So:
//
//   all_reduce_sum: chunks of at most 16 MiB. Each chunk is cut into W near-equal parts and goes
//     through a direct reduce-scatter (rank r receives part r from every other rank and adds the W
//     copies in rank order, ((x0 + x1) + x2) + ..., in the element type) and then a direct
//     all-gather (rank r sends its summed part to every other rank, which copies it as it is).
//     Per phase each rank sends and receives (W-1)/W of the chunk, as in a ring, in one step.
//   reduce_scatter_sum / all_gather: the same two phases over the caller's uneven parts, in rounds
//     that keep the scratch memory within 16 MiB and each message within 64 MiB.
//   broadcast: the root sends to every other rank, 64 MiB at a time.
//   send / recv: one slot sequence per (sender, receiver), so that messages match in order. A send
//     returns once the peer has posted the matching recv and the data has gone out: two ranks
//     that both send to each other first wait for each other until the timeout (a ring orders its
//     calls by rank parity).
//   barrier: every rank sends a byte to every other rank and waits for theirs.
//
// Connecting waits at most the timeout for every rank to announce itself in the store, and names
// the ranks that did not. Every phase of an operation waits at most the timeout: a timeout becomes
// one Error naming the operation and the ranks whose data did not arrive, a broken connection one
// naming the peer; after either the communicator refuses further calls (after a timeout Gloo has
// closed all its connections). One thread at a time may use a communicator. Gloo writes to its sockets with writev(2), which raises SIGPIPE when a peer has
// gone: creating a communicator sets SIGPIPE to be ignored (unless the process handles it), so
// that the write fails with EPIPE and becomes an error naming the peer instead of a killed process.
#include <arpa/inet.h>
#include <fmt/format.h>
#include <gloo/common/error.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>
#include <gloo/transport/unbound_buffer.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "dist/communicator.h"

namespace ftune::dist {

namespace {

using std::chrono::milliseconds;

constexpr size_t kChunkBytes = size_t{16} << 20;  // all_reduce chunk; reduce_scatter scratch
constexpr size_t kMaxMessage = size_t{64} << 20;  // largest single Gloo message
// Slot tags: collectives take consecutive slots (every rank makes the same calls in the same order);
// point-to-point messages count per (sender, receiver) pair, in a space of their own.
constexpr uint64_t kCollectiveSlots = uint64_t{1} << 56;
constexpr uint64_t kPointToPointSlots = uint64_t{2} << 56;

std::string seconds(milliseconds t) { return fmt::format("{:g} s", static_cast<double>(t.count()) / 1000.0); }

std::string rank_list(const std::vector<int>& ranks) {
  std::string s = ranks.size() == 1 ? "rank " : "ranks ";
  for (size_t i = 0; i < ranks.size(); ++i) s += (i ? ", " : "") + std::to_string(ranks[i]);
  return s;
}

// Gloo's messages start with "[file:line] "; ftune keeps what follows, on one line.
std::string gloo_text(const std::exception& e) {
  std::string s = e.what();
  if (!s.empty() && s[0] == '[') {
    const auto p = s.find("] ");
    if (p != std::string::npos) s = s.substr(p + 2);
  }
  std::replace(s.begin(), s.end(), '\n', ' ');
  std::replace(s.begin(), s.end(), '\r', ' ');
  return s;
}

// Gloo's rendezvous store over ftune's.
class GlooStore final : public gloo::rendezvous::Store {
 public:
  explicit GlooStore(dist::Store& base) : base_(base) {}
  void set(const std::string& key, const std::vector<char>& data) override {
    base_.set(key, Bytes(data.begin(), data.end()));
  }
  std::vector<char> get(const std::string& key) override {
    const Bytes v = base_.get(key);
    return std::vector<char>(v.begin(), v.end());
  }
  void wait(const std::vector<std::string>& keys) override { base_.wait(keys, base_.timeout()); }
  void wait(const std::vector<std::string>& keys, const milliseconds& timeout) override { base_.wait(keys, timeout); }

 private:
  dist::Store& base_;
};

// ---- the address a rank listens on when none is given ----

bool routable(const sockaddr* sa) {
  if (sa->sa_family == AF_INET) {
    const uint32_t a = ntohl(reinterpret_cast<const sockaddr_in*>(sa)->sin_addr.s_addr);
    return (a >> 24) != 127 && a != 0 && (a >> 16) != 0xA9FE;  // not loopback, any, link-local
  }
  if (sa->sa_family == AF_INET6) {
    const in6_addr& a = reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr;
    return !IN6_IS_ADDR_LOOPBACK(&a) && !IN6_IS_ADDR_UNSPECIFIED(&a) && !IN6_IS_ADDR_LINKLOCAL(&a) &&
           !IN6_IS_ADDR_V4MAPPED(&a);
  }
  return false;
}

std::string numeric_host(const sockaddr* sa, socklen_t len) {
  char host[NI_MAXHOST];
  if (getnameinfo(sa, len, host, sizeof(host), nullptr, 0, NI_NUMERICHOST) != 0) return "";
  return host;
}

bool bindable(const sockaddr* sa, socklen_t len) {
  const int fd = ::socket(sa->sa_family, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_storage ss{};
  std::memcpy(&ss, sa, len);
  if (ss.ss_family == AF_INET) reinterpret_cast<sockaddr_in*>(&ss)->sin_port = 0;
  if (ss.ss_family == AF_INET6) reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port = 0;
  const bool ok = ::bind(fd, reinterpret_cast<const sockaddr*>(&ss), len) == 0;
  ::close(fd);
  return ok;
}

// The hostname's address when it resolves to one other ranks can reach (not loopback, as
// Debian's /etc/hosts often maps the hostname to 127.0.1.1); else the IPv4 address of the
// interface of the default route; else that of the first interface that is up; else loopback
// (enough when every rank runs on this machine).
std::string default_host() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) == 0 && name[0]) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (getaddrinfo(name, nullptr, &hints, &res) == 0) {
      std::string found;
      for (addrinfo* p = res; p && found.empty(); p = p->ai_next)
        if (routable(p->ai_addr) && bindable(p->ai_addr, p->ai_addrlen)) found = numeric_host(p->ai_addr, p->ai_addrlen);
      freeaddrinfo(res);
      if (!found.empty()) return found;
    }
  }
  std::string route_iface;
  {
    std::ifstream routes("/proc/net/route");
    std::string line;
    std::getline(routes, line);  // header
    while (std::getline(routes, line)) {
      std::istringstream f(line);
      std::string iface, dest;
      if (f >> iface >> dest && dest == "00000000") {
        route_iface = iface;
        break;
      }
    }
  }
  ifaddrs* ifs = nullptr;
  std::string first_up, on_route;
  if (getifaddrs(&ifs) == 0) {
    for (ifaddrs* i = ifs; i; i = i->ifa_next) {
      if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
      if (!(i->ifa_flags & IFF_UP) || (i->ifa_flags & IFF_LOOPBACK) || !routable(i->ifa_addr)) continue;
      const std::string host = numeric_host(i->ifa_addr, sizeof(sockaddr_in));
      if (host.empty()) continue;
      if (first_up.empty()) first_up = host;
      if (on_route.empty() && !route_iface.empty() && route_iface == i->ifa_name) on_route = host;
    }
    freeifaddrs(ifs);
  }
  if (!on_route.empty()) return on_route;
  if (!first_up.empty()) return first_up;
  return "127.0.0.1";
}

void ignore_sigpipe() {
  struct sigaction old {};
  if (sigaction(SIGPIPE, nullptr, &old) != 0) return;
  if (!(old.sa_flags & SA_SIGINFO) && old.sa_handler == SIG_DFL) signal(SIGPIPE, SIG_IGN);
}

// out[n] = parts[0][n] + parts[1][n] + ... in that order, in T. out may be one of the parts.
template <typename T>
void sum_in_rank_order(const std::vector<const T*>& parts, T* out, size_t n) {
  constexpr size_t kBlock = 1024;
  T acc[kBlock];
  for (size_t i = 0; i < n; i += kBlock) {
    const size_t m = std::min(kBlock, n - i);
    const T* first = parts[0] + i;
    for (size_t j = 0; j < m; ++j) acc[j] = first[j];
    for (size_t r = 1; r < parts.size(); ++r) {
      const T* p = parts[r] + i;
      for (size_t j = 0; j < m; ++j) acc[j] += p[j];
    }
    std::memcpy(out + i, acc, m * sizeof(T));
  }
}

class GlooCommunicator final : public Communicator {
 public:
  GlooCommunicator(dist::Store& base, int rank, int world, milliseconds timeout, const std::string& interface_host)
      : rank_(rank), world_(world), timeout_(timeout), send_seq_(world > 0 ? world : 0), recv_seq_(send_seq_) {
    if (world < 1 || rank < 0 || rank >= world) fail("gloo connect: rank {} is not a rank of a world of {}", rank, world);
    if (timeout.count() <= 0) fail("gloo connect: the timeout must be positive, not {} ms", timeout.count());
    ignore_sigpipe();
    store_ = prefixed(base, "gloo");
    join();
    const std::string host = interface_host.empty() ? default_host() : interface_host;
    try {
      gloo::transport::tcp::attr attr;
      attr.hostname = host;
      dev_ = gloo::transport::tcp::CreateDevice(attr);
    } catch (const std::exception& e) {
      fail("gloo connect: rank {} cannot listen on {} ({})", rank, host, gloo_text(e));
    }
    try {
      ctx_ = std::make_shared<gloo::rendezvous::Context>(rank, world);
      ctx_->setTimeout(timeout);
      GlooStore store(*store_);
      ctx_->connectFullMesh(store, dev_);
    } catch (const std::exception& e) {
      fail("gloo connect: rank {} of {} (listening on {}) could not connect to the other ranks ({})", rank, world,
           host, gloo_text(e));
    }
  }

  int rank() const override { return rank_; }
  int world() const override { return world_; }

  void all_reduce_sum(float* data, size_t n) override { all_reduce(data, n); }
  void all_reduce_sum(double* data, size_t n) override { all_reduce(data, n); }

  void reduce_scatter_sum(const float* in, float* out, const std::vector<size_t>& counts) override {
    const char* op = "reduce_scatter";
    usable(op);
    check_counts(op, counts);
    const size_t round = std::max<size_t>(1, kChunkBytes / sizeof(float) / std::max(1, world_ - 1));
    for_each_round(counts, round, [&](size_t at, const std::vector<size_t>& offs, const std::vector<size_t>& lens) {
      reduce_round(op, in, out + at, offs, lens);
    });
  }

  void all_gather(const float* in, float* out, const std::vector<size_t>& counts) override {
    const char* op = "all_gather";
    usable(op);
    check_counts(op, counts);
    for_each_round(counts, kMaxMessage / sizeof(float),
                   [&](size_t at, const std::vector<size_t>& offs, const std::vector<size_t>& lens) {
                     gather_round(op, in + at, out, offs, lens);
                   });
  }

  void all_gather_bytes(const void* in, void* out, const std::vector<size_t>& bytes) override {
    const char* op = "all_gather";
    usable(op);
    check_counts(op, bytes);
    const auto* src = static_cast<const uint8_t*>(in);
    auto* dst = static_cast<uint8_t*>(out);
    for_each_round(bytes, kMaxMessage, [&](size_t at, const std::vector<size_t>& offs, const std::vector<size_t>& lens) {
      gather_round(op, src + at, dst, offs, lens);
    });
  }

  void broadcast(void* data, size_t bytes, int root) override {
    const char* op = "broadcast";
    usable(op);
    if (root < 0 || root >= world_) fail("broadcast: root {} is not a rank of a world of {}", root, world_);
    auto* p = static_cast<uint8_t*>(data);
    for (size_t at = 0; at < bytes; at += kMaxMessage) {
      const size_t m = std::min(kMaxMessage, bytes - at);
      Phase ph(*this, op, next_slot());
      if (rank_ == root) {
        for (int q = 0; q < world_; ++q)
          if (q != root) ph.send(q, p + at, m);
      } else {
        ph.recv(root, p + at, m);
      }
      ph.wait();
    }
  }

  void send(const void* data, size_t bytes, int peer) override {
    const char* op = "send";
    usable(op);
    check_peer(op, peer);
    const auto* p = static_cast<const uint8_t*>(data);
    for (size_t at = 0; at < bytes; at += kMaxMessage) {
      Phase ph(*this, op, p2p_slot(rank_, send_seq_[peer]++));
      ph.send(peer, p + at, std::min(kMaxMessage, bytes - at));
      ph.wait();
    }
  }

  void recv(void* data, size_t bytes, int peer) override {
    const char* op = "recv";
    usable(op);
    check_peer(op, peer);
    auto* p = static_cast<uint8_t*>(data);
    for (size_t at = 0; at < bytes; at += kMaxMessage) {
      Phase ph(*this, op, p2p_slot(peer, recv_seq_[peer]++));
      ph.recv(peer, p + at, std::min(kMaxMessage, bytes - at));
      ph.wait();
    }
  }

  void send_recv(const void* out, size_t out_bytes, void* in, size_t in_bytes, int peer) override {
    const char* op = "send_recv";
    usable(op);
    check_peer(op, peer);
    const auto* o = static_cast<const uint8_t*>(out);
    auto* i = static_cast<uint8_t*>(in);
    // Round c carries chunk c of each direction; the peer's rounds pair the same chunks.
    for (size_t at = 0; at < std::max(out_bytes, in_bytes); at += kMaxMessage) {
      Phase ph(*this, op, 0);
      if (at < in_bytes) ph.recv(peer, i + at, std::min(kMaxMessage, in_bytes - at), p2p_slot(peer, recv_seq_[peer]++));
      if (at < out_bytes) ph.send(peer, o + at, std::min(kMaxMessage, out_bytes - at), p2p_slot(rank_, send_seq_[peer]++));
      ph.wait();
    }
  }

  void barrier() override {
    const char* op = "barrier";
    usable(op);
    if (world_ == 1) return;
    const uint8_t token = 1;
    std::vector<uint8_t> got(world_);
    Phase ph(*this, op, next_slot());
    for (int q = 0; q < world_; ++q)
      if (q != rank_) ph.recv(q, &got[q], 1);
    for (int q = 0; q < world_; ++q)
      if (q != rank_) ph.send(q, &token, 1);
    ph.wait();
  }

 private:
  // The transfers of one step of an operation, posted together and then waited for: receives in
  // rank order, then sends. The first wait that times out has Gloo close every connection, which
  // completes the other pending transfers with an error at once, so the ones still missing then
  // are the ranks that did not respond.
  class Phase {
   public:
    Phase(GlooCommunicator& c, const char* op, uint64_t slot) : c_(c), op_(op), slot_(slot) {}
    void recv(int peer, void* p, size_t bytes) { post(peer, false, p, bytes, slot_); }
    void send(int peer, const void* p, size_t bytes) { post(peer, true, const_cast<void*>(p), bytes, slot_); }
    // A transfer under a slot of its own (point to point messages number per pair of ranks).
    void recv(int peer, void* p, size_t bytes, uint64_t slot) { post(peer, false, p, bytes, slot); }
    void send(int peer, const void* p, size_t bytes, uint64_t slot) { post(peer, true, const_cast<void*>(p), bytes, slot); }

    void wait() {
      std::vector<Transfer*> order;
      for (auto& t : recvs_) order.push_back(&t);
      for (auto& t : sends_) order.push_back(&t);
      const auto deadline = std::chrono::steady_clock::now() + c_.timeout_;
      for (size_t i = 0; i < order.size(); ++i) {
        Transfer& t = *order[i];
        if (!t.error.empty()) c_.stop(op_, fmt::format("the connection to rank {} failed ({})", t.peer, t.error));
        try {
          complete(t, std::max(milliseconds(1), std::chrono::duration_cast<milliseconds>(
                                                     deadline - std::chrono::steady_clock::now())));
        } catch (const std::exception& e) {
          const std::string what = gloo_text(e);
          if (what.find("Timed out") == std::string::npos)
            c_.stop(op_, fmt::format("the connection to rank {} failed ({})", t.peer, what));
          // A send that did not complete says less than a receive (the peer may be busy
          // receiving from others), so sends name ranks only when every receive arrived.
          std::vector<int> missing{t.peer};
          for (size_t j = i + 1; j < order.size(); ++j)
            if (order[j]->send == t.send && !probe(*order[j]) &&
                std::find(missing.begin(), missing.end(), order[j]->peer) == missing.end())
              missing.push_back(order[j]->peer);
          std::sort(missing.begin(), missing.end());
          c_.stop(op_, fmt::format("{} did not respond within {} (dist.timeout_s)", rank_list(missing),
                                   seconds(c_.timeout_)));
        }
      }
    }

   private:
    struct Transfer {
      int peer;
      bool send;
      std::unique_ptr<gloo::transport::UnboundBuffer> buf;
      std::string error;  // posting failed (the connection was already broken)
    };

    void post(int peer, bool send, void* p, size_t bytes, uint64_t slot) {
      if (bytes == 0) return;  // both sides skip empty parts alike
      Transfer t{peer, send, nullptr, {}};
      try {
        t.buf = c_.ctx_->createUnboundBuffer(p, bytes);
        if (send)
          t.buf->send(peer, slot);
        else
          t.buf->recv(peer, slot);
      } catch (const std::exception& e) {
        t.error = gloo_text(e);
      }
      (send ? sends_ : recvs_).push_back(std::move(t));
    }

    static void complete(Transfer& t, milliseconds timeout) {
      if (t.send)
        t.buf->waitSend(timeout);
      else
        t.buf->waitRecv(timeout);
    }

    // Whether a transfer had completed; after a timeout the pending ones fail at once.
    static bool probe(Transfer& t) {
      if (!t.error.empty() || !t.buf) return false;
      try {
        complete(t, milliseconds(1));
        return true;
      } catch (const std::exception&) {
        return false;
      }
    }

    GlooCommunicator& c_;
    const char* op_;
    uint64_t slot_;
    std::vector<Transfer> recvs_, sends_;
  };

  template <typename T>
  void all_reduce(T* data, size_t n) {
    const char* op = "all_reduce";
    usable(op);
    if (world_ == 1 || n == 0) return;
    const size_t chunk = kChunkBytes / sizeof(T);
    std::vector<size_t> offs(world_), lens(world_);
    for (size_t at = 0; at < n; at += chunk) {
      const size_t m = std::min(chunk, n - at);
      size_t o = at;
      for (int q = 0; q < world_; ++q) {
        lens[q] = m / world_ + (static_cast<size_t>(q) < m % world_ ? 1 : 0);
        offs[q] = o;
        o += lens[q];
      }
      reduce_round(op, data, data + offs[rank_], offs, lens);
      gather_round(op, data + offs[rank_], data, offs, lens);
    }
  }

  // Part q of this round is in[offs[q], offs[q] + lens[q]); this rank's sum of its part, over the
  // ranks in order, goes to out[lens[rank]] (which may be in's own part).
  template <typename T>
  void reduce_round(const char* op, const T* in, T* out, const std::vector<size_t>& offs,
                    const std::vector<size_t>& lens) {
    const size_t own = lens[rank_];
    std::vector<T>& scratch = scratch_for<T>();
    scratch.resize(std::max(scratch.size(), static_cast<size_t>(world_ - 1) * own));
    std::vector<const T*> parts(world_);
    Phase ph(*this, op, next_slot());
    for (int q = 0, k = 0; q < world_; ++q) {
      if (q == rank_) {
        parts[q] = in + offs[rank_];
        continue;
      }
      T* into = scratch.data() + static_cast<size_t>(k++) * own;
      parts[q] = into;
      ph.recv(q, into, own * sizeof(T));
    }
    for (int q = 0; q < world_; ++q)
      if (q != rank_) ph.send(q, in + offs[q], lens[q] * sizeof(T));
    ph.wait();
    sum_in_rank_order(parts, out, own);
  }

  // out[offs[q], offs[q] + lens[q]) = rank q's part; this rank's comes from own_in.
  template <typename T>
  void gather_round(const char* op, const T* own_in, T* out, const std::vector<size_t>& offs,
                    const std::vector<size_t>& lens) {
    T* own = out + offs[rank_];
    if (lens[rank_] > 0 && own_in != own) std::memmove(own, own_in, lens[rank_] * sizeof(T));
    Phase ph(*this, op, next_slot());
    for (int q = 0; q < world_; ++q)
      if (q != rank_) ph.recv(q, out + offs[q], lens[q] * sizeof(T));
    for (int q = 0; q < world_; ++q)
      if (q != rank_) ph.send(q, own, lens[rank_] * sizeof(T));
    ph.wait();
  }

  // Every rank announces itself before connecting, so that a rank that never starts is named.
  void join() {
    store_->set("joined/" + std::to_string(rank_), Bytes{'1'});
    std::vector<std::string> keys;
    for (int q = 0; q < world_; ++q) keys.push_back("joined/" + std::to_string(q));
    try {
      store_->wait(keys, timeout_);
    } catch (const Error&) {
      std::vector<int> missing;
      for (int q = 0; q < world_; ++q)
        if (!store_->check({keys[q]})) missing.push_back(q);
      if (missing.empty()) throw;
      fail("gloo connect: {} did not join within {} (dist.timeout_s)", rank_list(missing), seconds(timeout_));
    }
  }

  template <typename T>
  std::vector<T>& scratch_for() {
    if constexpr (std::is_same_v<T, float>)
      return scratch_f_;
    else
      return scratch_d_;
  }

  uint64_t next_slot() { return kCollectiveSlots | (collective_seq_++ & (kCollectiveSlots - 1)); }
  static uint64_t p2p_slot(int src, uint64_t seq) {
    return kPointToPointSlots | (static_cast<uint64_t>(src) << 32) | (seq & 0xFFFFFFFFu);
  }

  void usable(const char* op) const {
    if (!stopped_.empty()) fail("{}: the communicator stopped at an earlier error: {}", op, stopped_);
  }
  [[noreturn]] void stop(const char* op, const std::string& why) {
    stopped_ = fmt::format("{}: {}", op, why);
    throw Error(stopped_);
  }
  void check_counts(const char* op, const std::vector<size_t>& counts) const {
    if (counts.size() != static_cast<size_t>(world_))
      fail("{}: {} counts given for a world of {}", op, counts.size(), world_);
  }
  void check_peer(const char* op, int peer) const {
    if (peer < 0 || peer >= world_ || peer == rank_)
      fail("{}: peer {} is not another rank of a world of {} (this is rank {})", op, peer, world_, rank_);
  }
  static std::vector<size_t> displacements(const std::vector<size_t>& counts) {
    std::vector<size_t> d(counts.size());
    for (size_t q = 1; q < counts.size(); ++q) d[q] = d[q - 1] + counts[q - 1];
    return d;
  }
  // Rounds of at most `round` elements of every rank's part (parts of uneven length, consecutive
  // from rank 0): fn(at, offs, lens) with rank q's piece at offs[q] (in the whole buffer) of lens[q].
  template <typename F>
  void for_each_round(const std::vector<size_t>& counts, size_t round, F&& fn) const {
    const std::vector<size_t> displ = displacements(counts);
    const size_t longest = *std::max_element(counts.begin(), counts.end());
    std::vector<size_t> offs(world_), lens(world_);
    for (size_t at = 0; at < longest; at += round) {
      for (int q = 0; q < world_; ++q) {
        lens[q] = counts[q] > at ? std::min(round, counts[q] - at) : 0;
        offs[q] = displ[q] + at;
      }
      fn(at, offs, lens);
    }
  }

  int rank_, world_;
  milliseconds timeout_;
  std::unique_ptr<dist::Store> store_;
  std::shared_ptr<gloo::transport::Device> dev_;       // destroyed after the context
  std::shared_ptr<gloo::rendezvous::Context> ctx_;
  uint64_t collective_seq_ = 0;
  std::vector<uint64_t> send_seq_, recv_seq_;  // point-to-point messages per peer
  std::vector<float> scratch_f_;
  std::vector<double> scratch_d_;
  std::string stopped_;  // the error that stopped the communicator
};

}  // namespace

std::unique_ptr<Communicator> make_gloo_communicator(Store& store, int rank, int world, milliseconds timeout,
                                                     const std::string& interface_host) {
  return std::make_unique<GlooCommunicator>(store, rank, world, timeout, interface_host);
}

}  // namespace ftune::dist
