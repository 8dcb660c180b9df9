// The Hugging Face model directory written after full fine-tuning: side files copied as the base
// has them, weights in the requested dtype, shards and index as transformers writes them, and the
// staged commit that leaves no shard of an earlier run behind.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <set>

#include "core/error.h"
#include "io/checkpoint.h"
#include "model/hf_export.h"
#include "model/presets.h"
#include "params/param_table.h"
#include "test_util.h"
#include "train/run_output.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

struct Base {
  LlamaConfig cfg;
  LlamaWeights w;
};

Base make_base(const std::string& dir) {
  Base b{preset_config("tiny"), {}};
  b.cfg.vocab_size = 512;
  b.w = random_llama_weights(b.cfg, 7);
  save_llama_model(b.cfg, b.w, dir, DType::F32);
  std::ofstream(fs::path(dir) / "generation_config.json") << "{\"bos_token_id\": 1, \"eos_token_id\": 2}\n";
  std::ofstream(fs::path(dir) / "tokenizer.model") << "not really a tokenizer, only bytes to copy";
  return b;
}

TEST(HfExport, ShardsIndexAndSideFiles) {
  const testing::TempDir base("base"), out("out");
  const Base b = make_base(base.str());
  const ParamTable table = ParamTable::full(b.cfg);
  const uint64_t max_shard = 400 * 1024;  // the tiny model is ~3.5 MB in fp32: several shards
  save_hf_model(out.str(), base.str(), table, b.w, DType::F32, max_shard);
  for (const char* f : {"config.json", "generation_config.json", "tokenizer.model"})
    EXPECT_EQ(slurp(fs::path(out.str()) / f), slurp(fs::path(base.str()) / f)) << f;
  EXPECT_FALSE(fs::exists(fs::path(out.str()) / "model.safetensors"));
  const auto index = nlohmann::json::parse(slurp(fs::path(out.str()) / "model.safetensors.index.json"));
  std::set<std::string> shards;
  uint64_t total = 0;
  for (const ParamSpec& s : table.specs()) {
    ASSERT_TRUE(index.at("weight_map").contains(s.key)) << s.key;
    shards.insert(index["weight_map"][s.key].get<std::string>());
    total += static_cast<uint64_t>(s.numel()) * 4;
  }
  EXPECT_EQ(index.at("weight_map").size(), table.specs().size());
  EXPECT_EQ(index.at("metadata").at("total_size").get<uint64_t>(), total);
  EXPECT_GT(shards.size(), 2u);
  for (const auto& f : shards) {
    EXPECT_TRUE(f.starts_with("model-000") && f.find(fmt::format("-of-{:05d}.safetensors", shards.size())) != std::string::npos) << f;
    // No shard holds more than the limit, unless one tensor alone is larger.
    EXPECT_LE(fs::file_size(fs::path(out.str()) / f), max_shard + 2 * b.cfg.vocab_size * b.cfg.hidden_size * 4) << f;
  }
  // Read back through the sharded checkpoint reader: every weight exactly as trained.
  const LlamaWeights back = load_llama_weights(b.cfg, CheckpointReader(out.str()));
  for (const ParamSpec& s : table.specs()) EXPECT_EQ(param_tensor(back, s).data, param_tensor(b.w, s).data) << s.key;
}

TEST(HfExport, OneFileWhenItFitsAndBf16Rounding) {
  const testing::TempDir base("base"), out("out");
  const Base b = make_base(base.str());
  const ParamTable table = ParamTable::full(b.cfg);
  save_hf_model(out.str(), base.str(), table, b.w, DType::BF16);
  EXPECT_TRUE(fs::exists(fs::path(out.str()) / "model.safetensors"));
  EXPECT_FALSE(fs::exists(fs::path(out.str()) / "model.safetensors.index.json"));
  const CheckpointReader ck(out.str());
  const LlamaWeights back = load_llama_weights(b.cfg, ck);
  for (const ParamSpec& s : table.specs()) {
    EXPECT_EQ(ck.info(s.key).dtype, DType::BF16) << s.key;
    EXPECT_EQ(param_tensor(back, s).data, testing::from_bf16(testing::to_bf16(param_tensor(b.w, s).data))) << s.key;
  }
}

TEST(RunOutput, CommitReplacesEveryFileAndRemovesStaleShards) {
  const testing::TempDir dir("runout");
  for (const char* f : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                        "model.safetensors.index.json", "notes.txt", "metrics.jsonl"})
    std::ofstream(fs::path(dir.str()) / f) << "old " << f;
  RunOutput out(dir.str(), true);
  out.begin();
  std::ofstream(out.staged("model.safetensors")) << "new weights";
  std::ofstream(out.staged("metrics.jsonl")) << "new metrics";
  out.commit([](const std::string& n) {
    return n.starts_with("model") && (n.ends_with(".safetensors") || n == "model.safetensors.index.json");
  });
  std::set<std::string> left;
  for (const auto& e : fs::directory_iterator(dir.str())) left.insert(e.path().filename().string());
  EXPECT_EQ(left, (std::set<std::string>{"metrics.jsonl", "model.safetensors", "notes.txt"}));
  EXPECT_EQ(slurp(fs::path(dir.str()) / "metrics.jsonl"), "new metrics");
  EXPECT_EQ(slurp(fs::path(dir.str()) / "notes.txt"), "old notes.txt");
}

TEST(RunOutput, RefusesTheModelDirectoryAndANonEmptyDirectory) {
  const testing::TempDir dir("runout");
  std::ofstream(fs::path(dir.str()) / "config.json") << "{}";
  EXPECT_THROW(RunOutput(dir.str(), true, {dir.str()}), Error);
  EXPECT_THROW(RunOutput(dir.str(), false), Error);
  EXPECT_NO_THROW(RunOutput(dir.str(), true));
}

}  // namespace
}  // namespace ftune
