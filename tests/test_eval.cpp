// ftune eval's scoring against transformers: the summed log-probability of a continuation (and the
// greedy check) and a dataset's perplexity equal what transformers + peft's float64 logits give on
// every fixture model (fp32 bound 1e-5 per token, as test_hf_golden's); multiple-choice picks are
// the argmax of those sums (acc) and of the sums per character (acc_norm), as lm-evaluation-harness
// defines them; lm-evaluation-harness's context/continuation split; bad rows named.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "error_util.h"
#include "infer/cpu_decoder.h"
#include "infer/eval.h"
#include "io/checkpoint.h"
#include "io/peft_adapter.h"
#include "io/safetensors.h"
#include "model/presets.h"
#include "test_util.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;
const fs::path kFixtures = fs::path(FTUNE_SOURCE_DIR) / "tests/fixtures/hf";
constexpr double kTol = 1e-5;  // fp32 against float64, per token (test_hf_golden's bound)

using testing::log_softmax;

TEST(Eval, LoglikelihoodsAndPerplexityAreTransformers) {
  int cases = 0;
  for (const auto& e : fs::directory_iterator(kFixtures)) {
    if (!fs::exists(e.path() / "golden.safetensors")) continue;
    SCOPED_TRACE(e.path().filename().string());
    const std::string model = (e.path() / "model").string();
    const LlamaConfig cfg = load_llama_config(model);
    const LlamaWeights w = load_llama_weights(cfg, CheckpointReader(model));
    const LoraParams lora = load_peft_adapter((e.path() / "adapter").string(), cfg);
    const SafetensorsFile golden = SafetensorsFile::open((e.path() / "golden.safetensors").string());
    const auto ids = testing::i64_rows(golden, "input_ids");
    const Tensor ref = golden.read_f32("logits");  // transformers + peft, float64 -> f32, [B, T, V]
    const int64_t T = static_cast<int64_t>(ids[0].size()), V = cfg.vocab_size;
    Rng rng(static_cast<uint64_t>(cases) + 3);
    std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>> pairs;
    std::vector<double> want;
    std::vector<bool> want_greedy;
    std::vector<Example> rows;
    double want_nll = 0;
    for (size_t b = 0; b < ids.size(); ++b) {
      const int64_t ctx = 1 + static_cast<int64_t>(rng.below(static_cast<uint64_t>(T - 1)));
      pairs.emplace_back(std::vector<int32_t>(ids[b].begin(), ids[b].begin() + ctx),
                         std::vector<int32_t>(ids[b].begin() + ctx, ids[b].end()));
      double s = 0;
      bool g = true;
      for (int64_t i = 1; i < T; ++i) {
        const float* row = ref.ptr() + (static_cast<int64_t>(b) * T + i - 1) * V;
        const double lp = log_softmax(row, V, ids[b][i]);
        want_nll -= lp;
        if (i >= ctx) s += lp, g = g && std::max_element(row, row + V) - row == ids[b][i];
      }
      want.push_back(s), want_greedy.push_back(g);
      rows.push_back({ids[b], ids[b]});  // every token trained
    }
    // The training model's forward, and the decoder's (what `ftune eval --device gpu` runs, here the
    // CPU's, with the adapter unmerged and each sequence fed in forwards of 3 tokens).
    BatchDecoder dec(cfg, w);
    for (const bool decoder : {false, true}) {
      SCOPED_TRACE(decoder ? "decoder" : "training model");
      const std::vector<Loglikelihood> got = decoder ? loglikelihoods(dec, &lora, pairs) : loglikelihoods(cfg, w, &lora, pairs);
      for (size_t b = 0; b < got.size(); ++b) {
        EXPECT_NEAR(got[b].logprob, want[b], kTol * static_cast<double>(pairs[b].second.size())) << b;
        EXPECT_EQ(got[b].greedy, want_greedy[b]) << b;
      }
      // Two rows a pass: batching included.
      const PerplexityResult p = decoder ? perplexity(dec, &lora, rows, 3) : perplexity(cfg, w, &lora, rows, 2);
      EXPECT_EQ(p.examples, static_cast<int64_t>(ids.size()));
      EXPECT_EQ(p.tokens, static_cast<int64_t>(ids.size()) * (T - 1));
      EXPECT_NEAR(p.nll, want_nll, kTol * static_cast<double>(p.tokens));
      EXPECT_NEAR(p.perplexity(), std::exp(want_nll / static_cast<double>(p.tokens)), 1e-4 * p.perplexity());
    }
    ++cases;
  }
  EXPECT_EQ(cases, 5);
}

// A tokenizer (the quickstart's SentencePiece model) and a random model of its vocabulary.
struct TokModel {
  std::unique_ptr<Tokenizer> tok = load_tokenizer(fs::path(FTUNE_SOURCE_DIR) / "examples/quickstart");
  LlamaConfig cfg = [this] {
    LlamaConfig c = preset_config("tiny");
    c.vocab_size = tok->vocab_size();
    return c;
  }();
  LlamaWeights w = random_llama_weights(cfg, 4);
};

