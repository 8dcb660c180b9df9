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
    const auto ids = testing::i64_rows(golden, "input_ids");
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
