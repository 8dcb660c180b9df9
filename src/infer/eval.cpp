// Perplexity and multiple-choice scoring on the CPU model.
#include "infer/eval.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>

#include "core/error.h"
#include "model/batch.h"

namespace ftune {

double PerplexityResult::perplexity() const { return std::exp(loss()); }

PerplexityResult perplexity(const LlamaConfig& cfg, const LlamaWeights& w, const LoraParams* lora,
                            const std::vector<Example>& examples, int64_t batch) {
  FT_ASSERT(batch >= 1);
  PerplexityResult r;
  int64_t longest = 1;
  for (const Example& e : examples) longest = std::max<int64_t>(longest, static_cast<int64_t>(e.ids.size()));
  ModelOptions o;
  o.max_batch = batch, o.max_seq = longest;
  LlamaCpu model(cfg, w, lora, o);
  for (size_t i = 0; i < examples.size(); i += static_cast<size_t>(batch)) {
    std::vector<const std::vector<int32_t>*> ids, labels;
    for (size_t j = i; j < std::min(examples.size(), i + static_cast<size_t>(batch)); ++j)
      ids.push_back(&examples[j].ids), labels.push_back(&examples[j].labels);
    const auto res = model.loss(make_batch(ids, labels, 0));
    r.nll += res.loss_sum;
    r.tokens += res.count;
    r.examples += static_cast<int64_t>(ids.size());
  }
  return r;
}

namespace {

// log-softmax of `row` [V] at `target`, in double, and whether target is its (first) argmax.
void add_token(Loglikelihood& ll, const float* row, int64_t V, int32_t target) {
  const float mx = *std::max_element(row, row + V);
  double s = 0.0;
  for (int64_t v = 0; v < V; ++v) s += std::exp(static_cast<double>(row[v]) - mx);
  ll.logprob += static_cast<double>(row[target]) - mx - std::log(s);
  if (std::max_element(row, row + V) - row != target) ll.greedy = false;
}

// Feeds `ids` through `dec` in forwards of up to `chunk` rows (one fresh cache), asking for the
// logits of the positions `want(p)` selects; `take(p, row)` receives each, in position order.
template <typename Want, typename Take>
void feed(Decoder& dec, const LoraParams* lora, const std::vector<int32_t>& ids, int64_t chunk, Want want, Take take) {
  const int64_t n = static_cast<int64_t>(ids.size()), V = dec.vocab_size();
  auto cache = dec.new_cache(std::max<int64_t>(n, 1));
  std::vector<DecodeRow> rows;
  std::vector<int64_t> asked;
  for (int64_t b = 0; b < n; b += chunk) {
    rows.clear(), asked.clear();
    for (int64_t p = b; p < std::min(n, b + chunk); ++p) {
      const bool w = want(p);
      rows.push_back({cache.get(), ids[p], lora, w});
      if (w) asked.push_back(p);
    }
    const std::vector<float>& logits = dec.forward(rows);
    for (size_t j = 0; j < asked.size(); ++j) take(asked[j], logits.data() + static_cast<int64_t>(j) * V);
  }
}

}  // namespace

PerplexityResult perplexity(Decoder& dec, const LoraParams* lora, const std::vector<Example>& examples, int64_t chunk) {
  FT_ASSERT(chunk >= 1);
  PerplexityResult r;
  const int64_t V = dec.vocab_size();
  for (const Example& e : examples) {
    const int64_t n = static_cast<int64_t>(e.ids.size());
    // As the training loss: position p predicts labels[p + 1] (transformers' shift).
    auto target = [&](int64_t p) { return p + 1 < n ? e.labels[static_cast<size_t>(p + 1)] : -100; };
    feed(dec, lora, e.ids, chunk, [&](int64_t p) { return target(p) != -100; },
         [&](int64_t p, const float* row) {
           Loglikelihood ll{0.0, true};
           add_token(ll, row, V, target(p));
           r.nll -= ll.logprob;
           ++r.tokens;
         });
    ++r.examples;
  }
  return r;
}

std::vector<Loglikelihood> loglikelihoods(Decoder& dec, const LoraParams* lora, const TokenPairs& pairs) {
  std::vector<Loglikelihood> out;
  const int64_t V = dec.vocab_size();
  for (const auto& [ctx, cont] : pairs) {
    if (cont.empty()) fail("a continuation encodes to no tokens after its context");
    if (ctx.empty()) fail("a continuation needs a context of at least one token");
    std::vector<int32_t> ids = ctx;
    ids.insert(ids.end(), cont.begin(), cont.end() - 1);  // the last token is only predicted
    const int64_t c = static_cast<int64_t>(ctx.size());
    Loglikelihood ll{0.0, true};
    feed(dec, lora, ids, 2048, [&](int64_t p) { return p >= c - 1; },
         [&](int64_t p, const float* row) { add_token(ll, row, V, cont[static_cast<size_t>(p - (c - 1))]); });
    out.push_back(ll);
  }
  return out;
}

std::pair<std::vector<int32_t>, std::vector<int32_t>> encode_pair(const Tokenizer& tok, const std::string& context,
                                                                  const std::string& continuation) {
  std::string ctx = context, cont = continuation;
  const size_t kept = ctx.find_last_not_of(' ');
  const size_t spaces = kept == std::string::npos ? ctx.size() : ctx.size() - kept - 1;
  if (spaces > 0) cont = ctx.substr(ctx.size() - spaces) + cont, ctx.resize(ctx.size() - spaces);
  if (ctx.empty()) {
    const int32_t prefix = tok.bos_id() >= 0 ? tok.bos_id() : tok.eos_id();
    if (prefix < 0) fail("an empty context needs a BOS or EOS token, which this tokenizer lacks");
    return {{prefix}, tok.encode(cont)};
  }
  const std::vector<int32_t> whole = tok.encode(ctx + cont), c = tok.encode(ctx);
  const size_t at = std::min(c.size(), whole.size());
  return {c, std::vector<int32_t>(whole.begin() + static_cast<std::ptrdiff_t>(at), whole.end())};
}

std::vector<Loglikelihood> loglikelihoods(const LlamaConfig& cfg, const LlamaWeights& w, const LoraParams* lora,
                                          const TokenPairs& pairs) {
  int64_t longest = 1;
  for (const auto& [c, x] : pairs) longest = std::max<int64_t>(longest, static_cast<int64_t>(c.size() + x.size()));
  ModelOptions o;
  o.max_batch = 1, o.max_seq = longest;
  LlamaCpu model(cfg, w, lora, o);
  std::vector<Loglikelihood> out;
  for (const auto& [ctx, cont] : pairs) {
    if (cont.empty()) fail("a continuation encodes to no tokens after its context");
    std::vector<int32_t> ids = ctx;
    ids.insert(ids.end(), cont.begin(), cont.end());
    std::vector<int32_t> labels(ids.size(), -100);
    std::copy(cont.begin(), cont.end(), labels.begin() + static_cast<std::ptrdiff_t>(ctx.size()));
    const Batch b = make_batch({&ids}, {&labels}, 0);
    // Full logits: the sum of the continuation's log-probabilities and the greedy check from one pass.
    const Tensor logits = model.logits(b);
    const int64_t V = cfg.vocab_size;
    Loglikelihood ll{0.0, true};
    for (size_t k = 0; k < cont.size(); ++k)  // the row of position ctx+k-1 predicts token ctx+k
      add_token(ll, logits.ptr() + static_cast<int64_t>(ctx.size() + k - 1) * V, V, cont[k]);
    out.push_back(ll);
  }
  return out;
}

TokenPairs choice_pairs(const Tokenizer& tok, const std::vector<ChoiceItem>& items) {
  TokenPairs pairs;
  for (const ChoiceItem& it : items)
    for (const std::string& c : it.choices) pairs.push_back(encode_pair(tok, it.context, c));
  return pairs;
}

ChoiceResult score_choices(const std::vector<ChoiceItem>& items, const std::vector<Loglikelihood>& lls) {
  size_t total = 0;
  for (const ChoiceItem& it : items) total += it.choices.size();
  FT_ASSERT(lls.size() == total);
  ChoiceResult r;
  size_t at = 0;
  int64_t right = 0, right_norm = 0;
  for (const ChoiceItem& it : items) {
    int64_t best = 0, best_norm = 0;
    for (size_t k = 0; k < it.choices.size(); ++k) {
      const double s = lls[at + k].logprob, sn = s / static_cast<double>(std::max<size_t>(1, it.choices[k].size()));
      if (s > lls[at + best].logprob) best = static_cast<int64_t>(k);
      const double bn = lls[at + best_norm].logprob / static_cast<double>(std::max<size_t>(1, it.choices[best_norm].size()));
      if (sn > bn) best_norm = static_cast<int64_t>(k);
    }
    at += it.choices.size();
    r.picked.push_back(best), r.picked_norm.push_back(best_norm);
    right += best == it.gold, right_norm += best_norm == it.gold;
  }
  r.items = static_cast<int64_t>(items.size());
  if (r.items) r.acc = static_cast<double>(right) / r.items, r.acc_norm = static_cast<double>(right_norm) / r.items;
  return r;
}

std::vector<ChoiceItem> load_choice_items(const std::string& path) {
  std::ifstream f(path);
  if (!f) fail("{}: cannot open", path);
  std::vector<ChoiceItem> out;
  std::string line;
  for (int64_t row = 1; std::getline(f, line); ++row) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception& e) {
      fail("{}: row {}: not JSON ({})", path, row, e.what());
    }
    ChoiceItem it;
    if (!j.is_object() || !j.contains("context") || !j["context"].is_string())
      fail("{}: row {}: needs \"context\" (a string)", path, row);
    if (!j.contains("choices") || !j["choices"].is_array() || j["choices"].size() < 2)
      fail("{}: row {}: needs \"choices\" (a list of at least two strings)", path, row);
    if (!j.contains("gold") || !j["gold"].is_number_integer())
      fail("{}: row {}: needs \"gold\" (the index of the right choice)", path, row);
    it.context = j["context"].get<std::string>();
    for (const auto& c : j["choices"]) {
      if (!c.is_string()) fail("{}: row {}: every choice must be a string", path, row);
      if (c.get<std::string>().empty()) fail("{}: row {}: a choice is empty", path, row);
      it.choices.push_back(c.get<std::string>());
    }
    it.gold = j["gold"].get<int64_t>();
    if (it.gold < 0 || it.gold >= static_cast<int64_t>(it.choices.size()))
      fail("{}: row {}: gold {} is not the index of one of its {} choices", path, row, it.gold, it.choices.size());
    out.push_back(std::move(it));
  }
  if (out.empty()) fail("{}: no rows", path);
  return out;
}

}  // namespace ftune
