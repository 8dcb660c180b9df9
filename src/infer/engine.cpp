// The serving engine's worker: admission, one batched forward per step, and the choice of each
// sequence's next token.
#include "infer/engine.h"

#include <algorithm>
#include <cmath>
#include <future>
#include <numeric>

#include "core/error.h"
#include "core/rng.h"
#include "infer/sampler.h"
#include "io/peft_adapter.h"

namespace ftune {

struct ServingEngine::Job {
  std::vector<SequenceRequest> seqs;
  std::vector<SequenceResult> results;
  size_t left = 0;       // sequences not finished
  bool settled = false;  // the promise has its value or error
  std::promise<void> done;
};

struct ServingEngine::Live {
  std::shared_ptr<Job> job;
  const SequenceRequest* req;
  SequenceResult* res;
  std::shared_ptr<const LoraParams> adapter;
  std::unique_ptr<KvCache> cache;
  Rng rng;
  size_t fed = 0;     // prompt tokens in the cache
  int32_t next = -1;  // the chosen token to feed next, once the prompt is in
  int64_t take = 0;   // rows of this step
  bool finished = false;
};

TokenLogprob token_logprob(std::span<const float> logits, int32_t token, int64_t k, std::vector<int32_t>& scratch) {
  const int64_t V = static_cast<int64_t>(logits.size());
  const double mx = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float l : logits) sum += std::exp(static_cast<double>(l) - mx);
  const double lse = mx + std::log(sum);
  TokenLogprob out;
  out.logprob = static_cast<double>(logits[token]) - lse;
  k = std::min(k, V);
  if (k > 0) {
    scratch.resize(static_cast<size_t>(V));
    std::iota(scratch.begin(), scratch.end(), 0);
    std::partial_sort(scratch.begin(), scratch.begin() + k, scratch.end(),
                      [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
    for (int64_t i = 0; i < k; ++i) out.top.emplace_back(scratch[i], static_cast<double>(logits[scratch[i]]) - lse);
  }
  return out;
}

ServingEngine::ServingEngine(const LlamaConfig& cfg, LlamaWeights base, const std::vector<AdapterSource>& adapters,
                             const Tokenizer* tok, const EngineOptions& o, const DecoderFactory& make_decoder)
    : cfg_(cfg), base_(std::move(base)), tok_(tok), opt_(o), order_(adapters),
      dec_(make_decoder ? make_decoder(cfg_, base_) : std::make_unique<BatchDecoder>(cfg_, base_)) {
  if (opt_.max_batch_tokens < 1) fail("max_batch_tokens must be at least 1, got {}", opt_.max_batch_tokens);
  if (opt_.max_sequences < 1) fail("max_sequences must be at least 1, got {}", opt_.max_sequences);
  if (opt_.max_adapters < 0) fail("max_adapters must be >= 0, got {}", opt_.max_adapters);
  for (const AdapterSource& a : adapters) {
    Slot s{a.dir, nullptr, 0};
    try {
      s.lora = std::make_shared<const LoraParams>(load_peft_adapter(a.dir, cfg_));
    } catch (const Error& e) {
      fail("adapter '{}': {}", a.name, e.what());
    }
    ++stats_.adapter_loads;
    if (opt_.max_adapters > 0 && static_cast<int64_t>(slots_.size()) >= opt_.max_adapters) s.lora.reset();
    if (!slots_.emplace(a.name, std::move(s)).second) fail("adapter name '{}' is given twice", a.name);
  }
  worker_ = std::thread([this] { work(); });
}

ServingEngine::~ServingEngine() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  worker_.join();
  const auto gone = std::make_exception_ptr(Error("the server is shutting down"));
  for (auto& s : live_) fail_job(*s->job, gone);
  for (auto& [job, i] : pending_) fail_job(*job, gone);
}

EngineStats ServingEngine::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

void ServingEngine::fail_job(Job& job, std::exception_ptr e) {
  if (job.settled) return;
  job.settled = true;
  job.done.set_exception(e);
}

std::vector<SequenceResult> ServingEngine::run(std::vector<SequenceRequest> seqs) {
  if (seqs.empty()) return {};
  for (size_t i = 0; i < seqs.size(); ++i) {  // refused here, so that one bad prompt never fails a batch
    const SequenceRequest& s = seqs[i];
    if (s.prompt.empty()) fail("prompt {} is empty (it needs at least one token)", i);
    for (int32_t t : s.prompt)
      if (t < 0 || t >= cfg_.vocab_size)
        fail("prompt {}: token id {} is outside the vocabulary of {}", i, t, cfg_.vocab_size);
    if (!s.adapter.empty() && !has_adapter(s.adapter)) fail("no adapter named '{}'", s.adapter);
    if (s.gen.max_new_tokens < 0) fail("max_new_tokens must be >= 0, got {}", s.gen.max_new_tokens);
    const int64_t ctx = cfg_.max_position_embeddings, n = static_cast<int64_t>(s.prompt.size());
    if (s.gen.max_new_tokens > ctx - n)
      fail("prompt {}: {} tokens and max_new_tokens {} exceed the context of {} tokens", i, n, s.gen.max_new_tokens,
           ctx);
  }
  auto job = std::make_shared<Job>();
  job->seqs = std::move(seqs);
  job->results.resize(job->seqs.size());
  job->left = job->seqs.size();
  std::future<void> done = job->done.get_future();
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stop_) fail("the server is shutting down");
    for (size_t i = 0; i < job->seqs.size(); ++i) pending_.emplace_back(job, i);
  }
  cv_.notify_all();
  done.get();
  return std::move(job->results);
}

