// config.json reading and writing: both transformers forms, rope scaling, GQA, and every refusal.
#include <gtest/gtest.h>

#include "error_util.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "model/llama_config.h"

namespace ftune {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

using testing::expect_error;

class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() / ("ftune_hf_config_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  void write(const std::string& name, const std::string& text) const { std::ofstream(path_ / name) << text; }

 private:
  fs::path path_;
};

// Llama-2-7b-hf as published (transformers 4 form).
json llama2_7b() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 11008,
    "max_position_embeddings": 4096, "model_type": "llama", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 32, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": null, "tie_word_embeddings": false, "torch_dtype": "float16",
    "transformers_version": "4.31.0.dev0", "use_cache": true, "vocab_size": 32000})");
}

// Llama-3.1-8B-Instruct (transformers 4 form, llama3 rope scaling, GQA, three eos ids).
json llama31_8b() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
    "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
    "use_cache": true, "vocab_size": 128256})");
}

// Llama-3.2-1B as transformers 5 writes it: rope_parameters and dtype, tied embeddings.
json llama32_1b_v5() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "bos_token_id": 128000, "dtype": "bfloat16", "eos_token_id": 128001, "head_dim": 64,
    "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
    "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_parameters": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                        "original_max_position_embeddings": 8192, "rope_theta": 500000.0,
                        "rope_type": "llama3"},
    "tie_word_embeddings": true, "transformers_version": "5.17.0", "use_cache": true,
    "vocab_size": 128256})");
}

LlamaConfig parse(const json& j) { return parse_llama_config(j.dump(), "config.json"); }

TEST(HfConfig, Llama2OldForm) {
  LlamaConfig c = parse(llama2_7b());
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 11008);
  EXPECT_EQ(c.num_hidden_layers, 32);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 32);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.rope_scaling.type, "default");
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_ids, std::vector<int64_t>{1});
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
  EXPECT_EQ(c.pad_token_id, -1);
  EXPECT_EQ(c.torch_dtype, "float16");
  EXPECT_EQ(c.num_parameters(), 6738415616);  // the published count of Llama-2-7b
}

TEST(HfConfig, Llama31Llama3RopeScalingAndGqa) {
  LlamaConfig c = parse(llama31_8b());
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.q_dim(), 4096);
  EXPECT_EQ(c.kv_dim(), 1024);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.bos_token_ids, std::vector<int64_t>{128000});
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.num_parameters(), 8030261248);  // Llama-3.1-8B
}

TEST(HfConfig, Transformers5FormWithTiedEmbeddings) {
  LlamaConfig c = parse(llama32_1b_v5());
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 32.0);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{128001});
  EXPECT_EQ(c.num_parameters(), 1235814400);  // Llama-3.2-1B: no separate lm_head
}

TEST(HfConfig, RopeParametersDefaultTypeTakesItsTheta) {
  json j = llama2_7b();
  j.erase("rope_scaling");
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 250000.0}};
  LlamaConfig c = parse(j);
  EXPECT_EQ(c.rope_scaling.type, "default");
  EXPECT_DOUBLE_EQ(c.rope_theta, 250000.0);
}

TEST(HfConfig, LegacyTypeKeyAndLinearScaling) {
  json j = llama2_7b();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  LlamaConfig c = parse(j);
  EXPECT_EQ(c.rope_scaling.type, "linear");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 2.0);

  j["rope_scaling"] = {{"type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  EXPECT_EQ(parse(j).rope_scaling.type, "llama3");
  j["rope_scaling"] = {{"rope_type", "default"}};
  EXPECT_EQ(parse(j).rope_scaling.type, "default");
}

TEST(HfConfig, NullKvHeadsAndHeadDimFallBack) {
  json j = llama2_7b();
  j["num_key_value_heads"] = nullptr;
  j["head_dim"] = nullptr;
  LlamaConfig c = parse(j);
  EXPECT_EQ(c.num_key_value_heads, 32);
  EXPECT_EQ(c.head_dim, 128);
  j.erase("num_key_value_heads");
  j.erase("head_dim");
  c = parse(j);
  EXPECT_EQ(c.num_key_value_heads, 32);
  EXPECT_EQ(c.head_dim, 128);
}

TEST(HfConfig, HeadDimOverride) {
  json j = llama2_7b();
  j["hidden_size"] = 64;
  j["num_attention_heads"] = 4;
  j["num_key_value_heads"] = 2;
  j["head_dim"] = 32;  // q_dim 128 != hidden 64
  LlamaConfig c = parse(j);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.q_dim(), 128);
  EXPECT_EQ(c.kv_dim(), 64);
  // embed + per layer (q 64x128, k/v 64x64 each, o 128x64, mlp, 2 norms) + final norm + lm_head
  const int64_t per_layer = 64 * 128 + 2 * 64 * 64 + 128 * 64 + 3 * 64 * 11008 + 2 * 64;
  EXPECT_EQ(c.num_parameters(), 32000 * 64 + 32 * per_layer + 64 + 32000 * 64);
}

