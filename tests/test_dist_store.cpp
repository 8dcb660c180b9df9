// The c10d TCPStore protocol: our server with many clients, the byte layout both ways (what a torch
// client sends and what it reads back), every timeout and refusal, and the rendezvous on top (join
// check, plan check). Ports are the kernel's picks. The TorchInterop cases run only when
// tools/check_tcpstore.py starts them against real torch (they are skipped otherwise).
#include <arpa/inet.h>
#include <gtest/gtest.h>

#include "error_util.h"
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <bit>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "core/error.h"
#include "dist/rendezvous.h"
#include "dist/tcp_store.h"
#include "dist/topology.h"

namespace ftune::dist {
namespace {

using std::chrono::milliseconds;
constexpr milliseconds kLong{60000};  // a bound no healthy step comes near

static_assert(std::endian::native == std::endian::little, "the byte layouts below are written little-endian");

using testing::expect_error;

Bytes b(const std::string& s) { return Bytes(s.begin(), s.end()); }
std::string s(const Bytes& v) { return std::string(v.begin(), v.end()); }

// ---- bytes as a torch client writes them, spelled out independently of tcp_store.cpp ----

struct Msg {
  Bytes v;
  Msg& u8(uint8_t x) {
    v.push_back(x);
    return *this;
  }
  Msg& le(uint64_t x, int n) {
    for (int i = 0; i < n; ++i) v.push_back(static_cast<uint8_t>(x >> (8 * i)));
    return *this;
  }
  Msg& u32(uint32_t x) { return le(x, 4); }
  Msg& u64(uint64_t x) { return le(x, 8); }
  Msg& str(const std::string& x) {
    u64(x.size());
    v.insert(v.end(), x.begin(), x.end());
    return *this;
  }
};

// A plain socket to 127.0.0.1:port; every read bounded (a failure, not a hang, when bytes are missing).
class Raw {
 public:
  explicit Raw(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(port));
    EXPECT_EQ(::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0) << "connect to " << port;
  }
  explicit Raw(int fd, bool) : fd_(fd) {}
  ~Raw() { ::close(fd_); }
  void send(const Bytes& m) { EXPECT_EQ(::send(fd_, m.data(), m.size(), MSG_NOSIGNAL), static_cast<ssize_t>(m.size())); }
  void send(const Msg& m) { send(m.v); }
  // n bytes, or fewer when the peer closed or 60 s passed.
  Bytes recv(size_t n) {
    Bytes out;
    while (out.size() < n) {
      pollfd pf{fd_, POLLIN, 0};
      if (::poll(&pf, 1, static_cast<int>(kLong.count())) <= 0) break;
      uint8_t buf[4096];
      const ssize_t k = ::recv(fd_, buf, std::min(sizeof(buf), n - out.size()), 0);
      if (k <= 0) break;
      out.insert(out.end(), buf, buf + k);
    }
    EXPECT_EQ(out.size(), n) << "short read";
    return out;
  }
  // Whether the peer closes the connection (within the long bound) without sending anything.
  bool closed() {
    pollfd pf{fd_, POLLIN, 0};
    if (::poll(&pf, 1, static_cast<int>(kLong.count())) <= 0) return false;
    uint8_t c;
    return ::recv(fd_, &c, 1, 0) <= 0;
  }