bool ServingEngine::acquire(const std::string& name, std::shared_ptr<const LoraParams>& out) {
  out.reset();
  if (name.empty()) return true;
  Slot& slot = slots_.at(name);
  slot.last_use = ++clock_;
  if (!slot.lora) {
    int64_t held = 0;
    Slot* victim = nullptr;
    for (auto& [n, s] : slots_) {
      if (!s.lora) continue;
      ++held;
      // Only the slot holds it (every other holder is a live sequence, all on this thread).
      if (s.lora.use_count() == 1 && (!victim || s.last_use < victim->last_use)) victim = &s;
    }
    if (opt_.max_adapters > 0 && held >= opt_.max_adapters) {
      if (!victim) return false;
      dec_->forget(victim->lora.get());
      victim->lora.reset();
    }
    slot.lora = std::make_shared<const LoraParams>(load_peft_adapter(slot.dir, cfg_));
    std::lock_guard<std::mutex> lk(mu_);
    ++stats_.adapter_loads;
  }
  out = slot.lora;
  return true;
}

void ServingEngine::admit() {
  for (;;) {
    std::pair<std::shared_ptr<Job>, size_t> next;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (pending_.empty() || static_cast<int64_t>(live_.size()) >= opt_.max_sequences) return;
      next = std::move(pending_.front());
      pending_.pop_front();
    }
    Job& job = *next.first;
    if (job.settled) continue;
    const SequenceRequest& req = job.seqs[next.second];
    try {  // an adapter that cannot be read, or a cache that does not fit, fails this request alone
      std::shared_ptr<const LoraParams> adapter;
      if (!acquire(req.adapter, adapter)) {  // every slot is busy: wait, first in line, for one to free
        std::lock_guard<std::mutex> lk(mu_);
        pending_.push_front(std::move(next));
        return;
      }
      const int64_t cap = static_cast<int64_t>(req.prompt.size()) + std::max<int64_t>(req.gen.max_new_tokens, 1);
      live_.push_back(std::unique_ptr<Live>(new Live{next.first, &req, &job.results[next.second], std::move(adapter),
                                                     dec_->new_cache(cap), Rng(req.gen.sampling.seed, req.stream)}));
    } catch (...) {
      fail_job(job, std::current_exception());
    }
  }
}

void ServingEngine::work() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || !pending_.empty() || !live_.empty(); });
      if (stop_) return;
    }
    admit();
    if (live_.empty()) continue;
    try {
      step();
    } catch (...) {  // a failed pass fails the sequences in it, never the worker
      const auto e = std::current_exception();
      for (auto& s : live_) fail_job(*s->job, e);
      live_.clear();
    }
  }
}

