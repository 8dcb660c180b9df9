// Evaluation: perplexity over a dataset's trained tokens, and
// multiple-choice log-likelihood tasks scored as lm-evaluation-harness scores them (acc: the choice
// with the highest summed log-probability of its continuation; acc_norm: the same divided by the
// choice's length in characters).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "infer/decoder.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace ftune {

struct PerplexityResult {
  int64_t examples = 0;
  int64_t tokens = 0;   // trained tokens scored
  double nll = 0.0;     // their summed negative log-likelihood
  double loss() const { return tokens ? nll / static_cast<double>(tokens) : 0.0; }
  double perplexity() const;
};

// Every trained token of `examples` (labels != -100), in micro-batches of `batch` rows, through
// the CPU reference model (the training model's forward).
PerplexityResult perplexity(const LlamaConfig& cfg, const LlamaWeights& w, const LoraParams* lora,
                            const std::vector<Example>& examples, int64_t batch);
// The same through a decoder (the GPU's, `ftune eval --device gpu`): each example fed in forwards of
// up to `chunk` tokens, the logits of the positions that predict a trained token read as they come.
PerplexityResult perplexity(Decoder& dec, const LoraParams* lora, const std::vector<Example>& examples,
                            int64_t chunk = 2048);

// One question: a context and its choices, the gold index.
struct ChoiceItem {
  std::string context;
  std::vector<std::string> choices;
  int64_t gold = 0;
};

// Token ids of a (context, continuation) pair as lm-evaluation-harness makes them: trailing spaces
// of the context move to the continuation; the continuation is what encoding context + continuation
// adds after the context's own encoding; an empty context is the BOS (or EOS) token.
std::pair<std::vector<int32_t>, std::vector<int32_t>> encode_pair(const Tokenizer& tok, const std::string& context,
                                                                  const std::string& continuation);

// Summed log-probability of `continuation` after `context` (token ids), and whether every
// continuation token is the model's greedy choice.
struct Loglikelihood {
  double logprob = 0.0;
  bool greedy = false;
};
using TokenPairs = std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>>;
std::vector<Loglikelihood> loglikelihoods(const LlamaConfig& cfg, const LlamaWeights& w, const LoraParams* lora,
                                          const TokenPairs& pairs);
std::vector<Loglikelihood> loglikelihoods(Decoder& dec, const LoraParams* lora, const TokenPairs& pairs);

struct ChoiceResult {
  int64_t items = 0;
  double acc = 0.0, acc_norm = 0.0;  // fractions of the items
  std::vector<int64_t> picked, picked_norm;  // per item
};
// Each item's choices scored by their log-likelihoods (from either function above).
ChoiceResult score_choices(const std::vector<ChoiceItem>& items, const std::vector<Loglikelihood>& lls);
// The (context, choice) token pairs of the items, in order.
TokenPairs choice_pairs(const Tokenizer& tok, const std::vector<ChoiceItem>& items);

// JSONL rows {"context": text, "choices": [text, ...], "gold": index} (the names lm-evaluation-
// harness's multiple-choice tasks use); errors name the file and row.
std::vector<ChoiceItem> load_choice_items(const std::string& path);

}  // namespace ftune