 private:
  int fd_ = -1;
};

Bytes le64(uint64_t x) { return Msg{}.u64(x).v; }

const Bytes kValidate = {0x00, 0xCE, 0xF7, 0x85, 0x3C};  // VALIDATE, then 0x3C85F7CE little-endian

// A connection after the handshake a torch client makes (VALIDATE, then PING and its echo).
std::unique_ptr<Raw> torch_like_client(int port) {
  auto r = std::make_unique<Raw>(port);
  r->send(kValidate);
  r->send(Msg{}.u8(13).u32(0x12345678));
  EXPECT_EQ(r->recv(4), (Bytes{0x78, 0x56, 0x34, 0x12}));
  return r;
}

// ======================= the server through our client =======================

TEST(TcpStore, SetThenGetFromAnotherClient) {
  TcpStoreServer server(0);
  ASSERT_GT(server.port(), 0);
  TcpStoreClient a("127.0.0.1", server.port(), kLong), c("127.0.0.1", server.port(), kLong);
  const Bytes binary = {0, 1, 2, 0, 255, 0};
  a.set("bin", binary);
  a.set("text", b("hello"));
  EXPECT_EQ(c.get("bin"), binary);
  EXPECT_EQ(s(c.get("text")), "hello");
  a.set("text", b("again"));  // SET replaces
  EXPECT_EQ(s(c.get("text")), "again");
  a.set("empty", {});
  EXPECT_TRUE(c.get("empty").empty());
  EXPECT_TRUE(c.check({"empty"}));
}

TEST(TcpStore, ConnectsOverIpv6LoopbackAndHostnames) {
  TcpStoreServer server(0);
  TcpStoreClient a("localhost", server.port(), kLong);
  a.set("k", b("v"));
  try {
    TcpStoreClient six("::1", server.port(), milliseconds(2000));
    EXPECT_EQ(s(six.get("k")), "v");
  } catch (const Error& e) {
    // a machine without IPv6 loopback: the IPv4 client above covers it
    EXPECT_NE(std::string(e.what()).find("[::1]:"), std::string::npos) << e.what();
  }
}

TEST(TcpStore, GetWaitsForALaterSet) {
  TcpStoreServer server(0);
  TcpStoreClient setter("127.0.0.1", server.port(), kLong);
  Bytes got;
  std::thread getter([&] {
    TcpStoreClient c("127.0.0.1", server.port(), kLong);
    got = c.get("late");
  });
  setter.set("late", b("here"));
  getter.join();
  EXPECT_EQ(s(got), "here");
}

TEST(TcpStore, AddIsAtomicAcrossClientsAndKeptAsDecimalText) {
  TcpStoreServer server(0);
  constexpr int kThreads = 8, kEach = 50;
  std::vector<std::vector<int64_t>> seen(kThreads);
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t)
    ts.emplace_back([&, t] {
      TcpStoreClient c("127.0.0.1", server.port(), kLong);
      for (int i = 0; i < kEach; ++i) seen[t].push_back(c.add("counter", 1));
    });
  for (auto& t : ts) t.join();
  std::set<int64_t> all;
  for (const auto& v : seen) all.insert(v.begin(), v.end());
  EXPECT_EQ(all.size(), size_t{kThreads * kEach});  // every add saw its own value
  EXPECT_EQ(*all.begin(), 1);
  EXPECT_EQ(*all.rbegin(), kThreads * kEach);
  TcpStoreClient c("127.0.0.1", server.port(), kLong);
  EXPECT_EQ(s(c.get("counter")), std::to_string(kThreads * kEach));
  EXPECT_EQ(c.add("counter", -400), 0);
  EXPECT_EQ(c.add("neg", -7), -7);
  EXPECT_EQ(s(c.get("neg")), "-7");
  c.set("preset", b("40"));
  EXPECT_EQ(c.add("preset", 2), 42);
}

TEST(TcpStore, CheckAndWait) {
  TcpStoreServer server(0);
  TcpStoreClient c("127.0.0.1", server.port(), kLong);
  EXPECT_FALSE(c.check({"x"}));
  c.set("x", b("1"));
  EXPECT_TRUE(c.check({"x"}));
  EXPECT_FALSE(c.check({"x", "y"}));
  EXPECT_TRUE(c.check({}));
  std::thread waiter([&] {
    TcpStoreClient w("127.0.0.1", server.port(), kLong);
    w.wait({"x", "y", "z"}, kLong);
    EXPECT_TRUE(w.check({"x", "y", "z"}));
  });
  c.set("y", b("2"));
  c.add("z", 1);  // ADD creates a key too
  waiter.join();
  c.wait({"x"}, kLong);  // present already
}

TEST(TcpStore, TheRestOfTheC10dStore) {
  TcpStoreServer server(0);
  TcpStoreClient c("127.0.0.1", server.port(), kLong);
  c.multi_set({"m1", "m2", "m3"}, {b("a"), b(""), b("ccc")});
  const auto got = c.multi_get({"m3", "m1", "m2"});
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(s(got[0]), "ccc");
  EXPECT_EQ(s(got[1]), "a");
  EXPECT_TRUE(got[2].empty());
  // compare_set: a missing key with an empty expectation is created; a wrong expectation changes nothing
  EXPECT_EQ(s(c.compare_set("cas", {}, b("first"))), "first");
  EXPECT_EQ(s(c.compare_set("cas", b("wrong"), b("second"))), "first");
  EXPECT_EQ(s(c.compare_set("cas", b("first"), b("second"))), "second");
  EXPECT_EQ(s(c.compare_set("missing", b("x"), b("y"))), "x");  // as torch's servers answer
  EXPECT_FALSE(c.check({"missing"}));
  c.append("log", b("ab"));
  c.append("log", b("cd"));
  EXPECT_EQ(s(c.get("log")), "abcd");
  EXPECT_EQ(c.num_keys(), 5);  // m1 m2 m3 cas log
  EXPECT_TRUE(c.delete_key("m1"));
  EXPECT_FALSE(c.delete_key("m1"));
  EXPECT_FALSE(c.check({"m1"}));
  EXPECT_EQ(c.num_keys(), 4);
  expect_error([&] { c.multi_set({"a", "b"}, {b("1")}); }, "multi_set of 2 keys with 1 values");
}

