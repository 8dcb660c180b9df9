// Signal handlers can only touch lock-free atomics with static storage, so the request lives in
// this file's one static (the process has one set of signal handlers anyway).
#include "train/stop_signal.h"

#include <signal.h>

#include <time.h>

#include <atomic>
#include <cstdint>

namespace ftune {

namespace {

std::atomic<int> g_stop_signal{0};  // the first stop signal received, 0 = none
std::atomic<int64_t> g_stop_ns{0};   // when it arrived, CLOCK_MONOTONIC nanoseconds

int64_t monotonic_ns() {  // async-signal-safe (clock_gettime is)
  timespec t{};
  clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<int64_t>(t.tv_sec) * 1000000000 + t.tv_nsec;
}
struct sigaction g_old_term, g_old_int;

void on_signal(int sig) {
  int none = 0;
  const int64_t now = monotonic_ns();
  if (g_stop_signal.compare_exchange_strong(none, sig)) {
    g_stop_ns = now;
  } else {
    // A second signal: end now, as the default action would.
    ::signal(sig, SIG_DFL);
    ::raise(sig);
  }
}

}  // namespace

StopSignals::StopSignals() {
  g_stop_signal = 0;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, &g_old_term);
  sigaction(SIGINT, &sa, &g_old_int);
}

StopSignals::~StopSignals() {
  sigaction(SIGTERM, &g_old_term, nullptr);
  sigaction(SIGINT, &g_old_int, nullptr);
}

bool StopSignals::requested() const { return g_stop_signal.load() != 0; }
int StopSignals::signal() const { return g_stop_signal.load(); }
double StopSignals::seconds_since() const {
  return requested() ? static_cast<double>(monotonic_ns() - g_stop_ns.load()) * 1e-9 : 0.0;
}

}  // namespace ftune
