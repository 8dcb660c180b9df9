// Generation: each prompt fed through the decoder, then tokens chosen one at a time until EOS,
// a stop string, or max_new_tokens; the text streamed as it grows.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "infer/decoder.h"
#include "infer/sampler.h"
#include "tokenizer/tokenizer.h"

namespace ftune {

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  SamplingOptions sampling;
  std::vector<int32_t> eos_ids;       // stop after generating one of these (kept out of the text)
  std::vector<std::string> stop;      // stop when the text contains one (the text ends before it)
  // The tokens the text continues (a server's prompt): the text is what the generated tokens add
  // to theirs, so that it starts as in context (SentencePiece's word-start space kept). Empty: the
  // generated tokens decoded alone.
  std::vector<int32_t> context;
};

struct Generation {
  std::vector<int32_t> tokens;  // generated ids (an EOS that ended it included)
  std::string text;             // their text, up to a stop string
  std::string finish_reason;    // "eos", "stop" or "length"
};

// Appends the chosen token `t` to `g` and returns true when the generation is over: `t` is an EOS
// (kept out of the text), the text now holds a stop string (cut before it), or max_new_tokens are
// there. `tok` may be null (no text, no stop strings).
bool extend(Generation& g, int32_t t, const Tokenizer* tok, const GenerateOptions& o);

struct BatchOptions {
  const LoraParams* adapter = nullptr;  // applied unmerged to every row (nullptr: the base alone)
  int64_t prefill_tokens = 2048;        // prompt tokens fed per forward (every prompt's, in order)
};

// Every prompt decoded together: the prompts fed in forwards of up to prefill_tokens rows, then
// one forward per step with one row per unfinished prompt. `tok` may be null (token ids only).
// `stream(row, piece)`, when given, receives each row's text as it grows (rows interleaved, one
// token at a time). Row r samples from its own stream (seed, r), so a row's tokens do not depend
// on the others'.
std::vector<Generation> generate(Decoder& dec, const Tokenizer* tok, const std::vector<std::vector<int32_t>>& prompts,
                                 const GenerateOptions& o,
                                 const std::function<void(int64_t, const std::string&)>& stream = {},
                                 const BatchOptions& batch = {});

}  // namespace ftune
