// The serving engine: sequences of the base and of two adapters run as one batch per step give
// each what the decoder gives it alone (tokens and log-probabilities), and adapters beyond the
// memory limit are read back when asked for; a prompt fed as one batch of rows gives the logits of
// the same prompt fed a token at a time.
#include "model/llama.h"
#include "serve_util.h"

namespace ftune {
namespace {

using namespace testing;

TEST(ServingEngine, AdaptersBatchedTogetherGiveWhatEachGivesAlone) {
  TempDir tmp("serve-adapters");
  const fs::path dir = kFixtures / "gqa_tied", model = dir / "model";
  const std::string a = (dir / "adapter").string(), b = tmp / "b";
  write_random_adapter(model, dir / "adapter", b, 21);
  LiveServer srv(model, {{"a", a}, {"b", b}});
  Rng rng(3);
  const std::vector<std::vector<int32_t>> prompts = {random_ids(rng, 5, 256), random_ids(rng, 11, 256)};
  GenerateOptions o;
  o.max_new_tokens = 10;
  o.eos_ids.clear();
  // One engine call, three models, two prompts each: every step runs them as one batch.
  std::vector<SequenceRequest> seqs;
  const std::vector<std::string> names = {"", "a", "b"};
  for (const auto& n : names)
    for (size_t p = 0; p < prompts.size(); ++p) {
      SequenceRequest s;
      s.prompt = prompts[p], s.adapter = n, s.gen = o, s.stream = p, s.top_logprobs = 2;
      seqs.push_back(s);
    }
  const EngineStats before = srv.engine().stats();
  const auto results = srv.engine().run(seqs);
  EXPECT_GE(srv.engine().stats().mixed_steps - before.mixed_steps, o.max_new_tokens);  // adapters shared each step
  std::vector<std::vector<int32_t>> outputs;
  for (size_t m = 0; m < names.size(); ++m) {
    const std::string adir = m == 0 ? "" : (m == 1 ? a : b);
    const auto alone = solo(model, adir, prompts, o, nullptr);
    for (size_t p = 0; p < prompts.size(); ++p) {
      const SequenceResult& r = results[m * prompts.size() + p];
      EXPECT_EQ(r.gen.tokens, alone[p].tokens) << "model '" << names[m] << "' prompt " << p;
      ASSERT_EQ(r.logprobs.size(), r.gen.tokens.size());
      const auto want_lp = solo_logprobs(model, adir, prompts[p], r.gen.tokens);
      for (size_t k = 0; k < r.logprobs.size(); ++k) {
        const TokenLogprob& lp = r.logprobs[k];
        EXPECT_NEAR(lp.logprob, want_lp[k], kSelfTol) << names[m] << " " << p << " " << k;
        ASSERT_EQ(lp.top.size(), 2u);
        EXPECT_GE(lp.top[0].second, lp.top[1].second);
        EXPECT_EQ(lp.logprob, lp.top[0].second);  // greedy: exactly the best entry, as lm-eval compares
      }
      outputs.push_back(r.gen.tokens);
    }
  }
  EXPECT_NE(outputs[2], outputs[4]);  // the two adapters answer differently
  EXPECT_NE(outputs[3], outputs[5]);
  // Over HTTP, requests for both adapters at once (threads): each gets what it gets alone.
  std::vector<json> got(4);
  std::vector<std::thread> clients;
  for (size_t i = 0; i < got.size(); ++i)
    clients.emplace_back([&, i] {
      got[i] = srv.post("/v1/completions", {{"model", i % 2 ? "b" : "a"},
                                            {"prompt", prompts[i / 2]},
                                            {"max_tokens", 10},
                                            {"temperature", 0},
                                            {"logprobs", 0},
                                            {"echo", true}})
                   .second;
    });
  for (auto& t : clients) t.join();
  for (size_t i = 0; i < got.size(); ++i) {
    const json& toks = got[i]["choices"][0]["logprobs"]["tokens"];
    std::vector<int32_t> ids;
    for (size_t k = prompts[i / 2].size(); k < toks.size(); ++k)
      ids.push_back(std::stoi(toks[k].get<std::string>().substr(9)));
    EXPECT_EQ(ids, outputs[(i % 2 ? 4 : 2) + i / 2]) << i;
  }
}

TEST(ServingEngine, AdaptersBeyondTheMemoryLimitAreReadWhenAskedFor) {
  TempDir tmp("serve-limit");
  const fs::path dir = kFixtures / "gqa_tied", model = dir / "model";
  const std::string a = (dir / "adapter").string(), b = tmp / "b";
  write_random_adapter(model, dir / "adapter", b, 5);
  EngineOptions one;
  one.max_adapters = 1;
  LiveServer srv(model, {{"a", a}, {"b", b}}, one);
  EXPECT_EQ(srv.engine().stats().adapter_loads, 2);  // both checked at start; only one kept
  const std::vector<int32_t> prompt = {7, 9, 30, 41, 2};
  GenerateOptions o;
  o.max_new_tokens = 6;
  const auto want_a = solo(model, a, {prompt}, o, nullptr)[0].tokens,
             want_b = solo(model, b, {prompt}, o, nullptr)[0].tokens;
  for (const char* name : {"a", "b", "a", "b"}) {
    const json j = srv.complete({{"model", name},
                                 {"prompt", prompt},
                                 {"max_tokens", 6},
                                 {"temperature", 0},
                                 {"logprobs", 0},
                                 {"stop_token_ids", json::array()},
                                 {"ignore_eos", true}});
    std::vector<int32_t> ids;
    for (const json& t : j["choices"][0]["logprobs"]["tokens"])
      ids.push_back(std::stoi(t.get<std::string>().substr(9)));
    EXPECT_EQ(ids, std::string(name) == "a" ? want_a : want_b) << name;
    const auto want_lp = solo_logprobs(model, std::string(name) == "a" ? a : b, prompt, ids);
    for (size_t k = 0; k < ids.size(); ++k)
      EXPECT_NEAR(j["choices"][0]["logprobs"]["token_logprobs"][k].get<double>(), want_lp[k], kSelfTol) << name << k;
  }
  EXPECT_GE(srv.engine().stats().adapter_loads, 5);  // each switch read the other back
}

// The decoder's batch: one prompt's rows fed at once beside another sequence's rows under an
// adapter (unmerged), then one decoding row each, give the logits of each sequence fed a token at
// a time with the adapter merged in; a refused batch leaves the caches as they were.
TEST(BatchDecoder, RowsOfSeveralSequencesAndAdaptersGiveEachOnesLogits) {
  const fs::path dir = kFixtures / "gqa_tied";
  const LlamaConfig cfg = load_llama_config((dir / "model").string());
  const LlamaWeights w = load_llama_weights(cfg, CheckpointReader((dir / "model").string()));
  const LoraParams lora = load_peft_adapter((dir / "adapter").string(), cfg);
  LlamaWeights merged = w;
  merge_adapter(merged, lora);
  Rng rng(9);
  const auto p1 = random_ids(rng, 7, cfg.vocab_size), p2 = random_ids(rng, 5, cfg.vocab_size);
  BatchDecoder dec(cfg, w);
  CpuKvCache c1(cfg, 16), c2(cfg, 16);
  std::vector<DecodeRow> rows;
  for (int32_t t : p1) rows.push_back({&c1, t, nullptr, true});
  for (size_t i = 0; i < p2.size(); ++i) rows.push_back({&c2, p2[i], &lora, i + 1 == p2.size()});
  const std::vector<float> got = dec.forward(rows);
  const int64_t V = cfg.vocab_size;
  ASSERT_EQ(got.size(), static_cast<size_t>((p1.size() + 1) * V));
  CpuDecoder base(cfg, w, 1, 16), tuned(cfg, merged, 1, 16);
  std::vector<float> want;
  for (int32_t t : p1) {
    const auto& l = base.step(0, t);
    want.insert(want.end(), l.begin(), l.end());
  }
  for (int32_t t : p2) tuned.step(0, t);
  const auto& last = tuned.step(0, 3);  // the decoding row below feeds 3 after p2
  // fp32 both; batched GEMMs against one row, LoRA unmerged against merged: 1e-5 relative.
  EXPECT_LT(rel_err(std::vector<float>(got.begin(), got.begin() + p1.size() * V), want), 1e-5);
  const std::vector<float> tail = {got.end() - V, got.end()};
  std::vector<float> want_tail(V);
  {
    CpuDecoder again(cfg, merged, 1, 16);
    for (int32_t t : p2) want_tail = again.step(0, t);
  }
  EXPECT_LT(rel_err(tail, want_tail), 1e-5);
  EXPECT_EQ(c1.length(), 7);
  EXPECT_EQ(c2.length(), 5);
  const std::vector<float> next = dec.forward({{&c1, 11, nullptr, true}, {&c2, 3, &lora, true}});
  EXPECT_LT(rel_err(std::vector<float>(next.begin(), next.begin() + V), base.step(0, 11)), 1e-5);
  EXPECT_LT(rel_err(std::vector<float>(next.begin() + V, next.end()), last), 1e-5);
  EXPECT_THROW(dec.forward({{&c1, 5, nullptr, true}, {&c2, static_cast<int32_t>(V), nullptr, true}}), Error);
  EXPECT_EQ(c1.length(), 8);  // the refused batch wrote nothing
  EXPECT_EQ(c2.length(), 6);
}

}  // namespace
}  // namespace ftune
