// Training examples from any dataset the row sources read (JSONL, Parquet, text), in any of the
// formats (text, alpaca, messages, prompt/completion, input_ids), rendered through a template,
// tokenized, loss-masked, truncated or dropped at max_seq_len, and split into train/validation.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/data_settings.h"

namespace ftune {

class Tokenizer;

struct Example {
  std::vector<int32_t> ids;     // [len]
  std::vector<int32_t> labels;  // [len]; -100 = ignored; labels[i] is the label *of* token i (HF convention: the loss shifts)
};

struct DatasetStats {
  int64_t rows = 0;        // rows read
  int64_t kept = 0;
  int64_t truncated = 0;   // longer than max_seq_len, cut
  int64_t dropped = 0;     // longer than max_seq_len, dropped
  int64_t skipped = 0;     // nothing to learn: fewer than 2 tokens, or every target label -100
  int64_t answer_cut = 0;  // of the skipped: truncation at max_seq_len removed every trained token
  int64_t shortest_cut_prompt = 0;  // the shortest untrained prefix among those, in tokens
  int64_t bad = 0;         // malformed rows skipped (data.strict = false)
  int64_t tokens = 0;      // tokens kept
  int64_t trained_tokens = 0;  // of which carry a label
  std::vector<std::string> problems;  // the first few malformed rows: "file:row: reason"
  std::string summary() const;        // one line for the log
};

// The template data.template resolves to for this model ("auto": tokenizer_config.json's chat
// template if ftune knows it, else alpaca).
std::string resolve_template(const DataSettings& cfg, const std::string& model_dir);

// Examples of the dataset at `path`. Malformed rows are skipped, counted and the first few kept in
// stats->problems, or, with cfg.strict, the first one fails naming the file and row. An empty
// result (no rows, or none left) is an error naming the path. `tokenizer` may be null when all
// rows carry input_ids.
std::vector<Example> load_examples(const std::string& path, const DataSettings& cfg, const Tokenizer* tokenizer,
                                   int64_t vocab_size, const std::string& template_name, DatasetStats* stats);

struct DataSplit {
  std::vector<Example> train, val;
  DatasetStats train_stats, val_stats;
  std::string template_name;
};

// data.train, and data.val or a data.val_fraction split of data.train (deterministic from `seed`).
DataSplit load_data(const DataSettings& cfg, const Tokenizer* tokenizer, int64_t vocab_size,
                    const std::string& model_dir, uint64_t seed);

}  // namespace ftune
