// Training examples from a JSONL file: rows with `text` (tokenized by the model's tokenizer)
// or with `input_ids` (and optional `labels`, -100 = not trained on).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "train/train_config.h"

namespace ftune {

class Tokenizer;

struct Example {
  std::vector<int32_t> ids;     // [len]
  std::vector<int32_t> labels;  // [len]; -100 = ignored; labels[i] is the target *at* i (HF convention, shifted by the loss)
};

struct DatasetStats {
  int64_t rows = 0;        // lines read (non-blank)
  int64_t kept = 0;
  int64_t truncated = 0;   // longer than max_seq_len, cut
  int64_t dropped = 0;     // longer than max_seq_len, dropped
  int64_t skipped = 0;     // nothing to learn: fewer than 2 tokens, or every target label -100
  int64_t tokens = 0;      // tokens kept
};

// Loads every example. Errors (one line, ftune::Error) name the file and 1-based line: invalid
// JSON, a row that is not an object, a row without the needed field, a wrong type, ids out of
// the vocabulary [0, vocab_size), labels of a different length; an empty dataset (no rows, or
// none left after dropping) is an error too. `tokenizer` may be null when rows carry input_ids.
std::vector<Example> load_jsonl_dataset(const DataSettings& cfg, const Tokenizer* tokenizer,
                                        int64_t vocab_size, DatasetStats* stats);

}  // namespace ftune
