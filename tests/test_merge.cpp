// An adapter merged into its base gives the logits of base + adapter: against ftune's own LoRA
// model and against transformers + peft (the HF fixtures' float64 logits), in memory and through
// the written model directory.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "io/checkpoint.h"
#include "io/peft_adapter.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "model/merge.h"
#include "test_util.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;
using testing::rel_err;

TEST(Merge, MergedModelGivesTheLogitsOfBasePlusAdapter) {
  const fs::path root = fs::path(FTUNE_SOURCE_DIR) / "tests/fixtures/hf";
  int cases = 0;
  for (const auto& e : fs::directory_iterator(root)) {
    const fs::path dir = e.path();
    const LlamaConfig cfg = load_llama_config((dir / "model").string());
    const LlamaWeights base = load_llama_weights(cfg, CheckpointReader((dir / "model").string()));
    const LoraParams lora = load_peft_adapter((dir / "adapter").string(), cfg);
    const SafetensorsFile golden = SafetensorsFile::open((dir / "golden.safetensors").string());
    const TensorInfo* ids_info = golden.find("input_ids");
    ASSERT_NE(ids_info, nullptr);
    std::vector<std::vector<int32_t>> ids(ids_info->shape[0], std::vector<int32_t>(ids_info->shape[1]));
    const auto raw = golden.bytes(*ids_info);
    for (size_t i = 0; i < ids.size(); ++i)
      for (size_t j = 0; j < ids[i].size(); ++j) {
        int64_t v;
        std::memcpy(&v, raw.data() + (i * ids[i].size() + j) * 8, 8);
        ids[i][j] = static_cast<int32_t>(v);
      }
    std::vector<const std::vector<int32_t>*> rows;
    for (const auto& r : ids) rows.push_back(&r);
    const Batch b = make_batch(rows, rows, 0);
    ModelOptions o;
    o.max_batch = b.batch, o.max_seq = b.seq;
    const Tensor with_adapter = LlamaCpu(cfg, base, &lora, o).logits(b);

    const testing::TempDir out("merged");
    save_merged_model(out.str(), (dir / "model").string(), lora);
    const LlamaWeights merged = load_llama_weights(cfg, CheckpointReader(out.str()));
    const Tensor logits = LlamaCpu(cfg, merged, nullptr, o).logits(b);
    // fp32: W + s B A rounds once more than the separate branch does; 1e-5 is the fp32 bound.
    const double e_ours = rel_err(logits.data, with_adapter.data);
    const double e_hf = rel_err(logits.data, golden.read_f32("logits").data);
    EXPECT_LT(e_ours, 1e-5) << dir.filename();
    EXPECT_LT(e_hf, 1e-5) << dir.filename();
    // Projections without an adapter are the base's, bit for bit.
    for (int64_t l = 0; l < cfg.num_hidden_layers; ++l)
      for (int p = 0; p < kNumProj; ++p)
        if (!lora.layers[l][p].active()) EXPECT_EQ(merged.layers[l].proj[p].data, base.layers[l].proj[p].data);
    std::printf("[ measured ] %s: merged logits rel err %.2e vs base + adapter, %.2e vs transformers + peft\n",
                dir.filename().c_str(), e_ours, e_hf);
    ++cases;
  }
  EXPECT_GE(cases, 5);
}

}  // namespace
}  // namespace ftune