TEST(HfConfig, TokenIdsNullAndPad) {
  json j = llama2_7b();
  j["bos_token_id"] = nullptr;
  j["eos_token_id"] = {2, 3};
  j["pad_token_id"] = 0;
  LlamaConfig c = parse(j);
  EXPECT_TRUE(c.bos_token_ids.empty());
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(c.pad_token_id, 0);
  j.erase("bos_token_id");
  j.erase("eos_token_id");
  j["pad_token_id"] = nullptr;
  c = parse(j);
  EXPECT_EQ(c.bos_token_ids, std::vector<int64_t>{1});
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
  EXPECT_EQ(c.pad_token_id, -1);
}

TEST(HfConfig, ModelTypeAloneOrArchitecturesAloneAndTpIgnored) {
  json j = llama2_7b();
  j.erase("architectures");
  EXPECT_EQ(parse(j).hidden_size, 4096);
  j = llama2_7b();
  j.erase("model_type");
  j["pretraining_tp"] = 2;
  EXPECT_EQ(parse(j).hidden_size, 4096);
  j = llama2_7b();
  j["architectures"] = {"SomethingElse", "LlamaForCausalLM"};
  EXPECT_EQ(parse(j).hidden_size, 4096);
  j = llama2_7b();
  j.erase("torch_dtype");
  EXPECT_EQ(parse(j).torch_dtype, "float32");
}

TEST(HfConfig, JsonRoundTripAndTransformersShape) {
  for (const json& src : {llama2_7b(), llama31_8b(), llama32_1b_v5()}) {
    LlamaConfig a = parse(src);
    a.pad_token_id = 7;
    const std::string text = llama_config_to_json(a);
    LlamaConfig b = parse_llama_config(text, "out/config.json");
    EXPECT_EQ(llama_config_to_json(b), text);
    EXPECT_EQ(b.num_parameters(), a.num_parameters());
    EXPECT_EQ(b.rope_scaling.type, a.rope_scaling.type);
    EXPECT_EQ(b.eos_token_ids, a.eos_token_ids);
    EXPECT_EQ(b.pad_token_id, 7);
    EXPECT_EQ(b.tie_word_embeddings, a.tie_word_embeddings);

    json j = json::parse(text);
    EXPECT_EQ(j["architectures"], json::array({"LlamaForCausalLM"}));
    EXPECT_EQ(j["model_type"], "llama");
    EXPECT_TRUE(j["bos_token_id"].is_number_integer());
    EXPECT_EQ(j["head_dim"], a.head_dim);
    EXPECT_EQ(j["torch_dtype"], a.torch_dtype);
    EXPECT_DOUBLE_EQ(j["rope_theta"].get<double>(), a.rope_theta);
    if (a.rope_scaling.type == "default") {
      EXPECT_TRUE(j["rope_scaling"].is_null());
    } else {
      EXPECT_EQ(j["rope_scaling"]["rope_type"], a.rope_scaling.type);
    }
  }
  const std::string text = llama_config_to_json(parse(llama2_7b()));
  EXPECT_NE(text.find("\n  \"architectures\": [\n    \"LlamaForCausalLM\"\n  ],"), std::string::npos) << text;
  EXPECT_NE(text.find("\"rope_scaling\": null"), std::string::npos);
  EXPECT_NE(text.find("\"rms_norm_eps\": 1e-05"), std::string::npos);
  EXPECT_NE(text.find("\"eos_token_id\": 2,"), std::string::npos);
  EXPECT_EQ(text.find("pad_token_id"), std::string::npos);
  EXPECT_NE(llama_config_to_json(parse(llama31_8b())).find("\"eos_token_id\": [\n    128001,"), std::string::npos);
}

TEST(HfConfig, LoadsFromDirectory) {
  TempDir d;
  d.write("config.json", llama31_8b().dump(2));
  LlamaConfig c = load_llama_config(d.path().string());
  EXPECT_EQ(c.num_key_value_heads, 8);
}

TEST(HfConfigErrors, MissingFile) {
  TempDir d;
  const std::string dir = d.path().string();
  expect_error([&] { load_llama_config(dir); },
               (d.path() / "config.json").string() + ": not found (is this a Hugging Face model directory?)");
}

TEST(HfConfigErrors, InvalidJsonNamesFileAndByte) {
  TempDir d;
  d.write("config.json", "{\"hidden_size\": 4096,\n \"vocab_size\": }");
  expect_error([&] { load_llama_config(d.path().string()); },
               (d.path() / "config.json").string() + ": invalid JSON at byte 38");
  expect_error([&] { parse_llama_config("[1, 2]", "config.json"); },
               "config.json: expected a JSON object at the top level, found array");
}

TEST(HfConfigErrors, NotLlama) {
  json j = llama2_7b();
  j["architectures"] = {"MistralForCausalLM"};
  j["model_type"] = "mistral";
  expect_error([&] { parse(j); },
               "config.json: architecture 'MistralForCausalLM' is not supported (supported: LlamaForCausalLM)");
  j = llama2_7b();
  j["model_type"] = "mistral";
  expect_error([&] { parse(j); }, "config.json: model_type 'mistral' is not supported (supported: llama)");
  j = llama2_7b();
  j.erase("model_type");
  j.erase("architectures");
  expect_error([&] { parse(j); }, "config.json: neither 'architectures' nor 'model_type' is set");
}

