// PEFT adapter files: round trip, the exact config fields peft writes, and every refusal.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <fstream>
#include <set>

#include "core/error.h"
#include "io/peft_adapter.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace ftune {
namespace {

LlamaConfig small() {
  LlamaConfig c;
  c.vocab_size = 50;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;  // q_dim 32 != hidden 16
  return c;
}

LoraSpec spec_qvd() {
  LoraSpec s;
  s.r = 3;
  s.alpha = 6;
  s.targets[static_cast<int>(Proj::Q)] = s.targets[static_cast<int>(Proj::V)] = s.targets[static_cast<int>(Proj::Down)] = true;
  return s;
}

std::string slurp(const std::string& p) {
  std::ifstream f(p);
  return {std::istreambuf_iterator<char>(f), {}};
}

TEST(PeftAdapter, RoundTripAndKeys) {
  testing::TempDir dir("peft");
  const LlamaConfig c = small();
  LoraParams p = LoraParams::init(c, spec_qvd(), 5);
  uint64_t k = 0;
  p.for_each([&](const std::string& key, Tensor& t) {
    if (key.find("lora_B") != std::string::npos) testing::fill_normal(t, ++k);
  });
  save_peft_adapter(dir.str(), p, "/models/base");
  const SafetensorsFile f = SafetensorsFile::open(dir / "adapter_model.safetensors");
  EXPECT_EQ(f.metadata().at("format"), "pt");
  ASSERT_NE(f.find("base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"), nullptr);
  const TensorInfo* b = f.find("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->shape, (std::vector<int64_t>{16, 3}));
  EXPECT_EQ(f.find("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")->shape,
            (std::vector<int64_t>{3, 16}));
  EXPECT_EQ(f.find("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight")->shape,
            (std::vector<int64_t>{32, 3}));
  EXPECT_EQ(f.tensors().size(), 2u * 3u * 2u);

  const LoraParams q = load_peft_adapter(dir.str(), c);
  EXPECT_EQ(q.spec.r, 3);
  EXPECT_EQ(q.spec.alpha, 6);
  EXPECT_EQ(q.spec.target_names(), (std::vector<std::string>{"down_proj", "q_proj", "v_proj"}));
  std::vector<float> a, bb;
  p.for_each([&](const std::string&, const Tensor& t) { a.insert(a.end(), t.data.begin(), t.data.end()); });
  q.for_each([&](const std::string&, const Tensor& t) { bb.insert(bb.end(), t.data.begin(), t.data.end()); });
  EXPECT_EQ(a, bb);  // F32 on disk: bit-exact
}

TEST(PeftAdapter, ConfigJsonAsPeftWritesIt) {
  const std::string text = peft_config_json(spec_qvd(), "base");
  const auto j = nlohmann::json::parse(text);
  EXPECT_EQ(j.at("peft_type"), "LORA");
  EXPECT_EQ(j.at("task_type"), "CAUSAL_LM");
  EXPECT_EQ(j.at("r"), 3);
  EXPECT_TRUE(j.at("lora_alpha").is_number_integer());
  EXPECT_EQ(j.at("inference_mode"), true);
  EXPECT_EQ(j.at("bias"), "none");
  EXPECT_EQ(j.at("base_model_name_or_path"), "base");
  EXPECT_EQ(j.at("target_modules"), (nlohmann::json{"down_proj", "q_proj", "v_proj"}));
  // Keys sorted, two-space indent, as json.dumps(indent=2, sort_keys=True).
  std::vector<std::string> keys;
  for (auto it = j.begin(); it != j.end(); ++it) keys.push_back(it.key());
  EXPECT_TRUE(std::is_sorted(keys.begin(), keys.end()));
  EXPECT_NE(text.find("\n  \"bias\": \"none\",\n"), std::string::npos);
  // Only keys peft's LoraConfig has had since its early releases (older peft refuses unknown
  // keys), and no nulls.
  const std::set<std::string> long_standing = {"base_model_name_or_path", "bias", "fan_in_fan_out", "inference_mode",
                                               "init_lora_weights", "lora_alpha", "lora_dropout", "peft_type", "r",
                                               "target_modules", "task_type"};
  for (const auto& k : keys) {
    EXPECT_TRUE(long_standing.count(k)) << k;
    EXPECT_FALSE(j.at(k).is_null()) << k;
  }
  EXPECT_FALSE(j.contains("use_rslora"));
  LoraSpec rs = spec_qvd();
  rs.use_rslora = true;
  rs.alpha = 2.5;
  const auto j2 = nlohmann::json::parse(peft_config_json(rs, "base"));
  EXPECT_EQ(j2.at("use_rslora"), true);
  EXPECT_DOUBLE_EQ(j2.at("lora_alpha").get<double>(), 2.5);
  EXPECT_NEAR(rs.scaling(), 2.5 / std::sqrt(3.0), 1e-6);
}

TEST(PeftAdapter, SameFieldsAsPeftItself) {
  // adapter_config.json written by peft 0.21 save_pretrained (tools/make_fixtures.py).
  const std::string path = std::string(FTUNE_SOURCE_DIR) + "/tests/fixtures/hf/mha_untied/adapter/adapter_config.json";
  const auto peft = nlohmann::json::parse(slurp(path));
  LoraSpec s;
  s.r = 4;
  s.alpha = 8;
  s.targets.fill(true);
  const auto ours = nlohmann::json::parse(peft_config_json(s, "x"));
  // Every key ftune writes is one peft writes, with peft's value; every key peft writes that ftune
  // leaves out holds peft's default (null, false, empty, or a fixed setting of a feature ftune
  // does not use), so peft reads the same configuration from both.
  const std::set<std::string> fixed_defaults = {"megatron_core", "qalora_group_size", "peft_version"};
  for (auto it = ours.begin(); it != ours.end(); ++it) EXPECT_TRUE(peft.contains(it.key())) << it.key();
  for (auto it = peft.begin(); it != peft.end(); ++it) {
    if (!ours.contains(it.key())) {
      const auto& v = it.value();
      EXPECT_TRUE(v.is_null() || v == false || (v.is_object() && v.empty()) || fixed_defaults.count(it.key()))
          << it.key() << " = " << v.dump();
      continue;
    }
    if (it.key() == "target_modules") {
      auto a = it.value().get<std::vector<std::string>>();
      std::sort(a.begin(), a.end());
      EXPECT_EQ(ours.at("target_modules").get<std::vector<std::string>>(), a);
    } else if (it.key() != "base_model_name_or_path") {
      EXPECT_EQ(ours.at(it.key()), it.value()) << it.key();
    }
  }
  EXPECT_EQ(ours.size(), 11u);
}

void expect_error(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing: " << needle;
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(needle), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }
}

TEST(PeftAdapter, RefusesWhatItCannotHonour) {
  testing::TempDir dir("peft-bad");
  const LlamaConfig c = small();
  const LoraParams p = LoraParams::init(c, spec_qvd(), 1);
  save_peft_adapter(dir.str(), p, "b");
  const std::string cfg_path = dir / "adapter_config.json";
  const std::string good = slurp(cfg_path);
  // Writes the good config with one key replaced.
  auto with = [&](const std::string& key, const nlohmann::json& v) {
    auto j = nlohmann::json::parse(good);
    j[key] = v;
    std::ofstream(cfg_path) << j.dump(2);
  };
  with("rank_pattern", {{"q_proj", 8}});
  expect_error([&] { load_peft_adapter(dir.str(), c); }, "'rank_pattern' is not supported");
  with("use_dora", true);
  expect_error([&] { load_peft_adapter(dir.str(), c); }, "use_dora");
  with("target_modules", ".*proj");
  expect_error([&] { load_peft_adapter(dir.str(), c); }, "regular expression");
  with("target_modules", {"q_proj", "lm_head"});
  expect_error([&] { load_peft_adapter(dir.str(), c); }, "'lm_head' is not a Llama projection");
  with("r", 4);  // tensors are r=3
  expect_error([&] { load_peft_adapter(dir.str(), c); }, "has shape [3, 16] but r=4");
  with("target_modules", {"q_proj", "v_proj", "down_proj", "k_proj"});
  expect_error([&] { load_peft_adapter(dir.str(), c); }, "k_proj.lora_A.weight' is missing");
  with("target_modules", {"q_proj", "v_proj"});
  expect_error([&] { load_peft_adapter(dir.str(), c); }, "unexpected tensor");
  std::ofstream(cfg_path) << "{ not json";
  expect_error([&] { load_peft_adapter(dir.str(), c); }, "adapter_config.json: invalid JSON");
  std::filesystem::remove(cfg_path);
  expect_error([&] { load_peft_adapter(dir.str(), c); }, "adapter_config.json: not found");
}

}  // namespace
}  // namespace ftune
