// The c10d TCPStore protocol (see tcp_store.h for the messages): the client over one non-blocking
// socket with every read bounded by a deadline, and the server as one poll loop over non-blocking
// sockets, parsing each client's bytes as they come and replying once a message is whole.
// Reference: PyTorch's torch/csrc/distributed/c10d/TCPStore.cpp, TCPStore.hpp, TCPStoreBackend.hpp,
// TCPStoreBackend.cpp and TCPStoreLibUvBackend.cpp.
#include "dist/tcp_store.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <map>
#include <unordered_map>

#include "core/error.h"

namespace ftune::dist {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// "30 s", "0.25 s": how long a bound was, for messages.
std::string secs(milliseconds t) { return fmt::format("{:g} s", static_cast<double>(t.count()) / 1000.0); }

// A key in a message: quoted, and cut when very long.
std::string quote(const std::string& key) {
  return key.size() <= 200 ? "'" + key + "'" : "'" + key.substr(0, 200) + "...'";
}

std::string key_list(const std::vector<std::string>& keys) {
  std::string out;
  for (const auto& k : keys) out += (out.empty() ? "" : ", ") + quote(k);
  return out;
}

int ms_until(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left, 0, 1 << 30));
}

void set_nodelay(int fd) {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// ---- message building: native byte order, as c10d's SendBuffer writes ----

template <typename T>
void put(Bytes& b, T v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  b.insert(b.end(), p, p + sizeof(T));
}
void put_bytes(Bytes& b, const Bytes& v) {
  put<uint64_t>(b, v.size());
  b.insert(b.end(), v.begin(), v.end());
}
Bytes message(c10d::Query q) { return Bytes{static_cast<uint8_t>(q)}; }
// A key as torch's TCPStore client sends it: behind its keyPrefix_ "/" (TCPStore.hpp), so that a
// key means the same to ftune and torch processes. Messages name the key without it.
void put_key(Bytes& b, const std::string& key) {
  put<uint64_t>(b, key.size() + 1);
  b.push_back('/');
  b.insert(b.end(), key.begin(), key.end());
}

enum class Io { ok, timeout, closed, error };

// Sends all of p[n] on a non-blocking socket before the deadline.
Io send_fully(int fd, const uint8_t* p, size_t n, Clock::time_point deadline, int& err) {
  while (n > 0) {
    const ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (k > 0) {
      p += k, n -= static_cast<size_t>(k);
      continue;
    }
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
      err = errno;
      return errno == EPIPE || errno == ECONNRESET ? Io::closed : Io::error;
    }
    pollfd pf{fd, POLLOUT, 0};
    const int r = ::poll(&pf, 1, ms_until(deadline));
    if (r == 0) return Io::timeout;
    if (r < 0 && errno != EINTR) return err = errno, Io::error;
  }
  return Io::ok;
}

// Receives exactly n bytes into p before the deadline.
Io recv_fully(int fd, uint8_t* p, size_t n, Clock::time_point deadline, int& err) {
  while (n > 0) {
    const ssize_t k = ::recv(fd, p, n, MSG_DONTWAIT);
    if (k > 0) {
      p += k, n -= static_cast<size_t>(k);
      continue;
    }
    if (k == 0) return Io::closed;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      err = errno;
      return errno == ECONNRESET ? Io::closed : Io::error;
    }
    pollfd pf{fd, POLLIN, 0};
    const int r = ::poll(&pf, 1, ms_until(deadline));
    if (r == 0) return Io::timeout;
    if (r < 0 && errno != EINTR) return err = errno, Io::error;
  }
  return Io::ok;
}

