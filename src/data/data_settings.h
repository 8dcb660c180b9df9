// What the data.* keys of a recipe say: where the rows are, how they become examples (format,
// template, loss mask, length policy, packing) and what is held out for validation.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ftune {

struct DataSettings {
  std::string train;           // .jsonl / .json / .parquet / .txt file, or a directory of them
  std::string format = "auto"; // auto, text, alpaca, messages, prompt_completion, input_ids
  std::string text_field = "text";
  std::vector<std::string> columns;       // renames "canonical=column"
  std::string template_name = "auto";     // auto, llama2, llama3, llama3.1, mistral, chatml, alpaca, custom
  std::string custom_template;
  std::string train_on = "completion";    // completion or all
  std::string text_sample_by = "document";
  std::string val;                        // validation data path
  double val_fraction = 0.0;
  bool strict = false;                    // fail on the first malformed row
  int64_t max_seq_len = 512;
  std::string overflow = "truncate";  // "truncate" or "drop" for rows longer than max_seq_len
  bool add_bos = true;
  bool add_eos = true;
  bool packing = false;  // several examples per row, no attention across them
  int64_t pad_to_multiple_of = 8;  // row length rounded up to this
};

}  // namespace ftune
