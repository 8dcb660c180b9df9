// The generation loop.
#include "infer/generate.h"

#include <algorithm>

#include "core/error.h"
#include "core/rng.h"

namespace ftune {

bool extend(Generation& g, int32_t t, const Tokenizer* tok, const GenerateOptions& o) {
  g.tokens.push_back(t);
  if (std::find(o.eos_ids.begin(), o.eos_ids.end(), t) != o.eos_ids.end()) {
    g.finish_reason = "eos";
    return true;
  }
  if (tok) {
    std::string text;
    if (!o.context.empty()) {
      std::vector<int32_t> all = o.context;
      all.insert(all.end(), g.tokens.begin(), g.tokens.end());
      const std::string before = tok->decode(o.context), after = tok->decode(all);
      text = after.starts_with(before) ? after.substr(before.size()) : tok->decode(g.tokens);
    } else {
      text = tok->decode(g.tokens);
    }
    for (const std::string& s : o.stop)
      if (const size_t at = text.find(s); !s.empty() && at != std::string::npos) {
        text.resize(at), g.finish_reason = "stop";
      }
    g.text = std::move(text);
    if (g.finish_reason == "stop") return true;
  }
  if (static_cast<int64_t>(g.tokens.size()) >= o.max_new_tokens) {
    g.finish_reason = "length";
    return true;
  }
  return false;
}

std::vector<Generation> generate(Decoder& dec, const Tokenizer* tok, const std::vector<std::vector<int32_t>>& prompts,
                                 const GenerateOptions& o,
                                 const std::function<void(int64_t, const std::string&)>& stream,
                                 const BatchOptions& batch) {
  const int64_t rows = static_cast<int64_t>(prompts.size());
  if (batch.prefill_tokens < 1) fail("generation: prefill_tokens must be at least 1, got {}", batch.prefill_tokens);
  std::vector<Generation> out(static_cast<size_t>(rows));
  const size_t V = static_cast<size_t>(dec.vocab_size());
  std::vector<std::vector<float>> next(static_cast<size_t>(rows));
  std::vector<std::unique_ptr<KvCache>> caches;
  std::vector<Rng> rngs;
  for (int64_t r = 0; r < rows; ++r) {
    if (prompts[r].empty()) fail("generation: prompt {} is empty (it needs at least one token, e.g. BOS)", r);
    caches.push_back(dec.new_cache(static_cast<int64_t>(prompts[r].size()) + std::max<int64_t>(o.max_new_tokens, 1)));
    rngs.emplace_back(o.sampling.seed, static_cast<uint64_t>(r));
  }
  // The prompts, prefill_tokens rows a forward; the logits of each prompt's last token kept.
  std::vector<DecodeRow> feed;
  std::vector<int64_t> owner;  // the prompt of each row that wants logits
  auto run = [&] {
    const std::vector<float>& logits = dec.forward(feed);
    for (size_t j = 0; j < owner.size(); ++j) next[owner[j]].assign(logits.begin() + j * V, logits.begin() + (j + 1) * V);
    feed.clear(), owner.clear();
  };
  for (int64_t r = 0; r < rows; ++r)
    for (size_t i = 0; i < prompts[r].size(); ++i) {
      const bool last = i + 1 == prompts[r].size();
      feed.push_back({caches[r].get(), prompts[r][i], batch.adapter, last});
      if (last) owner.push_back(r);
      if (static_cast<int64_t>(feed.size()) == batch.prefill_tokens) run();
    }
  if (!feed.empty()) run();
  std::vector<bool> done(static_cast<size_t>(rows), o.max_new_tokens <= 0);
  std::vector<size_t> streamed(static_cast<size_t>(rows), 0);  // bytes of each row's text streamed
  for (int64_t r = 0; r < rows; ++r)
    if (done[r]) out[r].finish_reason = "length";
  for (int64_t i = 0; i < o.max_new_tokens; ++i) {
    for (int64_t r = 0; r < rows; ++r) {
      if (done[r]) continue;
      Generation& g = out[r];
      const int32_t t = sample_token(next[r], o.sampling, rngs[r]);
      done[r] = extend(g, t, tok, o);
      if (tok && stream) {  // only what is final: a trailing partial character or a stop string's prefix waits
        size_t stable = g.text.size();
        if (!done[r]) {
          if (stable >= 3 && g.text.compare(stable - 3, 3, "\xEF\xBF\xBD") == 0) stable -= 3;
          for (const std::string& s : o.stop)
            for (size_t k = s.empty() ? 0 : std::min(s.size() - 1, stable); k > 0; --k)
              if (g.text.compare(stable - k, k, s, 0, k) == 0) {
                stable -= k;
                break;
              }
        }
        if (stable > streamed[r]) stream(r, g.text.substr(streamed[r], stable - streamed[r])), streamed[r] = stable;
      }
      if (done[r]) continue;
      feed.push_back({caches[r].get(), t, batch.adapter, true});
      owner.push_back(r);
    }
    if (feed.empty()) break;
    run();
  }
  if (stream)  // the rows' held-back tails, now final
    for (int64_t r = 0; r < rows; ++r)
      if (out[r].text.size() > streamed[r]) stream(r, out[r].text.substr(streamed[r]));
  return out;
}

}  // namespace ftune