// One TCP connection to host:port before the deadline, or -1 with the reason in `why`.
int connect_once(const std::string& host, int port, Clock::time_point deadline, std::string& why) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  if (const int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &res); rc != 0) {
    why = fmt::format("cannot resolve {}: {}", host, ::gai_strerror(rc));
    return -1;
  }
  int fd = -1;
  for (addrinfo* a = res; a != nullptr && fd < 0; a = a->ai_next) {
    fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) {
      why = std::strerror(errno);
      continue;
    }
    int rc = ::connect(fd, a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd pf{fd, POLLOUT, 0};
      rc = ::poll(&pf, 1, ms_until(deadline));
      if (rc == 0) {
        why = "connection attempt timed out";
        rc = -1;
      } else if (rc > 0) {
        int soerr = 0;
        socklen_t len = sizeof(soerr);
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
        if (soerr != 0) why = std::strerror(soerr);
        rc = soerr == 0 ? 0 : -1;
      } else {
        why = std::strerror(errno);
      }
    } else if (rc != 0) {
      why = std::strerror(errno);
    }
    if (rc != 0) {
      ::close(fd);
      fd = -1;
    }
  }
  ::freeaddrinfo(res);
  if (fd >= 0) set_nodelay(fd);
  return fd;
}

}  // namespace

// ================================ client ================================

TcpStoreClient::TcpStoreClient(std::string host, int port, milliseconds timeout)
    : host_(std::move(host)), port_(port), timeout_(timeout) {
  connect();
}

TcpStoreClient::~TcpStoreClient() {
  if (fd_ >= 0) ::close(fd_);
}

std::string TcpStoreClient::where() const {
  return host_.find(':') != std::string::npos ? fmt::format("[{}]:{}", host_, port_)
                                              : fmt::format("{}:{}", host_, port_);
}

// Connects, sends VALIDATE and a PING and waits for the nonce back (as TCPStore's constructor does),
// retrying with a growing pause until the timeout: the store may not be up yet.
void TcpStoreClient::connect() {
  const auto deadline = Clock::now() + timeout_;
  auto pause = milliseconds(10);
  std::string why = "no attempt";
  while (true) {
    const int fd = connect_once(host_, port_, deadline, why);
    if (fd >= 0) {
      Bytes hello = message(c10d::Query::VALIDATE);
      put<uint32_t>(hello, c10d::kValidationMagic);
      const uint32_t nonce = static_cast<uint32_t>(::getpid());
      hello.push_back(static_cast<uint8_t>(c10d::Query::PING));
      put<uint32_t>(hello, nonce);
      int err = 0;
      uint32_t back = 0;
      Io io = send_fully(fd, hello.data(), hello.size(), deadline, err);
      if (io == Io::ok) io = recv_fully(fd, reinterpret_cast<uint8_t*>(&back), sizeof(back), deadline, err);
      if (io == Io::ok && back == nonce) {
        fd_ = fd;
        return;
      }
      ::close(fd);
      why = io == Io::ok        ? fmt::format("the peer answered PING with {} instead of {}; not a c10d store", back, nonce)
            : io == Io::timeout ? "connected, but no c10d store answered PING"
            : io == Io::closed  ? "connected, but the peer closed the connection"
                                : std::string(std::strerror(err));
    }
    if (Clock::now() + pause >= deadline) {
      std::this_thread::sleep_until(deadline);
      fail("MASTER_ADDR {} unreachable after {} ({})", where(), secs(timeout_), why);
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, milliseconds(1000));
  }
}

void TcpStoreClient::send_all(const Bytes& msg, const char* op, const std::string& key) {
  if (fd_ < 0) fail("store {}: the connection was lost by an earlier error ({} of key {})", where(), op, quote(key));
  int err = 0;
  const Io io = send_fully(fd_, msg.data(), msg.size(), Clock::now() + timeout_, err);
  if (io != Io::ok) lost(static_cast<int>(io), err, op, key);
}

void TcpStoreClient::recv_all(void* out, size_t n, Clock::time_point deadline, const char* op, const std::string& key) {
  if (fd_ < 0) fail("store {}: the connection was lost by an earlier error ({} of key {})", where(), op, quote(key));
  int err = 0;
  const Io io = recv_fully(fd_, static_cast<uint8_t*>(out), n, deadline, err);
  if (io != Io::ok) lost(static_cast<int>(io), err, op, key);
}

