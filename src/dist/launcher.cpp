// The local launcher: fork + exec per rank, signals forwarded, failures propagated.
#include "dist/launcher.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>

#include "core/error.h"

namespace ftune::dist {

namespace {

std::atomic<int> g_forward{0};  // a stop signal to pass on to the ranks (signal handlers need a static)

void on_signal(int sig) { g_forward = sig; }

// A TCP port free on 127.0.0.1 now (the kernel's pick); rank 0 binds it a moment later.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) fail("--nproc-per-node: cannot open a socket to find a free port");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    fail("--nproc-per-node: cannot find a free port on 127.0.0.1");
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

int status_of(int st) { return WIFEXITED(st) ? WEXITSTATUS(st) : WIFSIGNALED(st) ? 128 + WTERMSIG(st) : 1; }

}  // namespace

int launch_local_ranks(int nproc, const std::vector<std::string>& args, double grace_s) {
  if (nproc < 1) fail("--nproc-per-node must be at least 1, got {}", nproc);
  const int port = free_port();
  struct sigaction sa {}, old_term{}, old_int{};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, &old_term);
  sigaction(SIGINT, &sa, &old_int);
  std::vector<pid_t> pids;
  for (int r = 0; r < nproc; ++r) {
    const pid_t pid = ::fork();
    if (pid < 0) fail("--nproc-per-node: cannot start rank {}", r);
    if (pid == 0) {
      sigaction(SIGTERM, &old_term, nullptr);
      sigaction(SIGINT, &old_int, nullptr);
      ::setpgid(0, 0);  // a terminal's Ctrl-C reaches the launcher, which passes it on once
      const std::string rank = std::to_string(r), world = std::to_string(nproc), p = std::to_string(port);
      ::setenv("RANK", rank.c_str(), 1), ::setenv("LOCAL_RANK", rank.c_str(), 1);
      ::setenv("WORLD_SIZE", world.c_str(), 1), ::setenv("LOCAL_WORLD_SIZE", world.c_str(), 1);
      ::setenv("GROUP_RANK", "0", 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1), ::setenv("MASTER_PORT", p.c_str(), 1);
      ::setenv("FTUNE_LAUNCHER", "ftune", 1);
      std::vector<char*> argv;
      for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv("/proc/self/exe", argv.data());
      std::fprintf(stderr, "ftune: rank %d: cannot start %s\n", r, args[0].c_str());
      std::_Exit(127);
    }
    pids.push_back(pid);
  }
  int result = 0, alive = nproc, forwarded = 0;
  std::chrono::steady_clock::time_point term_at{}, stop_at{};
  bool stopping = false, termed = false;
  auto stop_all = [&](int sig) {
    for (pid_t p : pids)
      if (p > 0) ::kill(p, sig);
  };
  while (alive > 0) {
    if (const int sig = g_forward.exchange(0); sig && sig != forwarded) {  // a stop signal: every rank gets it
      forwarded = sig;
      stop_all(sig);
    }
    int st = 0;
    const pid_t done = ::waitpid(-1, &st, WNOHANG);
    if (done > 0) {
      for (size_t r = 0; r < pids.size(); ++r)
        if (pids[r] == done) {
          pids[r] = -1;
          --alive;
          const int code = status_of(st);
          if (code != 0 && result != 0 && !forwarded) fmt::print(stderr, "ftune: rank {} ended with status {}\n", r, code);
          if (code != 0 && result == 0) {
            result = code;
            if (alive > 0 && !forwarded) {
              // The others usually fail on their own at once (their next collective finds the
              // connection closed) and say so; a second later the rest are asked to stop, and
              // after the grace period killed.
              fmt::print(stderr, "ftune: rank {} ended with status {}; stopping the other ranks\n", r, code);
              stopping = true;
              const auto now = std::chrono::steady_clock::now();
              term_at = now + std::chrono::seconds(1);
              stop_at = term_at + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                      std::chrono::duration<double>(grace_s));
            }
          }
        }
      continue;
    }
    if (stopping && !termed && std::chrono::steady_clock::now() > term_at) {
      stop_all(SIGTERM);
      termed = true;
    }
    if (stopping && std::chrono::steady_clock::now() > stop_at) {
      stop_all(SIGKILL);
      stopping = false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  sigaction(SIGTERM, &old_term, nullptr);
  sigaction(SIGINT, &old_int, nullptr);
  return result;
}

}  // namespace ftune::dist
