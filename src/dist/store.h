// The key-value store the ranks of a run meet through, with the semantics of PyTorch's c10d Store
// (TCPStore): set, a blocking get, an atomic add, check and wait, all bounded by a timeout. Under
// torchrun the launcher's agent serves one at MASTER_ADDR:MASTER_PORT; otherwise rank 0 serves its
// own (dist/tcp_store.h speaks the c10d TCPStore protocol both ways).
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ftune::dist {

using Bytes = std::vector<uint8_t>;

class Store {
 public:
  virtual ~Store() = default;
  virtual void set(const std::string& key, const Bytes& value) = 0;
  // The value of key, waiting for it until the timeout (then fails naming the key and the timeout).
  virtual Bytes get(const std::string& key) = 0;
  // Adds delta to the integer at key (created as 0) and returns the new value.
  virtual int64_t add(const std::string& key, int64_t delta) = 0;
  // Whether every key exists now.
  virtual bool check(const std::vector<std::string>& keys) = 0;
  // Waits until every key exists, failing after `timeout` naming the keys still missing.
  virtual void wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) = 0;
  virtual std::chrono::milliseconds timeout() const = 0;
};

// A view of `base` with every key under prefix + "/" (c10d's PrefixStore). base must outlive it.
std::unique_ptr<Store> prefixed(Store& base, const std::string& prefix);

// A store in this process's memory, for ranks that are threads of one process (tests).
std::unique_ptr<Store> make_memory_store(std::chrono::milliseconds timeout);

}  // namespace ftune::dist
