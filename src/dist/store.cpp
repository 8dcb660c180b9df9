// The prefixed view and the in-process store.
#include "dist/store.h"

#include <fmt/format.h>

#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>

#include "core/error.h"

namespace ftune::dist {

namespace {

class PrefixStore final : public Store {
 public:
  PrefixStore(Store& base, std::string prefix) : base_(base), prefix_(std::move(prefix) + "/") {}
  void set(const std::string& key, const Bytes& value) override { base_.set(prefix_ + key, value); }
  Bytes get(const std::string& key) override { return base_.get(prefix_ + key); }
  int64_t add(const std::string& key, int64_t delta) override { return base_.add(prefix_ + key, delta); }
  bool check(const std::vector<std::string>& keys) override { return base_.check(full(keys)); }
  void wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) override {
    base_.wait(full(keys), timeout);
  }
  std::chrono::milliseconds timeout() const override { return base_.timeout(); }

 private:
  std::vector<std::string> full(const std::vector<std::string>& keys) const {
    std::vector<std::string> out;
    for (const auto& k : keys) out.push_back(prefix_ + k);
    return out;
  }
  Store& base_;
  std::string prefix_;
};

class MemoryStore final : public Store {
 public:
  explicit MemoryStore(std::chrono::milliseconds timeout) : timeout_(timeout) {}
  void set(const std::string& key, const Bytes& value) override {
    {
      std::lock_guard<std::mutex> l(m_);
      data_[key] = value;
    }
    cv_.notify_all();
  }
  Bytes get(const std::string& key) override {
    wait({key}, timeout_);
    std::lock_guard<std::mutex> l(m_);
    return data_.at(key);
  }
  int64_t add(const std::string& key, int64_t delta) override {
    int64_t v = 0;
    {
      std::lock_guard<std::mutex> l(m_);
      auto it = data_.find(key);
      if (it != data_.end()) v = std::stoll(std::string(it->second.begin(), it->second.end()));
      v += delta;
      const std::string s = std::to_string(v);  // c10d keeps counters as decimal text
      data_[key] = Bytes(s.begin(), s.end());
    }
    cv_.notify_all();
    return v;
  }
  bool check(const std::vector<std::string>& keys) override {
    std::lock_guard<std::mutex> l(m_);
    for (const auto& k : keys)
      if (!data_.count(k)) return false;
    return true;
  }
  void wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) override {
    std::unique_lock<std::mutex> l(m_);
    auto missing = [&] {
      std::string out;
      for (const auto& k : keys)
        if (!data_.count(k)) out += (out.empty() ? "" : ", ") + k;
      return out;
    };
    if (!cv_.wait_for(l, timeout, [&] { return missing().empty(); }))
      fail("store: keys {} did not appear within {} ms", missing(), timeout.count());
  }
  std::chrono::milliseconds timeout() const override { return timeout_; }

 private:
  std::chrono::milliseconds timeout_;
  std::mutex m_;
  std::condition_variable cv_;
  std::map<std::string, Bytes> data_;
};

}  // namespace

std::unique_ptr<Store> prefixed(Store& base, const std::string& prefix) {
  return std::make_unique<PrefixStore>(base, prefix);
}

std::unique_ptr<Store> make_memory_store(std::chrono::milliseconds timeout) {
  return std::make_unique<MemoryStore>(timeout);
}

}  // namespace ftune::dist
