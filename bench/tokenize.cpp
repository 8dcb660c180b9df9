// Tokenizer throughput: MB/s and tokens/s of encode() over a JSONL corpus of {"text": ...}, on one
// thread and on N threads (lines split evenly). Prints one JSON line per configuration.
//   bench_tokenize TOKENIZER_DIR CORPUS.jsonl [THREADS...]
#include <fmt/format.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  using namespace ftune;
  if (argc < 3) {
    fmt::print(stderr, "usage: bench_tokenize TOKENIZER_DIR CORPUS.jsonl [THREADS...]\n");
    return 2;
  }
  try {
    const auto tok = load_tokenizer(argv[1]);
    std::vector<std::string> lines;
    size_t bytes = 0;
    std::ifstream in(argv[2]);
    for (std::string l; std::getline(in, l);) {
      if (l.empty()) continue;
      lines.push_back(nlohmann::json::parse(l).at("text").get<std::string>());
      bytes += lines.back().size();
    }
    std::vector<int> threads = {1};
    for (int i = 3; i < argc; ++i) threads.push_back(std::atoi(argv[i]));
    for (int t : threads) {
      // Repeat until at least 2 s have passed; the first pass also warms the word cache, as a
      // real dataset's repeated words would.
      int64_t tokens = 0, passes = 0;
      const auto t0 = std::chrono::steady_clock::now();
      double secs = 0;
      while (secs < 2.0) {
        std::vector<int64_t> counts(t, 0);
        std::vector<std::thread> pool;
        for (int w = 0; w < t; ++w)
          pool.emplace_back([&, w] {
            for (size_t i = w; i < lines.size(); i += t) counts[w] += static_cast<int64_t>(tok->encode(lines[i]).size());
          });
        for (auto& th : pool) th.join();
        for (int64_t c : counts) tokens += c;
        ++passes;
        secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      }
      fmt::print("{{\"bench\": \"tokenize\", \"tokenizer\": \"{}\", \"threads\": {}, \"mb_per_s\": {:.2f}, "
                 "\"tokens_per_s\": {:.0f}, \"passes\": {}}}\n",
                 argv[1], t, static_cast<double>(bytes * passes) / secs / 1e6, static_cast<double>(tokens) / secs,
                 passes);
    }
  } catch (const Error& e) {
    fmt::print(stderr, "bench_tokenize: {}\n", e.what());
    return 1;
  }
  return 0;
}