// A message or reply cut short leaves the stream out of step: the connection is closed for good.
void TcpStoreClient::lost(int io, int err, const char* op, const std::string& key) {
  ::close(fd_);
  fd_ = -1;
  if (static_cast<Io>(io) == Io::timeout)
    fail("store {}: no reply to {} of key {} within {}", where(), op, quote(key), secs(timeout_));
  if (static_cast<Io>(io) == Io::closed) fail("store {} closed the connection during {} of key {}", where(), op, quote(key));
  fail("store {}: {} of key {} failed: {}", where(), op, quote(key), std::strerror(err));
}

Bytes TcpStoreClient::recv_bytes(Clock::time_point deadline, const char* op, const std::string& key) {
  uint64_t n = 0;
  recv_all(&n, sizeof(n), deadline, op, key);
  if (n > (uint64_t{1} << 34)) {
    ::close(fd_);
    fd_ = -1;
    fail("store {}: the reply to {} of key {} claims {} bytes; not a c10d store", where(), op, quote(key), n);
  }
  Bytes v(n);
  if (n > 0) recv_all(v.data(), n, deadline, op, key);
  return v;
}

namespace {

void check_key(const std::string& key) {
  if (key.size() + 1 > c10d::kMaxKeyBytes)  // with the "/" in front
    fail("store key {} is {} bytes; c10d stores take keys of at most {} bytes", quote(key), key.size(),
         c10d::kMaxKeyBytes - 1);
}
void check_value(const std::string& key, const Bytes& v) {
  if (v.size() > c10d::kMaxValueBytes)
    fail("store value of key {} is {} bytes; c10d stores take values of at most {} bytes", quote(key), v.size(),
         c10d::kMaxValueBytes);
}
void check_keys(const std::vector<std::string>& keys) {
  if (keys.size() > c10d::kMaxKeyCount)
    fail("store: {} keys in one call; c10d stores take at most {}", keys.size(), c10d::kMaxKeyCount);
  for (const auto& k : keys) check_key(k);
}

}  // namespace

void TcpStoreClient::send_key_value(c10d::Query q, const char* op, const std::string& key, const Bytes& value) {
  check_key(key);
  check_value(key, value);
  Bytes m = message(q);
  put_key(m, key);
  put_bytes(m, value);
  std::lock_guard<std::mutex> l(m_);
  send_all(m, op, key);
}

void TcpStoreClient::set(const std::string& key, const Bytes& value) { send_key_value(c10d::Query::SET, "SET", key, value); }

Bytes TcpStoreClient::get(const std::string& key) {
  check_key(key);
  std::lock_guard<std::mutex> l(m_);
  wait_locked({key}, timeout_);
  Bytes m = message(c10d::Query::GET);
  put_key(m, key);
  send_all(m, "GET", key);
  return recv_bytes(Clock::now() + timeout_, "GET", key);
}

int64_t TcpStoreClient::add(const std::string& key, int64_t delta) {
  check_key(key);
  Bytes m = message(c10d::Query::ADD);
  put_key(m, key);
  put<int64_t>(m, delta);
  std::lock_guard<std::mutex> l(m_);
  send_all(m, "ADD", key);
  int64_t v = 0;
  recv_all(&v, sizeof(v), Clock::now() + timeout_, "ADD", key);
  return v;
}

bool TcpStoreClient::check(const std::vector<std::string>& keys) {
  check_keys(keys);
  std::lock_guard<std::mutex> l(m_);
  return check_locked(keys);
}

bool TcpStoreClient::check_locked(const std::vector<std::string>& keys) {
  const std::string first = keys.empty() ? "" : keys.front();
  Bytes m = message(c10d::Query::CHECK);
  put<uint64_t>(m, keys.size());
  for (const auto& k : keys) put_key(m, k);
  send_all(m, "CHECK", first);
  uint8_t r = 0;
  recv_all(&r, 1, Clock::now() + timeout_, "CHECK", first);
  if (r == static_cast<uint8_t>(c10d::CheckReply::READY)) return true;
  if (r == static_cast<uint8_t>(c10d::CheckReply::NOT_READY)) return false;
  ::close(fd_);
  fd_ = -1;
  fail("store {}: CHECK of key {} got reply {}, neither READY (0) nor NOT_READY (1)", where(), quote(first), r);
}

void TcpStoreClient::wait(const std::vector<std::string>& keys, milliseconds timeout) {
  check_keys(keys);
  std::lock_guard<std::mutex> l(m_);
  wait_locked(keys, timeout);
}

