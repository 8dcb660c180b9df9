// What the multi-rank GPU benchmarks (bench_pipeline_gpu, bench_fsdp_gpu) share: their common
// options, one forked process per rank (the parent waits for all and fails when any does), each
// rank's Gloo communicator, the random rows they train on, and each process's peak device memory
// as NVML counts it for that process (sampled every 2 ms on a thread, so ranks sharing one GPU
// each see their own).
#pragma once
#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "data/dataset.h"
#include "dist/communicator.h"
#include "dist/rendezvous.h"
#include "dist/store.h"
#include "gpu/process_memory.h"
#include "bench_args.h"
#include "lora_bench.h"

namespace ftune::bench {

using Clock = std::chrono::steady_clock;
inline double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// The largest process_device_memory(device) seen from construction until stop().
class ProcessPeak {
 public:
  explicit ProcessPeak(int device) : device_(device), peak_(process_device_memory(device)) {
    thread_ = std::thread([this] {
      while (!done_) {
        peak_ = std::max(peak_.load(), process_device_memory(device_));
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    });
  }
  ~ProcessPeak() { stop(); }
  ProcessPeak(const ProcessPeak&) = delete;
  ProcessPeak& operator=(const ProcessPeak&) = delete;
  size_t stop() {
    done_ = true;
    if (thread_.joinable()) thread_.join();
    return peak_;
  }

 private:
  int device_;
  std::atomic<bool> done_{false};
  std::atomic<size_t> peak_;
  std::thread thread_;
};

// body(rank) in `ranks` forked processes; 0 when every one returned 0. An exception in a rank is
// printed with the program's name and fails that rank.
inline int fork_ranks(int ranks, const char* program, const std::function<int(int)>& body) {
  std::vector<pid_t> kids;
  for (int r = 0; r < ranks; ++r) {
    const pid_t pid = fork();
    if (pid == 0) {
      try {
        _exit(body(r));
      } catch (const std::exception& e) {
        fmt::print(stderr, "{}: rank {}: {}\n", program, r, e.what());
        _exit(1);
      }
    }
    kids.push_back(pid);
  }
  int worst = 0;
  for (pid_t k : kids) {
    int st = 0;
    waitpid(k, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) worst = 1;
  }
  return worst;
}

// The options both benchmarks take (each adds its own through parse_rank_args' `extra`).
struct RankArgs {
  std::string shape = "llama2-70b", optimizer = "paged_adamw_8bit";
  int ranks = 8, port = 29611;
  int64_t seq = 2048, mb = 1, accum = 4, rank = 16, steps = 10, warmup = 1;
  bool fp16 = false, ckpt = false;
  double max_gib = 0;
};

// argv into `a`; `ranks_flag` names the world size ("--stages", "--ranks"); extra(flag, value)
// takes the program's own flags (value() reads the next argument) and returns false for unknown ones.
inline void parse_rank_args(int argc, char** argv, RankArgs& a, const std::string& ranks_flag,
                            const std::function<bool(const std::string&, const std::function<std::string()>&)>& extra) {
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    const std::function<std::string()> val = [&] { return flag_value(argc, argv, i); };
    if (s == "--shape") a.shape = val();
    else if (s == ranks_flag) a.ranks = std::stoi(val());
    else if (s == "--seq") a.seq = std::stoll(val());
    else if (s == "--micro-batch") a.mb = std::stoll(val());
    else if (s == "--grad-accum") a.accum = std::stoll(val());
    else if (s == "--rank") a.rank = std::stoll(val());
    else if (s == "--steps") a.steps = std::stoll(val());
    else if (s == "--warmup") a.warmup = std::stoll(val());
    else if (s == "--optimizer") a.optimizer = val();
    else if (s == "--max-memory") a.max_gib = std::stod(val());
    else if (s == "--port") a.port = std::stoi(val());
    else if (s == "--fp16") a.fp16 = true;
    else if (s == "--checkpointing") a.ckpt = true;
    else if (!extra(s, val)) fail("unknown argument '{}'", s);
  }
}

// A benchmark's main(): the options, then body(rank) in one process per rank.
inline int rank_main(int argc, char** argv, const char* program, RankArgs& a, const std::string& ranks_flag,
                     const std::function<bool(const std::string&, const std::function<std::string()>&)>& extra,
                     const std::function<int(int)>& body) {
  try {
    parse_rank_args(argc, argv, a, ranks_flag, extra);
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}: {}\n", program, e.what());
    return 1;
  }
  return fork_ranks(a.ranks, program, body);
}

// Rank r's store client and Gloo communicator over `a.ranks` ranks of this host.
struct RankComm {
  std::unique_ptr<dist::Store> store;
  std::unique_ptr<dist::Communicator> comm;
};
inline RankComm rank_comm(const RankArgs& a, int r) {
  dist::Topology topo;
  topo.rank = r, topo.world = a.ranks, topo.local_rank = r, topo.local_world = a.ranks;
  topo.master_port = a.port, topo.launcher = "bench";
  const auto timeout = std::chrono::milliseconds(1800 * 1000);
  RankComm rc;
  rc.store = dist::connect_store(topo, timeout);
  rc.comm = dist::make_gloo_communicator(*rc.store, r, a.ranks, timeout);
  return rc;
}

// 64 random rows of `seq` tokens, every token trained.
inline std::vector<Example> random_rows(int64_t seq, int64_t vocab) {
  std::vector<Example> rows;
  for (int i = 0; i < 64; ++i) {
    const Batch rb = random_batch(1, seq, vocab, 100 + static_cast<uint64_t>(i));
    rows.push_back({rb.ids, rb.ids});
  }
  return rows;
}

}  // namespace ftune::bench