TEST(Eval, ContextAndContinuationSplitAsLmEvalDoes) {
  const TokModel m;
  // Trailing spaces of the context belong to the continuation.
  EXPECT_EQ(encode_pair(*m.tok, "The capital of France is ", "Paris"), encode_pair(*m.tok, "The capital of France is", " Paris"));
  const auto [c, x] = encode_pair(*m.tok, "The capital of France is", " Paris");
  EXPECT_EQ(c, m.tok->encode("The capital of France is"));
  std::vector<int32_t> whole = c;
  whole.insert(whole.end(), x.begin(), x.end());
  EXPECT_EQ(whole, m.tok->encode("The capital of France is Paris"));  // the continuation is what the whole adds
  EXPECT_FALSE(x.empty());
  const auto [e, y] = encode_pair(*m.tok, "", "Hello");  // an empty context is the BOS token
  EXPECT_EQ(e, std::vector<int32_t>{m.tok->bos_id()});
  EXPECT_EQ(y, m.tok->encode("Hello"));
}

TEST(Eval, ChoicesPickTheArgmaxOfSumsAndOfSumsPerCharacter) {
  const TokModel m;
  Rng rng(21);
  // Choices of very different lengths: on a random model every token costs about log V, so the sum
  // favours the short ones and the sum per character the long ones, and the two picks differ.
  const std::vector<std::string> words = {"a", "no", "the long and winding road that leads to your door",
                                          "yes", "everything that has a beginning has an end"};
  std::vector<ChoiceItem> items;
  for (int q = 0; q < 6; ++q) {
    ChoiceItem it;
    it.context = "Question " + std::to_string(q) + ": which one?";
    for (int k = 0; k < 3 + q % 2; ++k) it.choices.push_back(" " + words[rng.below(words.size())] + std::to_string(k));
    it.gold = static_cast<int64_t>(rng.below(it.choices.size()));
    items.push_back(it);
  }
  const ChoiceResult r = score_choices(items, loglikelihoods(m.cfg, m.w, nullptr, choice_pairs(*m.tok, items)));
  ASSERT_EQ(r.items, 6);
  int64_t right = 0, right_norm = 0, differ = 0;
  for (size_t q = 0; q < items.size(); ++q) {
    std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>> pairs;
    for (const auto& c : items[q].choices) pairs.push_back(encode_pair(*m.tok, items[q].context, c));
    const auto ll = loglikelihoods(m.cfg, m.w, nullptr, pairs);
    size_t best = 0, best_norm = 0;
    for (size_t k = 1; k < ll.size(); ++k) {
      if (ll[k].logprob > ll[best].logprob) best = k;
      if (ll[k].logprob / items[q].choices[k].size() > ll[best_norm].logprob / items[q].choices[best_norm].size())
        best_norm = k;
    }
    EXPECT_EQ(r.picked[q], static_cast<int64_t>(best)) << q;
    EXPECT_EQ(r.picked_norm[q], static_cast<int64_t>(best_norm)) << q;
    right += static_cast<int64_t>(best) == items[q].gold, right_norm += static_cast<int64_t>(best_norm) == items[q].gold;
    differ += best != best_norm;
  }
  EXPECT_DOUBLE_EQ(r.acc, static_cast<double>(right) / 6);
  EXPECT_DOUBLE_EQ(r.acc_norm, static_cast<double>(right_norm) / 6);
  EXPECT_GT(differ, 0);  // choices of different lengths: the normalisation changes some picks
}

TEST(Eval, BadChoiceRowsAreNamed) {
  const fs::path dir = fs::temp_directory_path() / "ftune-eval-test";
  fs::create_directories(dir);
  auto with = [&](const std::string& text) {
    const std::string p = (dir / "c.jsonl").string();
    std::ofstream(p) << "{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"gold\": 0}\n" << text << "\n";
    return p;
  };
  testing::expect_error([&] { load_choice_items(with("{nope")); }, "c.jsonl: row 2: not JSON");
  testing::expect_error([&] { load_choice_items(with("{\"choices\": [\"b\", \"c\"], \"gold\": 0}")); },
                        "row 2: needs \"context\"");
  testing::expect_error([&] { load_choice_items(with("{\"context\": \"a\", \"choices\": [\"b\"], \"gold\": 0}")); },
                        "row 2: needs \"choices\" (a list of at least two strings)");
  testing::expect_error([&] { load_choice_items(with("{\"context\": \"a\", \"choices\": [\"b\", \"c\"]}")); },
                        "row 2: needs \"gold\"");
  testing::expect_error([&] { load_choice_items(with("{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"gold\": 2}")); },
                        "row 2: gold 2 is not the index of one of its 2 choices");
  testing::expect_error([&] { load_choice_items(with("{\"context\": \"a\", \"choices\": [\"b\", 3], \"gold\": 0}")); },
                        "row 2: every choice must be a string");
  EXPECT_EQ(load_choice_items(with("")).size(), 1u);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace ftune