// WAIT, and when the time is up CANCEL_WAIT: the server answers WAIT_CANCELED, after a
// STOP_WAITING if the keys came in the meantime (TCPStore::doWait).
void TcpStoreClient::wait_locked(const std::vector<std::string>& keys, milliseconds timeout) {
  if (keys.empty()) return;
  Bytes m = message(c10d::Query::WAIT);
  put<uint64_t>(m, keys.size());
  for (const auto& k : keys) put_key(m, k);
  send_all(m, "WAIT", keys.front());
  if (fd_ < 0) fail("store {}: the connection was lost by an earlier error", where());
  uint8_t r = 0;
  int err = 0;
  const Io io = recv_fully(fd_, &r, 1, Clock::now() + timeout, err);
  if (io != Io::ok && io != Io::timeout) lost(static_cast<int>(io), err, "WAIT", keys.front());
  const auto expect_stop = [&](uint8_t got) {
    if (got != static_cast<uint8_t>(c10d::WaitReply::STOP_WAITING)) {
      ::close(fd_);
      fd_ = -1;
      fail("store {}: WAIT for key {} got reply {}, not STOP_WAITING (0)", where(), quote(keys.front()), got);
    }
  };
  if (io == Io::ok) return expect_stop(r);
  send_all(message(c10d::Query::CANCEL_WAIT), "CANCEL_WAIT", keys.front());
  recv_all(&r, 1, Clock::now() + timeout_, "CANCEL_WAIT", keys.front());
  bool arrived = false;
  if (r != static_cast<uint8_t>(c10d::WaitReply::WAIT_CANCELED)) {
    expect_stop(r);  // the keys came just before the cancel
    arrived = true;
    recv_all(&r, 1, Clock::now() + timeout_, "CANCEL_WAIT", keys.front());
    if (r != static_cast<uint8_t>(c10d::WaitReply::WAIT_CANCELED)) {
      ::close(fd_);
      fd_ = -1;
      fail("store {}: CANCEL_WAIT got reply {}, not WAIT_CANCELED (1)", where(), r);
    }
  }
  if (arrived) return;
  std::vector<std::string> missing;
  for (const auto& k : keys)
    if (!check_locked({k})) missing.push_back(k);
  if (missing.empty()) return;  // they came while we asked
  fail("store {}: {} {} did not appear within {}", where(), missing.size() == 1 ? "key" : "keys", key_list(missing),
       secs(timeout));
}

Bytes TcpStoreClient::compare_set(const std::string& key, const Bytes& expected, const Bytes& desired) {
  check_key(key);
  check_value(key, expected);
  check_value(key, desired);
  Bytes m = message(c10d::Query::COMPARE_SET);
  put_key(m, key);
  put_bytes(m, expected);
  put_bytes(m, desired);
  std::lock_guard<std::mutex> l(m_);
  send_all(m, "COMPARE_SET", key);
  return recv_bytes(Clock::now() + timeout_, "COMPARE_SET", key);
}

bool TcpStoreClient::delete_key(const std::string& key) {
  check_key(key);
  Bytes m = message(c10d::Query::DELETE_KEY);
  put_key(m, key);
  std::lock_guard<std::mutex> l(m_);
  send_all(m, "DELETE_KEY", key);
  int64_t n = 0;
  recv_all(&n, sizeof(n), Clock::now() + timeout_, "DELETE_KEY", key);
  return n == 1;
}

int64_t TcpStoreClient::num_keys() {
  std::lock_guard<std::mutex> l(m_);
  send_all(message(c10d::Query::GETNUMKEYS), "GETNUMKEYS", "");
  int64_t n = 0;
  recv_all(&n, sizeof(n), Clock::now() + timeout_, "GETNUMKEYS", "");
  return n;
}

void TcpStoreClient::append(const std::string& key, const Bytes& value) {
  send_key_value(c10d::Query::APPEND, "APPEND", key, value);
}

