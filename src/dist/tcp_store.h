// The c10d TCPStore wire protocol, both ways: a client (a dist::Store) that joins any c10d store
// (torchrun's agent store, a torch process's TCPStore, or ours), and a server that torch processes
// can join as well. The protocol follows PyTorch's torch/csrc/distributed/c10d/TCPStore.cpp (the
// client: TCPStore::validate, ping, set, doWait, ...), TCPStoreBackend.hpp (QueryType,
// CheckResponseType, WaitResponseType, validationMagicNumber), TCPStoreLibUvBackend.cpp and
// TCPStoreBackend.cpp (the two servers).
//
// A message is one QueryType byte followed by its arguments, all in the host's byte order (x86-64
// and aarch64: little-endian), no padding. Torch's client sends every key of its API behind a "/"
// (TCPStore::keyPrefix_; only its own "init/" counter goes bare), and so does ours: set("k") is
// the key "/k" on the wire from either. The server keeps keys as they come.
//   string / bytes: uint64 size, then the bytes; a count of keys: uint64 (int64 for MULTI_SET);
//   VALIDATE  u32 magic                       (the first message of every connection; no reply)
//   SET       key, value                      (no reply)
//   COMPARE_SET key, expected, desired        -> bytes (the value now)
//   GET       key                             -> bytes (c10d clients WAIT for the key first)
//   ADD       key, i64 delta                  -> i64 (the value is kept as decimal text)
//   CHECK     count, keys                     -> u8 CheckResponseType (0 READY, 1 NOT_READY)
//   WAIT      count, keys                     -> u8 STOP_WAITING (0) once every key exists
//   GETNUMKEYS                                -> i64
//   DELETE_KEY key                            -> i64 (how many were deleted, 0 or 1)
//   APPEND    key, bytes                      (no reply)
//   MULTI_GET count, keys                     -> count x bytes
//   MULTI_SET i64 count, count x (key, value) (no reply)
//   CANCEL_WAIT                               -> u8 WAIT_CANCELED (1), after any STOP_WAITING
//   PING      u32 nonce                       -> u32 the same nonce
//   QUEUE_PUSH key, bytes                     (no reply)
//   QUEUE_POP key                             -> i64 queue length, then bytes if it was > 0
//   QUEUE_LEN key                             -> i64
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "dist/store.h"

namespace ftune::dist {

namespace c10d {

// The first message of a connection carries this (TCPStoreBackend.hpp: validationMagicNumber).
inline constexpr uint32_t kValidationMagic = 0x3C85F7CE;

enum class Query : uint8_t {
  VALIDATE = 0,
  SET = 1,
  COMPARE_SET = 2,
  GET = 3,
  ADD = 4,
  CHECK = 5,
  WAIT = 6,
  GETNUMKEYS = 7,
  DELETE_KEY = 8,
  APPEND = 9,
  MULTI_GET = 10,
  MULTI_SET = 11,
  CANCEL_WAIT = 12,
  PING = 13,
  QUEUE_PUSH = 14,
  QUEUE_POP = 15,
  QUEUE_LEN = 16,
};

enum class CheckReply : uint8_t { READY = 0, NOT_READY = 1 };
enum class WaitReply : uint8_t { STOP_WAITING = 0, WAIT_CANCELED = 1 };

// The limits of torch's libuv server (it drops a connection past them); ours keeps the same.
inline constexpr size_t kMaxKeyBytes = 8 * 1024;
inline constexpr size_t kMaxValueBytes = 8 * 1024 * 1024;
inline constexpr size_t kMaxKeyCount = 128 * 1024;

}  // namespace c10d

// A client of the c10d store at host:port. Connecting retries until `timeout` (the store may start
// after its clients), then fails "MASTER_ADDR host:port unreachable after 30 s (...)". Every call
// is bounded by the timeout too (get and wait name the keys still missing). Calls from several
// threads are serialized.
class TcpStoreClient final : public Store {
 public:
  TcpStoreClient(std::string host, int port, std::chrono::milliseconds timeout);
  ~TcpStoreClient() override;
  TcpStoreClient(const TcpStoreClient&) = delete;
  TcpStoreClient& operator=(const TcpStoreClient&) = delete;

  void set(const std::string& key, const Bytes& value) override;
  Bytes get(const std::string& key) override;
  int64_t add(const std::string& key, int64_t delta) override;
  bool check(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) override;
  std::chrono::milliseconds timeout() const override { return timeout_; }

  // The rest of the c10d store.
  // Sets key to desired if its value is expected (or if it is missing and expected is empty);
  // returns the value it has then.
  Bytes compare_set(const std::string& key, const Bytes& expected, const Bytes& desired);
  bool delete_key(const std::string& key);
  int64_t num_keys();
  void append(const std::string& key, const Bytes& value);
  // Waits for every key (until the timeout), then their values in order.
  std::vector<Bytes> multi_get(const std::vector<std::string>& keys);
  void multi_set(const std::vector<std::string>& keys, const std::vector<Bytes>& values);

  const std::string& host() const { return host_; }
  int port() const { return port_; }

 private:
  void connect();
  std::string where() const;
  void send_all(const Bytes& msg, const char* op, const std::string& key);
  // A query of a key and a value that has no reply (SET, APPEND).
  void send_key_value(c10d::Query q, const char* op, const std::string& key, const Bytes& value);
  void recv_all(void* out, size_t n, std::chrono::steady_clock::time_point deadline, const char* op,
                const std::string& key);
  [[noreturn]] void lost(int io, int err, const char* op, const std::string& key);
  Bytes recv_bytes(std::chrono::steady_clock::time_point deadline, const char* op, const std::string& key);
  bool check_locked(const std::vector<std::string>& keys);
  void wait_locked(const std::vector<std::string>& keys, std::chrono::milliseconds timeout);

  std::string host_;
  int port_;
  std::chrono::milliseconds timeout_;
  int fd_ = -1;
  std::mutex m_;
};

// A c10d store server: a thread that accepts clients on `port` (0: a free port the kernel picks;
// port() says which) on every interface, IPv6 and IPv4, and serves them until destroyed. A port
// already taken fails "MASTER_PORT 29500 is in use".
class TcpStoreServer {
 public:
  explicit TcpStoreServer(int port);
  ~TcpStoreServer();
  TcpStoreServer(const TcpStoreServer&) = delete;
  TcpStoreServer& operator=(const TcpStoreServer&) = delete;

  int port() const { return port_; }

 private:
  void run();

  int listen_fd_ = -1;
  int wake_pipe_[2] = {-1, -1};  // the destructor writes here to stop the thread
  int port_ = 0;
  std::thread thread_;
};

}  // namespace ftune::dist