TEST(TcpStore, PrefixedViewKeepsKeysUnderThePrefix) {
  TcpStoreServer server(0);
  TcpStoreClient c("127.0.0.1", server.port(), kLong);
  auto view = prefixed(c, "/worker/attempt_3");
  view->set("k", b("v"));
  EXPECT_EQ(s(c.get("/worker/attempt_3/k")), "v");
  EXPECT_FALSE(c.check({"k"}));
  EXPECT_EQ(view->add("n", 2), 2);
  EXPECT_EQ(s(c.get("/worker/attempt_3/n")), "2");
  EXPECT_TRUE(view->check({"k", "n"}));
  view->wait({"k", "n"}, kLong);
  EXPECT_EQ(view->timeout(), kLong);
  TcpStoreClient short_client("127.0.0.1", server.port(), milliseconds(300));
  auto short_view = prefixed(short_client, "/worker/attempt_3");
  expect_error([&] { short_view->wait({"k", "absent"}, milliseconds(300)); },
               "key '/worker/attempt_3/absent' did not appear within 0.3 s");
}

TEST(TcpStore, ManyRanksMeetThroughOneServer) {
  TcpStoreServer server(0);
  constexpr int kRanks = 16;
  std::vector<std::thread> ts;
  std::atomic<int> good{0};
  for (int r = 0; r < kRanks; ++r)
    ts.emplace_back([&, r] {
      TcpStoreClient c("127.0.0.1", server.port(), kLong);
      c.set("addr/" + std::to_string(r), b("rank" + std::to_string(r)));
      std::vector<std::string> keys;
      for (int p = 0; p < kRanks; ++p) keys.push_back("addr/" + std::to_string(p));
      c.wait(keys, kLong);
      int ok = 0;
      const auto vals = c.multi_get(keys);
      for (int p = 0; p < kRanks; ++p) ok += s(vals[p]) == "rank" + std::to_string(p);
      if (ok == kRanks) ++good;
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(good.load(), kRanks);
}

TEST(TcpStore, ClientConnectsBeforeTheServerStarts) {
  int port = 0;
  {  // a port free a moment ago
    TcpStoreServer probe(0);
    port = probe.port();
  }
  std::string got;
  std::thread early([&] {
    TcpStoreClient c("127.0.0.1", port, kLong);  // retries until the server is up
    got = s(c.get("k"));
  });
  TcpStoreServer server(port);
  TcpStoreClient c("127.0.0.1", port, kLong);
  c.set("k", b("v"));
  early.join();
  EXPECT_EQ(got, "v");
}

// ======================= timeouts and refusals =======================

TEST(TcpStore, GetAndWaitTimeoutsNameTheKeys) {
  TcpStoreServer server(0);
  TcpStoreClient c("127.0.0.1", server.port(), milliseconds(250));
  expect_error([&] { c.get("nobody/sets/this"); }, "key 'nobody/sets/this' did not appear within 0.25 s");
  c.set("a", b("1"));
  expect_error([&] { c.wait({"a", "b", "c"}, milliseconds(200)); }, "keys 'b', 'c' did not appear within 0.2 s");
  expect_error([&] { c.wait({"c"}, milliseconds(200)); }, "127.0.0.1:");
  // the connection stays in step after a cancelled wait
  c.set("b", b("2"));
  EXPECT_EQ(s(c.get("b")), "2");
  EXPECT_EQ(c.add("cnt", 1), 1);
  c.set("c", b("3"));
  c.wait({"a", "b", "c"}, milliseconds(200));
}

TEST(TcpStore, PortInUseIsNamed) {
  TcpStoreServer server(0);
  const int p = server.port();
  expect_error([&] { TcpStoreServer again(p); }, fmt::format("MASTER_PORT {} is in use", p));
}

TEST(TcpStore, UnreachableStoreIsNamedAfterTheTimeout) {
  // A bound socket that does not listen: connections to it are refused.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
  const int port = ntohs(a.sin_port);
  const auto start = std::chrono::steady_clock::now();
  expect_error([&] { TcpStoreClient c("127.0.0.1", port, milliseconds(300)); },
               fmt::format("MASTER_ADDR 127.0.0.1:{} unreachable after 0.3 s", port));
  EXPECT_LT(std::chrono::steady_clock::now() - start, kLong);  // it gave up rather than hang
  // Listening, but nothing answers: the kernel accepts, no store replies to the PING.
  ASSERT_EQ(::listen(fd, 4), 0);
  expect_error([&] { TcpStoreClient c("127.0.0.1", port, milliseconds(300)); },
               "unreachable after 0.3 s (connected, but no c10d store answered PING)");
  ::close(fd);
  expect_error([&] { TcpStoreClient c("no-such-host.invalid", 29500, milliseconds(200)); },
               "MASTER_ADDR no-such-host.invalid:29500 unreachable after 0.2 s (cannot resolve");
}

TEST(TcpStore, OversizedKeysAndValuesAreRefusedBeforeSending) {
  TcpStoreServer server(0);
  TcpStoreClient c("127.0.0.1", server.port(), kLong);
  expect_error([&] { c.set(std::string(9000, 'k'), b("v")); }, "is 9000 bytes; c10d stores take keys of at most 8191");
  expect_error([&] { c.set("big", Bytes(9 << 20)); }, "store value of key 'big' is 9437184 bytes");
  c.set("after", b("ok"));  // still usable
  EXPECT_EQ(s(c.get("after")), "ok");
}

TEST(TcpStore, AServerThatGoesAwayIsNamed) {
  auto server = std::make_unique<TcpStoreServer>(0);
  const int port = server->port();
  TcpStoreClient c("127.0.0.1", port, milliseconds(5000));
  c.set("k", b("v"));
  server.reset();
  expect_error([&] { c.add("k2", 1); }, fmt::format("store 127.0.0.1:{} closed the connection during ADD of key 'k2'", port));
  expect_error([&] { c.add("k2", 1); }, "the connection was lost by an earlier error");
}

// ======================= the bytes on the wire: a torch client against our server =======================

TEST(TcpStoreProtocol, TorchClientBytesAgainstOurServer) {
  TcpStoreServer server(0);
  auto r = torch_like_client(server.port());
  // SET "key" = "value": 01, u64 3, "key", u64 5, "value"; no reply
  r->send(Bytes{0x01, 3, 0, 0, 0, 0, 0, 0, 0, 'k', 'e', 'y', 5, 0, 0, 0, 0, 0, 0, 0, 'v', 'a', 'l', 'u', 'e'});
  // get = WAIT then GET (TCPStore::doGet): WAIT 06, u64 count 1, u64 3, "key" -> 00 STOP_WAITING
  r->send(Bytes{0x06, 1, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 'k', 'e', 'y'});
  EXPECT_EQ(r->recv(1), Bytes{0x00});
  r->send(Bytes{0x03, 3, 0, 0, 0, 0, 0, 0, 0, 'k', 'e', 'y'});
  EXPECT_EQ(r->recv(13), (Bytes{5, 0, 0, 0, 0, 0, 0, 0, 'v', 'a', 'l', 'u', 'e'}));
  // ADD 04, key, i64 delta -> i64; the value is decimal text
  r->send(Msg{}.u8(4).str("cnt").u64(5));
  EXPECT_EQ(r->recv(8), le64(5));
  r->send(Msg{}.u8(4).str("cnt").u64(static_cast<uint64_t>(int64_t{-7})));
  EXPECT_EQ(r->recv(8), le64(static_cast<uint64_t>(int64_t{-2})));
  r->send(Msg{}.u8(3).str("cnt"));
  EXPECT_EQ(r->recv(10), (Bytes{2, 0, 0, 0, 0, 0, 0, 0, '-', '2'}));
  // CHECK 05, u64 count, keys -> 00 READY / 01 NOT_READY
  r->send(Msg{}.u8(5).u64(2).str("key").str("cnt"));
  EXPECT_EQ(r->recv(1), Bytes{0x00});
  r->send(Msg{}.u8(5).u64(2).str("key").str("nokey"));
  EXPECT_EQ(r->recv(1), Bytes{0x01});
  // GETNUMKEYS 07 -> i64
  r->send(Bytes{0x07});
  EXPECT_EQ(r->recv(8), le64(2));
  // COMPARE_SET 02, key, expected, desired -> bytes
  r->send(Msg{}.u8(2).str("key").str("value").str("v2"));
  EXPECT_EQ(r->recv(10), (Msg{}.str("v2").v));
  // APPEND 09, key, bytes; no reply
  r->send(Msg{}.u8(9).str("key").str("+x"));
  // MULTI_SET 0B, i64 count, (key, value)...; MULTI_GET 0A, u64 count, keys -> bytes each
  r->send(Msg{}.u8(11).u64(2).str("m1").str("one").str("m2").str(""));
  r->send(Msg{}.u8(10).u64(3).str("m2").str("key").str("m1"));
  EXPECT_EQ(r->recv(8 + 8 + 4 + 8 + 3), (Msg{}.str("").str("v2+x").str("one").v));
  // DELETE_KEY 08, key -> i64 deleted
  r->send(Msg{}.u8(8).str("m2"));
  EXPECT_EQ(r->recv(8), le64(1));
  r->send(Msg{}.u8(8).str("m2"));
  EXPECT_EQ(r->recv(8), le64(0));
  // a GET of a missing key answers empty (the libuv server's way)
  r->send(Msg{}.u8(3).str("m2"));
  EXPECT_EQ(r->recv(8), le64(0));
}

TEST(TcpStoreProtocol, WaitRepliesOnlyOnceTheKeysExist) {
  TcpStoreServer server(0);
  auto a = torch_like_client(server.port());
  auto other = torch_like_client(server.port());
  // WAIT for w1, w2, then a PING: the PING's echo comes first, the WAIT is still pending
  a->send(Msg{}.u8(6).u64(2).str("w1").str("w2"));
  a->send(Msg{}.u8(13).u32(0xA1B2C3D4));
  EXPECT_EQ(a->recv(4), (Bytes{0xD4, 0xC3, 0xB2, 0xA1}));
  other->send(Msg{}.u8(1).str("w1").str("x"));
  a->send(Msg{}.u8(13).u32(7));  // w2 still missing: again only the echo
  EXPECT_EQ(a->recv(4), (Bytes{7, 0, 0, 0}));
  other->send(Msg{}.u8(4).str("w2").u64(1));
  EXPECT_EQ(other->recv(8), le64(1));
  EXPECT_EQ(a->recv(1), Bytes{0x00});  // STOP_WAITING
  // CANCEL_WAIT 0C -> 01 WAIT_CANCELED, and no STOP_WAITING after it
  a->send(Msg{}.u8(6).u64(1).str("never"));
  a->send(Bytes{0x0C});
  EXPECT_EQ(a->recv(1), Bytes{0x01});
  other->send(Msg{}.u8(1).str("never").str("now"));
  a->send(Msg{}.u8(13).u32(9));
  EXPECT_EQ(a->recv(4), (Bytes{9, 0, 0, 0}));
}

TEST(TcpStoreProtocol, MessagesSplitAcrossPacketsAreReassembled) {
  TcpStoreServer server(0);
  auto r = torch_like_client(server.port());
  const Bytes set = Msg{}.u8(1).str("split").str("payload").v;
  for (uint8_t byte : set) r->send(Bytes{byte});
  r->send(Msg{}.u8(3).str("split"));
  EXPECT_EQ(r->recv(15), (Msg{}.str("payload").v));
}

TEST(TcpStoreProtocol, QueuesAsTheLibuvServer) {
  TcpStoreServer server(0);
  auto r = torch_like_client(server.port());
  r->send(Msg{}.u8(14).str("q").str("first"));  // QUEUE_PUSH
  r->send(Msg{}.u8(14).str("q").str("second"));
  r->send(Msg{}.u8(16).str("q"));  // QUEUE_LEN
  EXPECT_EQ(r->recv(8), le64(2));
  r->send(Msg{}.u8(5).u64(1).str("q"));  // CHECK sees a non-empty queue
  EXPECT_EQ(r->recv(1), Bytes{0x00});
  r->send(Msg{}.u8(15).str("q"));  // QUEUE_POP -> i64 length, then the item
  EXPECT_EQ(r->recv(8 + 8 + 5), (Msg{}.u64(2).str("first").v));
  r->send(Msg{}.u8(15).str("q"));
  EXPECT_EQ(r->recv(8 + 8 + 6), (Msg{}.u64(1).str("second").v));
  r->send(Msg{}.u8(15).str("q"));
  EXPECT_EQ(r->recv(8), le64(0));
}

TEST(TcpStoreProtocol, ConnectionsThatSkipValidateOrSendGarbageAreClosed) {
  TcpStoreServer server(0);
  {
    Raw r(server.port());
    r.send(Msg{}.u8(1).str("k").str("v"));  // SET before VALIDATE
    EXPECT_TRUE(r.closed());
  }
  {
    Raw r(server.port());
    r.send(Bytes{0x00, 0xEF, 0xBE, 0xAD, 0xDE});  // the wrong magic
    EXPECT_TRUE(r.closed());
  }
  {
    auto r = torch_like_client(server.port());
    r->send(Bytes{0x63});  // no such query
    EXPECT_TRUE(r->closed());
  }
  {
    auto r = torch_like_client(server.port());
    r->send(Msg{}.u8(1).u64(uint64_t{1} << 40));  // a key size past the limit
    EXPECT_TRUE(r->closed());
  }
  // the server still serves
  TcpStoreClient c("127.0.0.1", server.port(), kLong);
  c.set("k", b("v"));
  EXPECT_EQ(s(c.get("k")), "v");
  EXPECT_FALSE(c.check({"k "}));
}

// ======================= the bytes on the wire: our client against a scripted torch server =======================

// Accepts one connection on a listening socket and plays a torch server's part, checking every byte.
class ScriptedServer {
 public:
  ScriptedServer() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    EXPECT_EQ(::listen(fd_, 4), 0);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
  }
  ~ScriptedServer() { ::close(fd_); }
  int port() const { return port_; }
  std::unique_ptr<Raw> accept() { return std::make_unique<Raw>(::accept(fd_, nullptr, nullptr), true); }

 private:
  int fd_ = -1, port_ = 0;
};

TEST(TcpStoreProtocol, OurClientSendsWhatTorchServersRead) {
  ScriptedServer fake;
  std::thread script([&] {
    auto c = fake.accept();
    EXPECT_EQ(c->recv(5), kValidate);
    const Bytes ping = c->recv(5);
    ASSERT_EQ(ping.size(), 5u);
    EXPECT_EQ(ping[0], 13);  // PING with a nonce, echoed back
    c->send(Bytes(ping.begin() + 1, ping.end()));
    // every key behind torch's "/" (TCPStore::keyPrefix_)
    EXPECT_EQ(c->recv(22), (Msg{}.u8(1).str("/ab").str("\x01\x02").v));  // SET
    EXPECT_EQ(c->recv(1 + 8 + 2 + 8), (Msg{}.u8(4).str("/c").u64(3).v));  // ADD
    c->send(le64(10));
    EXPECT_EQ(c->recv(1 + 8 + 8 + 2), (Msg{}.u8(5).u64(1).str("/k").v));  // CHECK
    c->send(Bytes{0x01});
    EXPECT_EQ(c->recv(1 + 8 + 8 + 2), (Msg{}.u8(6).u64(1).str("/g").v));  // get: WAIT first
    c->send(Bytes{0x00});
    EXPECT_EQ(c->recv(1 + 8 + 2), (Msg{}.u8(3).str("/g").v));  // then GET
    c->send(Msg{}.str("hi").v);
    EXPECT_EQ(c->recv(1 + 8 + 8 + 2), (Msg{}.u8(6).u64(1).str("/z").v));  // a WAIT that times out
    EXPECT_EQ(c->recv(1), Bytes{0x0C});                                    // CANCEL_WAIT
    c->send(Bytes{0x01});                                                  // WAIT_CANCELED
    EXPECT_EQ(c->recv(1 + 8 + 8 + 2), (Msg{}.u8(5).u64(1).str("/z").v));  // which keys are missing
    c->send(Bytes{0x01});
    EXPECT_EQ(c->recv(1 + 8 + 8 + 2), (Msg{}.u8(6).u64(1).str("/y").v));  // a WAIT answered as it is cancelled
    EXPECT_EQ(c->recv(1), Bytes{0x0C});
    c->send(Bytes{0x00, 0x01});  // STOP_WAITING, then WAIT_CANCELED
    EXPECT_EQ(c->recv(1 + 8 + 8 + 2 + 8 + 1), (Msg{}.u8(11).u64(1).str("/m").str("v").v));  // MULTI_SET: i64 count
    EXPECT_EQ(c->recv(1), Bytes{0x07});  // GETNUMKEYS
    c->send(le64(4));
  });
  TcpStoreClient client("127.0.0.1", fake.port(), milliseconds(300));
  client.set("ab", Bytes{1, 2});
  EXPECT_EQ(client.add("c", 3), 10);
  EXPECT_FALSE(client.check({"k"}));
  EXPECT_EQ(s(client.get("g")), "hi");
  expect_error([&] { client.wait({"z"}, milliseconds(100)); }, "key 'z' did not appear within 0.1 s");
  client.wait({"y"}, milliseconds(100));  // the keys came: no error
  client.multi_set({"m"}, {b("v")});
  EXPECT_EQ(client.num_keys(), 4);
  script.join();
}

// ======================= the rendezvous =======================

Topology own_store(int rank, int world, int port) {
  Topology t;
  t.rank = rank, t.world = world, t.master_port = port, t.launcher = "ftune";
  return t;
}

int free_port() {
  TcpStoreServer probe(0);
  return probe.port();
}

TEST(Rendezvous, AllRanksMeetAndAgreeOnThePlan) {
  constexpr int kWorld = 4;
  const int port = free_port();
  std::vector<std::thread> ts;
  std::atomic<int> done{0};
  std::vector<std::unique_ptr<Store>> stores(kWorld);  // rank 0's keeps the server up to the end
  for (int r = 0; r < kWorld; ++r)
    ts.emplace_back([&, r] {
      try {
        stores[r] = connect_store(own_store(r, kWorld, port), kLong);
        check_same_plan(*stores[r], r, kWorld, "abc123");
        stores[r]->set(fmt::format("hello/{}", r), b("x"));
        stores[r]->wait({"hello/0", "hello/1", "hello/2", "hello/3"}, kLong);
        ++done;
      } catch (const Error& e) {
        ADD_FAILURE() << "rank " << r << ": " << e.what();
      }
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(done.load(), kWorld);
  TcpStoreClient check("127.0.0.1", port, kLong);
  EXPECT_EQ(s(check.get("ftune/joined")), std::to_string(kWorld));
  EXPECT_EQ(s(check.get("ftune/world")), std::to_string(kWorld));
  EXPECT_EQ(s(check.get("ftune/plan_verdict")), "ok");
}

TEST(Rendezvous, MissingRanksAreCountedAfterTheTimeout) {
  const int port = free_port();
  std::vector<std::string> errors(2);
  std::vector<std::thread> ts;
  // ranks 2 and 3 never come; 1.5 s leaves rank 1 time to arrive on a loaded 2-core machine (with
  // 0.4 s it once missed the deadline under ctest -j2)
  for (int r = 0; r < 2; ++r)
    ts.emplace_back([&, r] {
      try {
        auto st = connect_store(own_store(r, 4, port), milliseconds(1500));
      } catch (const Error& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : ts) t.join();
  // rank 0 serves the store: it gives up at its deadline
  EXPECT_EQ(errors[0], "2 of 4 ranks arrived within 1.5 s (WORLD_SIZE says 4)");
  // rank 1 too, or it finds the store gone with rank 0 first
  if (errors[1].find("went away") == std::string::npos)
    EXPECT_EQ(errors[1], "2 of 4 ranks arrived within 1.5 s (WORLD_SIZE says 4)");
  else
    EXPECT_EQ(errors[1].rfind(fmt::format("2 of 4 ranks had arrived when the store at 127.0.0.1:{} went away after ", port), 0), 0u)
        << errors[1];
}

// Ranks 0 and 1 of a world of 2 joined a store someone else serves (like torchrun's agent).
std::vector<std::unique_ptr<Store>> join_two(Topology t) {
  std::vector<std::unique_ptr<Store>> kept(2);
  std::vector<std::thread> ts;
  for (int r = 0; r < 2; ++r)
    ts.emplace_back([&, r, t]() mutable {
      t.rank = r;
      try {
        kept[r] = connect_store(t, kLong);
      } catch (const Error& e) {
        ADD_FAILURE() << e.what();
      }
    });
  for (auto& th : ts) th.join();
  return kept;
}

TEST(Rendezvous, ASecondProcessWithTheSameRankFails) {
  TcpStoreServer server(0);
  Topology t = own_store(0, 2, server.port());
  t.agent_store = true;
  t.store_prefix = "/worker/attempt_0";
  auto kept = join_two(t);
  TcpStoreClient c("127.0.0.1", server.port(), kLong);
  EXPECT_EQ(s(c.get("/worker/attempt_0/ftune/joined")), "2");  // the keys live under the agent's prefix
  EXPECT_FALSE(c.check({"ftune/joined"}));
  t.rank = 1;
  expect_error([&] { connect_store(t, milliseconds(300)); },
               fmt::format("rank 1 joined the store at 127.0.0.1:{} 2 times: another process was also started with "
                           "RANK=1", server.port()));
}

TEST(Rendezvous, MoreRanksThanWorldSizeFail) {
  TcpStoreServer server(0);
  Topology t = own_store(0, 2, server.port());
  t.agent_store = true;
  t.store_prefix = "/worker/attempt_0";
  auto kept = join_two(t);
  t.rank = 5;  // a rank that no launcher of this world would start
  expect_error([&] { connect_store(t, milliseconds(300)); },
               "more ranks than WORLD_SIZE=2 joined the store at 127.0.0.1:");
}

TEST(Rendezvous, RanksThatDisagreeOnWorldSizeFail) {
  TcpStoreServer server(0);
  Topology t = own_store(0, 1, server.port());
  t.agent_store = true;
  t.store_prefix = "/run";
  auto s0 = connect_store(t, kLong);  // rank 0 says WORLD_SIZE=1 ...
  Topology u = own_store(1, 3, server.port());  // ... rank 1 says 3
  u.agent_store = true;
  u.store_prefix = "/run";
  expect_error([&] { connect_store(u, milliseconds(300)); }, "rank 1 has WORLD_SIZE=3, rank 0 has WORLD_SIZE=1");
}

TEST(Rendezvous, PortTakenByAnotherProgramIsNamed) {
  TcpStoreServer other(0);
  expect_error([&] { connect_store(own_store(0, 2, other.port()), milliseconds(300)); },
               fmt::format("MASTER_PORT {} is in use", other.port()));
}

TEST(Rendezvous, ADifferentRecipeIsNamedOnEveryRank) {
  TcpStoreServer server(0);
  constexpr int kWorld = 3;
  std::vector<std::string> errors(kWorld);
  std::vector<std::thread> ts;
  for (int r = 0; r < kWorld; ++r)
    ts.emplace_back([&, r] {
      TcpStoreClient c("127.0.0.1", server.port(), kLong);
      try {
        check_same_plan(c, r, kWorld, r == 1 ? "bbbb" : "aaaa");
      } catch (const Error& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : ts) t.join();
  for (int r = 0; r < kWorld; ++r)
    EXPECT_EQ(errors[r], "rank 1's recipe differs from rank 0's (run plan hash bbbb vs aaaa)") << "rank " << r;
}

TEST(Rendezvous, ARankThatNeverPublishesItsPlanIsNamed) {
  TcpStoreServer server(0);
  TcpStoreClient c("127.0.0.1", server.port(), milliseconds(300));
  expect_error([&] { check_same_plan(c, 0, 2, "aaaa"); }, "rank 1 did not publish its run plan hash within 0.3 s");
}

// ======================= against real torch (tools/check_tcpstore.py) =======================

std::string env_or(const char* name, const std::string& fallback = "") {
  const char* v = std::getenv(name);
  return v ? v : fallback;
}

// FTUNE_TORCH_STORE=host:port: a torch TCPStore serves; the script set torch/hello and reads back
// what this case writes. FTUNE_TORCH_STORE_PREFIX: use it through a prefixed view (the agent's way).
TEST(TorchInterop, ClientOfATorchStore) {
  const std::string at = env_or("FTUNE_TORCH_STORE");
  if (at.empty()) GTEST_SKIP() << "FTUNE_TORCH_STORE=host:port not set (tools/check_tcpstore.py sets it)";
  const size_t colon = at.rfind(':');
  ASSERT_NE(colon, std::string::npos);
  TcpStoreClient client(at.substr(0, colon), std::stoi(at.substr(colon + 1)), kLong);
  const std::string prefix = env_or("FTUNE_TORCH_STORE_PREFIX");
  std::unique_ptr<Store> view = prefix.empty() ? nullptr : prefixed(client, prefix);
  Store& st = view ? *view : static_cast<Store&>(client);
  EXPECT_EQ(s(st.get("torch/hello")), "from torch");
  st.set("ftune/hello", b("from ftune"));
  st.set("ftune/binary", Bytes{0, 1, 2, 255});
  EXPECT_EQ(st.add("shared/counter", 5), 7);  // the script added 2 first
  EXPECT_TRUE(st.check({"torch/hello", "ftune/hello"}));
  EXPECT_FALSE(st.check({"torch/never"}));
  expect_error([&] { st.wait({"torch/never"}, milliseconds(300)); }, "did not appear within 0.3 s");
  st.set("ftune/ready", b("1"));
  st.wait({"torch/later"}, kLong);  // the script sets it once it sees ftune/ready: a WAIT woken by torch
  EXPECT_EQ(s(st.get("torch/later")), "later");
  if (!view) {
    client.multi_set({"ftune/m1", "ftune/m2"}, {b("one"), b("two")});
    const auto m = client.multi_get({"ftune/m2", "torch/hello"});
    EXPECT_EQ(s(m[0]), "two");
    EXPECT_EQ(s(m[1]), "from torch");
    EXPECT_EQ(s(client.compare_set("ftune/cas", {}, b("x"))), "x");
    client.append("ftune/m1", b("+"));
    EXPECT_GT(client.num_keys(), 5);
    client.set("ftune/doomed", b("1"));
    EXPECT_TRUE(client.delete_key("ftune/doomed"));
  }
  if (env_or("FTUNE_TORCH_STORE_RENDEZVOUS") == "1") {  // the agent-store path of connect_store, one rank
    Topology t;
    t.master_addr = at.substr(0, colon), t.master_port = std::stoi(at.substr(colon + 1));
    t.agent_store = true, t.store_prefix = "/worker/attempt_0", t.launcher = "torchrun";
    auto rs = connect_store(t, kLong);
    check_same_plan(*rs, 0, 1, "plan-hash");
  }
  st.set("ftune/done", b("1"));
}

// FTUNE_SERVE_STORE=<file>: serve a store, write its port to the file, and check what the torch
// client of the script leaves in it.
TEST(TorchInterop, ServerForATorchClient) {
  const std::string port_file = env_or("FTUNE_SERVE_STORE");
  if (port_file.empty()) GTEST_SKIP() << "FTUNE_SERVE_STORE=<port file> not set (tools/check_tcpstore.py sets it)";
  TcpStoreServer server(0);
  {
    std::ofstream(port_file + ".tmp") << server.port() << "\n";
    std::filesystem::rename(port_file + ".tmp", port_file);
  }
  TcpStoreClient c("127.0.0.1", server.port(), milliseconds(120000));
  c.set("ftune/hello", b("from ftune"));
  c.wait({"torch/done"}, milliseconds(120000));
  EXPECT_EQ(s(c.get("torch/hello")), "from torch");
  EXPECT_EQ(s(c.get("shared/counter")), "7");
  EXPECT_EQ(s(c.get("torch/m2")), "two");
  c.set("ftune/verified", b("1"));
  c.wait({"torch/bye"}, milliseconds(120000));  // the script's last reads are over
}

// Started by torchrun --no-python (FTUNE_UNDER_TORCHRUN=1): the launcher's variables, its agent
// store, the join and the plan check, as a training run does them.
TEST(TorchInterop, UnderTorchrun) {
  if (env_or("FTUNE_UNDER_TORCHRUN") != "1") GTEST_SKIP() << "not started by tools/check_tcpstore.py under torchrun";
  const Topology t = topology_from_env();
  EXPECT_EQ(t.launcher, "torchrun");
  std::printf("rank %d of %d, local %d of %d, node %d of %d, store %s:%d agent %d prefix '%s'\n", t.rank, t.world,
              t.local_rank, t.local_world, t.node_rank, t.nodes, t.master_addr.c_str(), t.master_port,
              static_cast<int>(t.agent_store), t.store_prefix.c_str());
  auto st = connect_store(t, kLong);
  check_same_plan(*st, t.rank, t.world, "same-plan");
  st->set(fmt::format("ranks/{}", t.rank), b(std::to_string(t.rank)));
  std::vector<std::string> keys;
  for (int r = 0; r < t.world; ++r) keys.push_back(fmt::format("ranks/{}", r));
  st->wait(keys, kLong);
  // every rank has read everything before any leaves (rank 0 may serve the store)
  st->add("left", 1);
  if (t.rank == 0)
    while (st->add("left", 0) < t.world) std::this_thread::sleep_for(milliseconds(10));
}

}  // namespace
}  // namespace ftune::dist