void ServingEngine::choose(Live& s, std::span<const float> logits) {
  const int32_t t = sample_token(logits, s.req->gen.sampling, s.rng);
  if (s.req->top_logprobs >= 0) s.res->logprobs.push_back(token_logprob(logits, t, s.req->top_logprobs, scratch_));
  if (extend(s.res->gen, t, tok_, s.req->gen))
    s.finished = true;
  else
    s.next = t;
}

void ServingEngine::step() {
  std::erase_if(live_, [](const std::unique_ptr<Live>& s) { return s->job->settled; });
  if (live_.empty()) return;
  // One run of rows per adapter: each adapter's LoRA is then one pair of GEMMs.
  std::stable_sort(live_.begin(), live_.end(),
                   [](const auto& a, const auto& b) { return a->adapter.get() < b->adapter.get(); });
  // Decoding sequences take one row each; prompts share what is left of the budget, in order.
  int64_t budget = opt_.max_batch_tokens;
  for (auto& s : live_)
    if (s->fed == s->req->prompt.size()) s->take = 1, --budget;
  for (auto& s : live_)
    if (s->fed < s->req->prompt.size()) {
      s->take = std::min<int64_t>(static_cast<int64_t>(s->req->prompt.size() - s->fed), std::max<int64_t>(budget, 0));
      budget -= s->take;
    }
  if (std::all_of(live_.begin(), live_.end(), [](const auto& s) { return s->take == 0; })) live_.front()->take = 1;
  rows_.clear();
  for (auto& s : live_) {
    const SequenceRequest& r = *s->req;
    const size_t P = r.prompt.size();
    if (s->fed == P) {
      rows_.push_back({s->cache.get(), s->next, s->adapter.get(), true});
      continue;
    }
    for (size_t i = s->fed; i < s->fed + static_cast<size_t>(s->take); ++i) {
      const bool want = (r.prompt_logprobs && i + 1 < P) || (i + 1 == P && r.gen.max_new_tokens > 0);
      rows_.push_back({s->cache.get(), r.prompt[i], s->adapter.get(), want});
    }
  }
  const std::vector<float>& logits = dec_->forward(rows_);
  const size_t V = static_cast<size_t>(cfg_.vocab_size);
  size_t at = 0;  // the next row of logits
  auto next_logits = [&] { return std::span<const float>(logits.data() + (at++) * V, V); };
  for (auto& s : live_) {
    const SequenceRequest& r = *s->req;
    const size_t P = r.prompt.size();
    if (s->fed == P) {
      choose(*s, next_logits());
      continue;
    }
    for (size_t i = s->fed; i < s->fed + static_cast<size_t>(s->take); ++i) {
      const bool logprob = r.prompt_logprobs && i + 1 < P, last = i + 1 == P && r.gen.max_new_tokens > 0;
      if (!logprob && !last) continue;
      const auto l = next_logits();
      if (logprob)
        s->res->prompt_logprobs.push_back(
            token_logprob(l, r.prompt[i + 1], std::max<int64_t>(r.top_logprobs, 0), scratch_));
      if (last) choose(*s, l);
    }
    s->fed += static_cast<size_t>(s->take);
    if (s->fed == P && r.gen.max_new_tokens == 0) s->res->gen.finish_reason = "length", s->finished = true;
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++stats_.steps;
    stats_.rows += static_cast<int64_t>(rows_.size());
    bool mixed = false;
    for (size_t i = 1; i < rows_.size(); ++i) mixed = mixed || rows_[i].adapter != rows_[0].adapter;
    stats_.mixed_steps += mixed ? 1 : 0;
  }
  for (auto& s : live_) {
    if (!s->finished) continue;
    Job& job = *s->job;
    if (--job.left == 0 && !job.settled) {
      job.settled = true;
      job.done.set_value();
    }
  }
  std::erase_if(live_, [](const std::unique_ptr<Live>& s) { return s->finished; });
}

}  // namespace ftune
