// A recipe's data as training and `ftune data preview` both see it, through this one function so
// the two can never disagree: the model's tokenizer, loaded whenever the row format may need one,
// and the examples of data.train and the validation set.
#pragma once
#include <memory>

#include "data/dataset.h"
#include "model/llama_config.h"
#include "tokenizer/tokenizer.h"
#include "recipe/train_config.h"

namespace ftune {

struct RunData {
  std::unique_ptr<Tokenizer> tokenizer;  // null for data.format input_ids (and auto without tokenizer files)
  DataSplit split;
};

// data.format input_ids needs no tokenizer; text, alpaca, messages and prompt_completion need the
// model's (an error naming the model directory when it has none); auto loads it when the model has
// one, and a row that then needs it is named.
RunData load_run_data(const TrainConfig& cfg, const LlamaConfig& mcfg);

}  // namespace ftune