std::vector<Bytes> TcpStoreClient::multi_get(const std::vector<std::string>& keys) {
  check_keys(keys);
  if (keys.empty()) return {};
  std::lock_guard<std::mutex> l(m_);
  wait_locked(keys, timeout_);
  Bytes m = message(c10d::Query::MULTI_GET);
  put<uint64_t>(m, keys.size());
  for (const auto& k : keys) put_key(m, k);
  send_all(m, "MULTI_GET", keys.front());
  std::vector<Bytes> out;
  const auto deadline = Clock::now() + timeout_;
  for (const auto& k : keys) out.push_back(recv_bytes(deadline, "MULTI_GET", k));
  return out;
}

void TcpStoreClient::multi_set(const std::vector<std::string>& keys, const std::vector<Bytes>& values) {
  if (keys.size() != values.size())
    fail("store: multi_set of {} keys with {} values", keys.size(), values.size());
  check_keys(keys);
  for (size_t i = 0; i < keys.size(); ++i) check_value(keys[i], values[i]);
  Bytes m = message(c10d::Query::MULTI_SET);
  put<int64_t>(m, static_cast<int64_t>(keys.size()));
  for (size_t i = 0; i < keys.size(); ++i) {
    put_key(m, keys[i]);
    put_bytes(m, values[i]);
  }
  std::lock_guard<std::mutex> l(m_);
  send_all(m, "MULTI_SET", keys.empty() ? "" : keys.front());
}

// ================================ server ================================

