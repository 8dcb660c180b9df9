// Data pipeline throughput: files (Parquet/JSONL/text) -> rows -> format/template -> tokens ->
// packed micro-batches, in MB/s of input files and tokens/s. Prints one JSON line.
//   bench_data_pipeline DATA_PATH TOKENIZER_DIR [MAX_SEQ_LEN]
#include <fmt/format.h>

#include <chrono>
#include <filesystem>

#include "core/error.h"
#include "data/batcher.h"
#include "data/dataset.h"
#include "data/row_source.h"
#include "tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  using namespace ftune;
  if (argc < 3) {
    fmt::print(stderr, "usage: bench_data_pipeline DATA_PATH TOKENIZER_DIR [MAX_SEQ_LEN]\n");
    return 2;
  }
  try {
    const auto tok = load_tokenizer(argv[2]);
    DataSettings cfg;
    cfg.max_seq_len = argc > 3 ? std::atoll(argv[3]) : 2048;
    cfg.packing = true;
    uint64_t bytes = 0;
    for (const auto& f : dataset_files(argv[1])) bytes += std::filesystem::file_size(f);
    const auto t0 = std::chrono::steady_clock::now();
    DatasetStats st;
    const auto ex = load_examples(argv[1], cfg, tok.get(), tok->vocab_size(), "alpaca", &st);
    const auto t1 = std::chrono::steady_clock::now();
    MicroBatcher b(ex, 8, true, 1, 0, cfg.max_seq_len);
    int64_t batches = 0, tokens = 0;
    do {
      tokens += b.next().tokens;
      ++batches;
    } while (b.state().cursor < ex.size());
    const auto t2 = std::chrono::steady_clock::now();
    const double load_s = std::chrono::duration<double>(t1 - t0).count();
    const double total_s = std::chrono::duration<double>(t2 - t0).count();
    fmt::print("{{\"bench\": \"data_pipeline\", \"path\": \"{}\", \"file_mb\": {:.1f}, \"rows\": {}, \"tokens\": {}, "
               "\"batches\": {}, \"load_s\": {:.3f}, \"total_s\": {:.3f}, \"mb_per_s\": {:.2f}, \"tokens_per_s\": {:.0f}}}\n",
               argv[1], static_cast<double>(bytes) / 1e6, st.rows, tokens, batches, load_s, total_s,
               static_cast<double>(bytes) / total_s / 1e6, static_cast<double>(tokens) / total_s);
  } catch (const Error& e) {
    fmt::print(stderr, "bench_data_pipeline: {}\n", e.what());
    return 1;
  }
  return 0;
}