TEST(HfConfigErrors, MissingOrBadSizes) {
  for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"}) {
    json j = llama2_7b();
    j.erase(key);
    expect_error([&] { parse(j); }, fmt::format("config.json: missing '{}' (a positive integer)", key));
    j[key] = 0;
    expect_error([&] { parse(j); }, fmt::format("config.json: '{}' must be a positive integer, found 0", key));
    j[key] = "4096";
    expect_error([&] { parse(j); }, fmt::format("config.json: '{}' must be a positive integer, found \"4096\"", key));
  }
  json j = llama2_7b();
  j["num_key_value_heads"] = -8;
  expect_error([&] { parse(j); }, "config.json: 'num_key_value_heads' must be a positive integer, found -8");
  j = llama2_7b();
  j["rms_norm_eps"] = 0;
  expect_error([&] { parse(j); }, "config.json: 'rms_norm_eps' must be a positive number, found 0");
  j = llama2_7b();
  j["max_position_embeddings"] = 2.5;
  expect_error([&] { parse(j); }, "config.json: 'max_position_embeddings' must be a positive integer, found 2.5");
}

TEST(HfConfigErrors, HeadsNotDivisible) {
  json j = llama2_7b();
  j["num_key_value_heads"] = 5;
  expect_error([&] { parse(j); },
               "config.json: 'num_attention_heads' (32) must be a multiple of 'num_key_value_heads' (5)");
  j = llama2_7b();
  j["hidden_size"] = 4000;
  j["num_attention_heads"] = 48;
  j["num_key_value_heads"] = 48;
  expect_error([&] { parse(j); }, "'hidden_size' (4000) must be a multiple of 'num_attention_heads' (48)");
}

TEST(HfConfigErrors, BiasesActivationAndDtype) {
  json j = llama2_7b();
  j["attention_bias"] = true;
  expect_error([&] { parse(j); }, "config.json: 'attention_bias' is true");
  j = llama2_7b();
  j["mlp_bias"] = true;
  expect_error([&] { parse(j); }, "config.json: 'mlp_bias' is true");
  j = llama2_7b();
  j["hidden_act"] = "gelu";
  expect_error([&] { parse(j); }, "config.json: 'hidden_act' 'gelu' is not supported (supported: silu)");
  j = llama2_7b();
  j["torch_dtype"] = "int8";
  expect_error([&] { parse(j); }, "config.json: 'torch_dtype' must be one of float32, bfloat16, float16, found 'int8'");
  j = llama32_1b_v5();
  j["dtype"] = "float64";
  expect_error([&] { parse(j); }, "config.json: 'dtype' must be one of");
  j = llama2_7b();
  j["tie_word_embeddings"] = "yes";
  expect_error([&] { parse(j); }, "config.json: 'tie_word_embeddings' must be true or false");
  j = llama2_7b();
  j["eos_token_id"] = "2";
  expect_error([&] { parse(j); }, "config.json: 'eos_token_id' must be a non-negative integer or a list of them");
}

TEST(HfConfigErrors, RopeProblemsNameTheNestedKey) {
  json j = llama2_7b();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  expect_error([&] { parse(j); },
               "config.json: rope_scaling.rope_type 'yarn' is not supported (supported: default, linear, llama3)");
  j["rope_scaling"] = {{"type", "dynamic"}, {"factor", 4.0}};
  expect_error([&] { parse(j); }, "config.json: rope_scaling.type 'dynamic' is not supported");
  j = llama32_1b_v5();
  j["rope_parameters"]["rope_type"] = "longrope";
  expect_error([&] { parse(j); }, "config.json: rope_parameters.rope_type 'longrope' is not supported");
  j = llama31_8b();
  j["rope_scaling"].erase("factor");
  expect_error([&] { parse(j); }, "config.json: missing 'rope_scaling.factor' (a positive number)");
  j = llama31_8b();
  j["rope_scaling"]["high_freq_factor"] = 1.0;
  expect_error([&] { parse(j); }, "'rope_scaling.high_freq_factor' (1) must be greater than 'rope_scaling.low_freq_factor' (1)");
  j = llama32_1b_v5();
  j["rope_parameters"].erase("original_max_position_embeddings");
  expect_error([&] { parse(j); }, "missing 'rope_parameters.original_max_position_embeddings'");
  j = llama2_7b();
  j["rope_scaling"] = "llama3";
  expect_error([&] { parse(j); }, "config.json: 'rope_scaling' must be an object or null");
  j = llama2_7b();
  j["rope_theta"] = -1.0;
  expect_error([&] { parse(j); }, "config.json: 'rope_theta' must be a positive number, found -1.0");
}

}  // namespace
}  // namespace ftune
