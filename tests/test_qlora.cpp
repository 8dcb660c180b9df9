// QLoRA on the CPU path: training from a checkpoint that bitsandbytes saved in NF4 gives exactly the
// run that quantizes the same fp32 weights while loading; broken quant states are named.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <fstream>

#include "core/error.h"
#include "model/llama_config.h"
#include "io/safetensors.h"
#include "model/presets.h"
#include "model/weights.h"
#include "quant/nf4.h"
#include "quant/nf4_checkpoint.h"
#include "test_util.h"
#include "train/trainer.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;

LlamaConfig small_config() {
  LlamaConfig c = preset_config("tiny");
  c.vocab_size = 128;
  c.num_hidden_layers = 2;
  return c;
}

// The model as bitsandbytes saves a QLoRA base: every projection in NF4 (nested, blocks of 64),
// the rest in fp32. `skip` names a key to leave out; `fp4` marks the first weight's state as fp4.
void save_bnb_model(const LlamaConfig& c, const LlamaWeights& w, const std::string& dir, const std::string& skip = "",
                    bool fp4 = false) {
  SafetensorsWriter all;
  all.add_f32("model.embed_tokens.weight", w.embed);
  all.add_f32("model.norm.weight", w.final_norm);
  if (!c.tie_word_embeddings) all.add_f32("lm_head.weight", w.lm_head);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string pre = fmt::format("model.layers.{}.", l);
    all.add_f32(pre + "input_layernorm.weight", w.layers[l].input_norm);
    all.add_f32(pre + "post_attention_layernorm.weight", w.layers[l].post_norm);
    for (int p = 0; p < kNumProj; ++p) {
      const Tensor& t = w.layers[l].proj[p];
      add_bnb_nf4(all, pre + proj_module(static_cast<Proj>(p)) + ".weight", nf4_quantize(t.data.data(), t.shape, 64, true));
    }
  }
  // Rewrite without `skip` (and with an fp4 state name) through a second writer.
  const std::string tmp = dir + "/all.safetensors";
  all.write(tmp);
  const SafetensorsFile f = SafetensorsFile::open(tmp);
  SafetensorsWriter out;
  for (const auto& t : f.tensors()) {
    if (t.name == skip) continue;
    std::string name = t.name;
    if (fp4 && name == "model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4")
      name = "model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__fp4";
    const auto bytes = f.bytes(t);
    out.add(name, t.dtype, t.shape, std::vector<uint8_t>(bytes.begin(), bytes.end()));
  }
  out.write(dir + "/model.safetensors", {{"format", "pt"}});
  fs::remove(tmp);
  std::ofstream(dir + "/config.json") << llama_config_to_json(c) << "\n";
}

class QloraCheckpoints : public ::testing::Test {
 protected:
  void SetUp() override {
    c_ = small_config();
    w_ = random_llama_weights(c_, 11);
    fs::create_directories(dir_ / "fp32");
    save_llama_model(c_, w_, dir_ / "fp32", DType::F32);
    std::ofstream f(dir_ / "data.jsonl");
    Rng r(4);
    for (int i = 0; i < 32; ++i) {
      std::string ids;
      for (int t = 0, n = 8 + static_cast<int>(r.below(20)); t < n; ++t)
        ids += fmt::format("{}{}", t ? ", " : "", 3 + r.below(120));
      f << "{\"input_ids\": [" << ids << "]}\n";
    }
  }
  TrainReport train(const std::string& model, const std::string& method, int64_t steps = 8) {
    TrainConfig cfg;
    cfg.model = model;
    cfg.output_dir = dir_ / ("out-" + std::to_string(++runs_));
    cfg.data.train = dir_ / "data.jsonl";
    cfg.data.max_seq_len = 32;
    cfg.train.method = method;
    cfg.train.micro_batch_size = 2;
    cfg.train.max_steps = steps;
    cfg.train.lr = 1e-2;
    cfg.train.log_every = 100;
    cfg.lora.r = 4;
    cfg.lora.alpha = 8;
    return run_training(cfg);
  }
  LlamaConfig c_;
  LlamaWeights w_;
  testing::TempDir dir_{"qlora"};
  int runs_ = 0;
};

TEST_F(QloraCheckpoints, BitsandbytesFileTrainsExactlyLikeQuantizingOnLoad) {
  fs::create_directories(dir_ / "bnb");
  save_bnb_model(c_, w_, dir_ / "bnb");
  const TrainReport a = train(dir_ / "fp32", "qlora"), b = train(dir_ / "bnb", "qlora");
  ASSERT_EQ(a.steps.size(), b.steps.size());
  for (size_t i = 0; i < a.steps.size(); ++i) EXPECT_EQ(a.steps[i].loss, b.steps[i].loss) << "step " << i + 1;
  // Plain LoRA on the NF4 file trains on its dequantized weights: the same losses again.
  const TrainReport l = train(dir_ / "bnb", "lora");
  for (size_t i = 0; i < a.steps.size(); ++i) EXPECT_EQ(a.steps[i].loss, l.steps[i].loss) << "step " << i + 1;
  // And QLoRA stays near LoRA on the unquantized weights (NF4 moves each weight ~9% rms).
  const TrainReport f = train(dir_ / "fp32", "lora");
  EXPECT_NEAR(a.steps.back().loss, f.steps.back().loss, 0.05 * f.steps.back().loss);
}

TEST_F(QloraCheckpoints, BrokenQuantStateIsNamed) {
  struct Case {
    std::string skip;
    bool fp4;
    std::string want;
  };
  const std::string w = "model.layers.1.mlp.down_proj.weight";
  for (const Case& k : {Case{w + ".absmax", false, w + ".absmax"}, Case{w + ".nested_absmax", false, w + ".nested_absmax"},
                        Case{w + ".quant_map", false, w + ".quant_map"}, Case{"", true, "fp4"}}) {
    const std::string d = dir_ / ("bad" + std::to_string(++runs_));
    fs::create_directories(d);
    save_bnb_model(c_, w_, d, k.skip, k.fp4);
    try {
      train(d, "qlora", 1);
      ADD_FAILURE() << "trained without " << k.skip;
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find(k.want), std::string::npos) << m;
      EXPECT_NE(m.find("model.safetensors"), std::string::npos) << m;
      EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    }
  }
}

}  // namespace
}  // namespace ftune
