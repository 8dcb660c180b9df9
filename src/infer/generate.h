// Generation: each prompt fed through the decoder, then tokens chosen one at a time until EOS,
// a stop string, or max_new_tokens; the text streamed as it grows.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "infer/cpu_decoder.h"
#include "infer/sampler.h"
#include "tokenizer/tokenizer.h"

namespace ftune {

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  SamplingOptions sampling;
  std::vector<int32_t> eos_ids;       // stop after generating one of these (kept out of the text)
  std::vector<std::string> stop;      // stop when the text contains one (the text ends before it)
};

struct Generation {
  std::vector<int32_t> tokens;  // generated ids (an EOS that ended it included)
  std::string text;             // their text, up to a stop string
  std::string finish_reason;    // "eos", "stop" or "length"
};

// `tok` may be null (token ids only). `stream(row, piece)`, when given, receives each row's text as
// it grows (rows interleaved, one token at a time).
std::vector<Generation> generate(CpuDecoder& dec, const Tokenizer* tok, const std::vector<std::vector<int32_t>>& prompts,
                                 const GenerateOptions& o,
                                 const std::function<void(int64_t, const std::string&)>& stream = {});

}  // namespace ftune
