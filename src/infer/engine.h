// The serving engine of `ftune serve`: one base model in memory, LoRA adapters by name (kept in
// memory up to a limit, the others read back when a request asks for them), and one worker thread
// that runs every sequence in flight as one batch per step (continuous batching): a sequence joins
// at the next step, its prompt is fed in chunks, then one token per step until it ends. Sequences
// of different adapters share each step's base GEMMs (a Decoder: the CPU's or the GPU's).
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "infer/cpu_decoder.h"
#include "infer/generate.h"
#include "model/llama_config.h"
#include "model/lora.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace ftune {

// Makes the engine's decoder over its base weights (which outlive it); empty: the CPU's
// BatchDecoder.
using DecoderFactory = std::function<std::unique_ptr<Decoder>(const LlamaConfig&, const LlamaWeights&)>;

struct AdapterSource {
  std::string name, dir;
};

struct EngineOptions {
  int64_t max_adapters = 0;        // adapters held in memory at once (0: every one)
  int64_t max_batch_tokens = 512;  // prompt tokens fed per step, beside one token per decoding sequence
  int64_t max_sequences = 64;      // sequences in flight; more wait their turn
};

struct SequenceRequest {
  std::vector<int32_t> prompt;
  std::string adapter;           // "": the base alone
  GenerateOptions gen;           // max_new_tokens, sampling, EOS ids, stop strings
  uint64_t stream = 0;           // the sampler's stream: the prompt's index, as generate() numbers its rows
  bool prompt_logprobs = false;  // the log-probability of every prompt token after the first
  int64_t top_logprobs = -1;     // -1: no log-probabilities; k >= 0: each token's, and the k most likely
};

struct TokenLogprob {
  double logprob = 0;                           // log-softmax of the model's logits (before temperature)
  std::vector<std::pair<int32_t, double>> top;  // the most likely tokens, best first (lowest id among equals)
};

struct SequenceResult {
  Generation gen;
  std::vector<TokenLogprob> prompt_logprobs;  // for prompt tokens 1.. (the first has no context)
  std::vector<TokenLogprob> logprobs;         // one per generated token
};

struct EngineStats {
  int64_t steps = 0;          // forward passes
  int64_t rows = 0;           // tokens through them
  int64_t mixed_steps = 0;    // passes that served more than one model (the base and adapters)
  int64_t adapter_loads = 0;  // adapters read from disk, at start included
};

// log-softmax of `logits` at `token`, and the k most likely tokens (k may be 0). The same sum gives
// both, so a token that is the most likely has exactly its top entry's value.
TokenLogprob token_logprob(std::span<const float> logits, int32_t token, int64_t k, std::vector<int32_t>& scratch);

class ServingEngine {
 public:
  // Every adapter is read here and checked against the base (errors name its directory); beyond
  // max_adapters they are dropped again and read back when asked for. `tok` (may be null) must
  // outlive the engine.
  ServingEngine(const LlamaConfig& cfg, LlamaWeights base, const std::vector<AdapterSource>& adapters,
                const Tokenizer* tok, const EngineOptions& o, const DecoderFactory& make_decoder = {});
  ~ServingEngine();  // ends the worker; sequences still waiting fail
  ServingEngine(const ServingEngine&) = delete;
  ServingEngine& operator=(const ServingEngine&) = delete;

  const LlamaConfig& config() const { return cfg_; }
  bool has_adapter(const std::string& name) const { return slots_.count(name) > 0; }
  const std::vector<AdapterSource>& adapters() const { return order_; }
  // Runs the sequences together with whatever else is in flight and waits for them. Throws
  // ftune::Error for an empty prompt, a token outside the vocabulary or an unknown adapter (before
  // anything runs), and what the worker met while running them.
  std::vector<SequenceResult> run(std::vector<SequenceRequest> seqs);
  EngineStats stats() const;

 private:
  struct Job;
  struct Live;
  struct Slot {
    std::string dir;
    std::shared_ptr<const LoraParams> lora;  // null while not in memory
    uint64_t last_use = 0;
  };
  void work();
  void admit();
  void step();
  // The adapter of `name` in memory, read (after dropping the least recently used one that no
  // sequence holds) when absent; false when every slot is held.
  bool acquire(const std::string& name, std::shared_ptr<const LoraParams>& out);
  void choose(Live& s, std::span<const float> logits);
  static void fail_job(Job& job, std::exception_ptr e);

  const LlamaConfig cfg_;
  const LlamaWeights base_;
  const Tokenizer* tok_;
  const EngineOptions opt_;
  std::vector<AdapterSource> order_;
  std::map<std::string, Slot> slots_;  // keys fixed at construction; the slots' contents are the worker's
  // The worker's own state.
  std::unique_ptr<Decoder> dec_;
  std::vector<std::unique_ptr<Live>> live_;
  std::vector<DecodeRow> rows_;
  std::vector<int32_t> scratch_;
  uint64_t clock_ = 0;
  // Shared with the callers of run().
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<std::shared_ptr<Job>, size_t>> pending_;
  bool stop_ = false;
  EngineStats stats_;
  std::thread worker_;  // last: starts once everything above exists
};

}  // namespace ftune