namespace {

struct Conn {
  int fd = -1;
  Bytes in;
  size_t in_pos = 0;  // bytes of `in` already handled
  Bytes out;          // replies not yet sent
  bool validated = false;
  bool eof = false;
  size_t awaited = 0;  // keys its WAIT still waits for
};

struct ProtocolError {};

// Reads the arguments of one message from a client's bytes; `whole` turns false when they have not
// all arrived yet (the message is then read again from its start when more come).
class Reader {
 public:
  Reader(const Bytes& b, size_t pos) : b_(b), pos_(pos) {}
  template <typename T>
  bool value(T& v) {
    if (b_.size() - pos_ < sizeof(T)) return false;
    std::memcpy(&v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool key(std::string& s) { return sized(s, c10d::kMaxKeyBytes); }
  bool bytes(Bytes& v) { return sized(v, c10d::kMaxValueBytes); }
  bool count(uint64_t& n) {
    if (!value(n)) return false;
    if (n > c10d::kMaxKeyCount) throw ProtocolError{};
    return true;
  }
  size_t pos() const { return pos_; }

 private:
  template <typename C>
  bool sized(C& out, size_t max) {
    uint64_t n = 0;
    if (!value(n)) return false;
    if (n > max) throw ProtocolError{};
    if (b_.size() - pos_ < n) return false;
    out.assign(b_.begin() + static_cast<ptrdiff_t>(pos_), b_.begin() + static_cast<ptrdiff_t>(pos_ + n));
    pos_ += n;
    return true;
  }
  const Bytes& b_;
  size_t pos_;
};

class ServerLoop {
 public:
  ServerLoop(int listen_fd, int wake_fd) : listen_fd_(listen_fd), wake_fd_(wake_fd) {}
  ~ServerLoop() {
    for (auto& [id, c] : conns_) ::close(c.fd);
  }

  void run() {
    std::vector<pollfd> fds;
    std::vector<uint64_t> ids;
    while (true) {
      fds.assign({pollfd{listen_fd_, POLLIN, 0}, pollfd{wake_fd_, POLLIN, 0}});
      ids.clear();
      for (auto& [id, c] : conns_) {
        fds.push_back(pollfd{c.fd, static_cast<short>(POLLIN | (c.out.empty() ? 0 : POLLOUT)), 0});
        ids.push_back(id);
      }
      if (::poll(fds.data(), fds.size(), -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if (fds[1].revents != 0) return;  // the owner stops us
      for (size_t i = 0; i < ids.size(); ++i) {
        if (fds[i + 2].revents == 0) continue;
        auto it = conns_.find(ids[i]);
        if (it == conns_.end()) continue;
        if (!serve(ids[i], it->second, fds[i + 2].revents)) drop(ids[i]);
      }
      if (fds[0].revents & POLLIN) accept_all();
    }
  }

 private:
  void accept_all() {
    while (true) {
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;  // EAGAIN: none left (other errors: the client went away already)
      set_nodelay(fd);
      conns_[next_id_++].fd = fd;
    }
  }

  // Reads what came, handles every whole message, sends what it can; false: close the connection.
  bool serve(uint64_t id, Conn& c, short revents) {
    if (revents & POLLIN) {
      uint8_t buf[65536];
      while (true) {
        const ssize_t k = ::recv(c.fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (k > 0) {
          c.in.insert(c.in.end(), buf, buf + k);
          continue;
        }
        if (k == 0) c.eof = true;
        else if (errno == EINTR) continue;
        else if (errno != EAGAIN && errno != EWOULDBLOCK) c.eof = true;
        break;
      }
      try {
        while (handle_one(id, c)) {
        }
      } catch (const ProtocolError&) {
        return false;
      } catch (const std::exception&) {  // e.g. ADD to a value that is not a number, as torch's server
        return false;
      }
      if (c.in_pos > 0 && c.in_pos * 2 >= c.in.size()) {
        c.in.erase(c.in.begin(), c.in.begin() + static_cast<ptrdiff_t>(c.in_pos));
        c.in_pos = 0;
      }
    } else if (revents & (POLLHUP | POLLERR)) {
      c.eof = true;
    }
    if (!flush(c)) return false;
    if (c.out.size() > (size_t{256} << 20)) return false;  // a client that never reads its replies
    return !c.eof;
  }

  bool flush(Conn& c) {
    size_t sent = 0;
    while (sent < c.out.size()) {
      const ssize_t k = ::send(c.fd, c.out.data() + sent, c.out.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (k > 0) {
        sent += static_cast<size_t>(k);
        continue;
      }
      if (k < 0 && errno == EINTR) continue;
      if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      return false;
    }
    c.out.erase(c.out.begin(), c.out.begin() + static_cast<ptrdiff_t>(sent));
    return true;
  }

  void reply_u8(Conn& c, uint8_t v) { c.out.push_back(v); }

  bool has(const std::string& k) const {
    if (data_.count(k)) return true;
    auto q = queues_.find(k);
    return q != queues_.end() && !q->second.empty();
  }

  // Wakes every WAIT on key whose last missing key this was.
  void wake(const std::string& key) {
    auto w = waiters_.find(key);
    if (w == waiters_.end()) return;
    for (uint64_t id : w->second) {
      auto it = conns_.find(id);
      if (it != conns_.end() && it->second.awaited > 0 && --it->second.awaited == 0)
        reply_u8(it->second, static_cast<uint8_t>(c10d::WaitReply::STOP_WAITING));
    }
    waiters_.erase(w);
  }

  // A queue item is for one waiter only: the first whose wait it completes.
  void wake_one(const std::string& key) {
    auto w = waiters_.find(key);
    if (w == waiters_.end()) return;
    auto& list = w->second;
    while (!list.empty()) {
      const uint64_t id = list.front();
      list.erase(list.begin());
      auto it = conns_.find(id);
      if (it != conns_.end() && it->second.awaited > 0 && --it->second.awaited == 0) {
        reply_u8(it->second, static_cast<uint8_t>(c10d::WaitReply::STOP_WAITING));
        break;
      }
    }
    if (list.empty()) waiters_.erase(w);
  }

  void clear_wait(uint64_t id, Conn& c) {
    if (c.awaited == 0) return;
    c.awaited = 0;
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      auto& v = it->second;
      v.erase(std::remove(v.begin(), v.end(), id), v.end());
      it = v.empty() ? waiters_.erase(it) : std::next(it);
    }
  }

  void drop(uint64_t id) {
    auto it = conns_.find(id);
    if (it == conns_.end()) return;
    clear_wait(id, it->second);
    ::close(it->second.fd);
    conns_.erase(it);
  }

  void set(const std::string& k, Bytes v) {
    data_[k] = std::move(v);
    wake(k);
  }

  // One whole message from c.in: handled and consumed (true), or not all there yet (false).
  bool handle_one(uint64_t id, Conn& c) {
    if (c.in_pos >= c.in.size()) return false;
    const auto q = static_cast<c10d::Query>(c.in[c.in_pos]);
    Reader r(c.in, c.in_pos + 1);
    if (!c.validated) {  // TCPStore::validate: the first message of a connection
      uint32_t magic = 0;
      if (q != c10d::Query::VALIDATE) throw ProtocolError{};
      if (!r.value(magic)) return false;
      if (magic != c10d::kValidationMagic) throw ProtocolError{};
      c.validated = true;
      c.in_pos = r.pos();
      return true;
    }
    std::string key;
    switch (q) {
      case c10d::Query::PING: {
        uint32_t nonce = 0;
        if (!r.value(nonce)) return false;
        put<uint32_t>(c.out, nonce);
        break;
      }
      case c10d::Query::SET: {
        Bytes v;
        if (!r.key(key) || !r.bytes(v)) return false;
        set(key, std::move(v));
        break;
      }
      case c10d::Query::COMPARE_SET: {
        Bytes expected, desired;
        if (!r.key(key) || !r.bytes(expected) || !r.bytes(desired)) return false;
        auto it = data_.find(key);
        if (it == data_.end()) {
          if (expected.empty()) {
            data_[key] = desired;
            put_bytes(c.out, desired);
          } else {
            put_bytes(c.out, expected);  // as torch's servers answer a missing key
          }
        } else {
          if (it->second == expected) it->second = std::move(desired);
          put_bytes(c.out, it->second);
        }
        wake(key);
        break;
      }
      case c10d::Query::GET: {
        if (!r.key(key)) return false;
        auto it = data_.find(key);
        put_bytes(c.out, it == data_.end() ? Bytes{} : it->second);
        break;
      }
      case c10d::Query::ADD: {
        int64_t delta = 0;
        if (!r.key(key) || !r.value(delta)) return false;
        int64_t v = delta;
        if (auto it = data_.find(key); it != data_.end())
          v += std::stoll(std::string(it->second.begin(), it->second.end()));
        const std::string s = std::to_string(v);
        set(key, Bytes(s.begin(), s.end()));
        put<int64_t>(c.out, v);
        break;
      }
      case c10d::Query::CHECK:
      case c10d::Query::WAIT:
      case c10d::Query::MULTI_GET: {
        uint64_t n = 0;
        if (!r.count(n)) return false;
        std::vector<std::string> keys(n);
        for (auto& k : keys)
          if (!r.key(k)) return false;
        if (q == c10d::Query::MULTI_GET) {
          for (const auto& k : keys) {
            auto it = data_.find(k);
            put_bytes(c.out, it == data_.end() ? Bytes{} : it->second);
          }
        } else {
          const bool ready = std::all_of(keys.begin(), keys.end(), [&](const std::string& k) { return has(k); });
          if (q == c10d::Query::CHECK) {
            reply_u8(c, static_cast<uint8_t>(ready ? c10d::CheckReply::READY : c10d::CheckReply::NOT_READY));
          } else if (ready) {
            reply_u8(c, static_cast<uint8_t>(c10d::WaitReply::STOP_WAITING));
          } else {
            clear_wait(id, c);
            for (const auto& k : keys)
              if (!has(k)) waiters_[k].push_back(id), ++c.awaited;
          }
        }
        break;
      }
      case c10d::Query::GETNUMKEYS:
        put<int64_t>(c.out, static_cast<int64_t>(data_.size()));
        break;
      case c10d::Query::DELETE_KEY: {
        if (!r.key(key)) return false;
        put<int64_t>(c.out, static_cast<int64_t>(data_.erase(key)));
        break;
      }
      case c10d::Query::APPEND: {
        Bytes v;
        if (!r.key(key) || !r.bytes(v)) return false;
        Bytes& cur = data_[key];
        cur.insert(cur.end(), v.begin(), v.end());
        wake(key);
        break;
      }
      case c10d::Query::MULTI_SET: {
        int64_t n = 0;
        if (!r.value(n)) return false;
        if (n < 0 || static_cast<uint64_t>(n) > c10d::kMaxKeyCount) throw ProtocolError{};
        std::vector<std::pair<std::string, Bytes>> kv(static_cast<size_t>(n));
        for (auto& [k, v] : kv)
          if (!r.key(k) || !r.bytes(v)) return false;
        for (auto& [k, v] : kv) set(k, std::move(v));
        break;
      }
      case c10d::Query::CANCEL_WAIT:
        clear_wait(id, c);
        reply_u8(c, static_cast<uint8_t>(c10d::WaitReply::WAIT_CANCELED));
        break;
      case c10d::Query::QUEUE_PUSH: {
        Bytes v;
        if (!r.key(key) || !r.bytes(v)) return false;
        queues_[key].push_back(std::move(v));
        wake_one(key);
        break;
      }
      case c10d::Query::QUEUE_POP: {
        if (!r.key(key)) return false;
        auto& queue = queues_[key];
        put<int64_t>(c.out, static_cast<int64_t>(queue.size()));
        if (!queue.empty()) {
          put_bytes(c.out, queue.front());
          queue.pop_front();
        }
        break;
      }
      case c10d::Query::QUEUE_LEN: {
        if (!r.key(key)) return false;
        auto it = queues_.find(key);
        put<int64_t>(c.out, it == queues_.end() ? 0 : static_cast<int64_t>(it->second.size()));
        break;
      }
      default:  // VALIDATE again, or a byte that is no query
        throw ProtocolError{};
    }
    c.in_pos = r.pos();
    return true;
  }

  int listen_fd_, wake_fd_;
  uint64_t next_id_ = 1;
  std::map<uint64_t, Conn> conns_;
  std::unordered_map<std::string, Bytes> data_;
  std::unordered_map<std::string, std::deque<Bytes>> queues_;
  std::unordered_map<std::string, std::vector<uint64_t>> waiters_;  // key -> WAITs that miss it
};

// A socket listening on every interface at port (IPv6 with IPv4 mapped, else IPv4 alone).
int listen_on(int port) {
  const int one = 1, zero = 0;
  int fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd >= 0) {
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_any;
    a.sin6_port = htons(static_cast<uint16_t>(port));
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) return fd;
    const int e = errno;
    ::close(fd);
    if (e == EADDRINUSE) fail("MASTER_PORT {} is in use", port);
  }
  fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) fail("MASTER_PORT {}: cannot open a socket ({})", port, std::strerror(errno));
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    const int e = errno;
    ::close(fd);
    if (e == EADDRINUSE) fail("MASTER_PORT {} is in use", port);
    fail("MASTER_PORT {}: cannot listen ({})", port, std::strerror(e));
  }
  return fd;
}

}  // namespace

TcpStoreServer::TcpStoreServer(int port) {
  if (port < 0 || port > 65535) fail("MASTER_PORT {} is not a port (0-65535)", port);
  listen_fd_ = listen_on(port);
  if (::listen(listen_fd_, SOMAXCONN) != 0) {
    const int e = errno;
    ::close(listen_fd_);
    if (e == EADDRINUSE) fail("MASTER_PORT {} is in use", port);
    fail("MASTER_PORT {}: cannot listen ({})", port, std::strerror(e));
  }
  sockaddr_storage a{};
  socklen_t len = sizeof(a);
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
  port_ = a.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&a)->sin6_port)
                                  : ntohs(reinterpret_cast<sockaddr_in*>(&a)->sin_port);
  if (::pipe2(wake_pipe_, O_CLOEXEC) != 0) {
    ::close(listen_fd_);
    fail("MASTER_PORT {}: cannot start the store ({})", port, std::strerror(errno));
  }
  thread_ = std::thread([this] { run(); });
}

void TcpStoreServer::run() {
  ServerLoop loop(listen_fd_, wake_pipe_[0]);
  loop.run();
}

TcpStoreServer::~TcpStoreServer() {
  const char b = 0;
  while (::write(wake_pipe_[1], &b, 1) < 0 && errno == EINTR) {
  }
  if (thread_.joinable()) thread_.join();
  ::close(wake_pipe_[0]);
  ::close(wake_pipe_[1]);
  ::close(listen_fd_);
}

}  // namespace ftune::dist
