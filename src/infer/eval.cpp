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
                                          const std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>>& pairs) {
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
    for (size_t k = 0; k < cont.size(); ++k) {
      const float* row = logits.ptr() + static_cast<int64_t>(ctx.size() + k - 1) * V;  // predicts token ctx+k
      const float mx = *std::max_element(row, row + V);
      double s = 0.0;
      for (int64_t v = 0; v < V; ++v) s += std::exp(static_cast<double>(row[v]) - mx);
      ll.logprob += static_cast<double>(row[cont[k]]) - mx - std::log(s);
      if (std::max_element(row, row + V) - row != cont[k]) ll.greedy = false;
    }
    out.push_back(ll);
  }
  return out;
}

ChoiceResult score_choices(const LlamaConfig& cfg, const LlamaWeights& w, const LoraParams* lora, const Tokenizer& tok,
                           const std::vector<ChoiceItem>& items) {
  std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>> pairs;
  for (const ChoiceItem& it : items)
    for (const std::string& c : it.choices) pairs.push_back(encode_pair(tok, it.context, c));
  const std::vector<Loglikelihood> lls = loglikelihoods(cfg, w, lora, pairs);
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
