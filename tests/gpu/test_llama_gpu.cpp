// The GPU model against transformers + peft (the HF fixtures) and against the CPU model on packed
// rows: loss and every LoRA gradient; skipped without a GPU.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "../test_util.h"
#include "io/checkpoint.h"
#include "io/peft_adapter.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "model/llama_gpu.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;
using testing::rel_err;

std::vector<std::vector<int32_t>> i64_rows(const SafetensorsFile& f, const std::string& name) {
  const TensorInfo* t = f.find(name);
  auto bytes = f.bytes(*t);
  std::vector<std::vector<int32_t>> out(t->shape[0], std::vector<int32_t>(t->shape[1]));
  for (int64_t r = 0; r < t->shape[0]; ++r)
    for (int64_t c = 0; c < t->shape[1]; ++c) {
      int64_t v;
      std::memcpy(&v, bytes.data() + (r * t->shape[1] + c) * 8, 8);
      out[r][c] = static_cast<int32_t>(v);
    }
  return out;
}

TEST(LlamaGpu, MatchesHfFixturesInFp32) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  const fs::path root = fs::path(FTUNE_SOURCE_DIR) / "tests/fixtures/hf";
  int cases = 0;
  for (const auto& e : fs::directory_iterator(root)) {
    const fs::path dir = e.path();
    const LlamaConfig cfg = load_llama_config((dir / "model").string());
    const LlamaWeights w = load_llama_weights(cfg, CheckpointReader((dir / "model").string()));
    const LoraParams lora = load_peft_adapter((dir / "adapter").string(), cfg);
    const SafetensorsFile golden = SafetensorsFile::open((dir / "golden.safetensors").string());
    auto ids = i64_rows(golden, "input_ids"), labels = i64_rows(golden, "labels");
    std::vector<const std::vector<int32_t>*> pi, pl;
    for (size_t i = 0; i < ids.size(); ++i) pi.push_back(&ids[i]), pl.push_back(&labels[i]);
    const Batch b = make_batch(pi, pl, 0);
    LlamaGpu gpu(ctx, cfg, w, &lora.spec, b.batch, b.seq);
    gpu.upload_lora(lora);
    LoraParams grads = lora.zeros_like();
    const auto [sum, count] = gpu.forward_backward(b, 1.0f / static_cast<float>(b.count_targets()), grads);
    const double ref = golden.read_f32("loss").data.at(0);
    // fp32 kernels vs float64: 1e-5 on the loss, 1e-4 on gradients (sums over all tokens).
    EXPECT_LT(std::abs(sum / static_cast<double>(count) - ref) / ref, 1e-5) << dir.filename();
    double worst = 0;
    grads.for_each([&](const std::string& key, const Tensor& g) {
      const double err = rel_err(g.data, golden.read_f32("grad." + key).data);
      worst = std::max(worst, err);
      EXPECT_LT(err, 1e-4) << dir.filename() << " " << key;
    });
    std::printf("[ measured ] %s: loss rel err %.2e, worst LoRA gradient rel err %.2e\n",
                dir.filename().c_str(), std::abs(sum / static_cast<double>(count) - ref) / ref, worst);
    ++cases;
  }
  EXPECT_GE(cases, 5);
}

TEST(LlamaGpu, PackedRowsMatchTheCpuModel) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  LlamaConfig c;
  c.vocab_size = 300;
  c.hidden_size = 128;
  c.intermediate_size = 192;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 32;
  const LlamaWeights w = random_llama_weights(c, 5);
  LoraSpec s;
  s.r = 8;
  s.alpha = 16;
  s.targets.fill(true);
  LoraParams lora = LoraParams::init(c, s, 6);
  uint64_t k = 0;
  lora.for_each([&](const std::string& key, Tensor& t) {
    if (key.find("lora_B") != std::string::npos) testing::fill_normal(t, ++k, 0.05f);
  });
  // Two rows of three and two packed documents.
  Rng r(9);
  std::vector<std::vector<int32_t>> docs(5);
  for (auto& d : docs)
    for (int64_t i = 0, n = 5 + r.below(20); i < n; ++i) d.push_back(static_cast<int32_t>(r.below(c.vocab_size)));
  std::vector<std::vector<std::pair<const std::vector<int32_t>*, const std::vector<int32_t>*>>> rows(2);
  for (size_t i = 0; i < docs.size(); ++i) rows[i < 3 ? 0 : 1].emplace_back(&docs[i], &docs[i]);
  const Batch b = make_packed_batch(rows, 0, 8);
  ModelOptions o;
  o.max_batch = b.batch;
  o.max_seq = b.seq;
  LlamaCpu cpu(c, w, &lora, o);
  LoraParams gc = lora.zeros_like(), gg = lora.zeros_like();
  const float scale = 1.0f / static_cast<float>(b.count_targets());
  const auto rc = cpu.forward_backward(b, scale, gc, 0);
  LlamaGpu gpu(ctx, c, w, &s, b.batch, b.seq);
  gpu.upload_lora(lora);
  const auto [sum, count] = gpu.forward_backward(b, scale, gg);
  EXPECT_EQ(count, rc.count);
  EXPECT_NEAR(sum, rc.loss_sum, 1e-5 * rc.loss_sum);
  std::vector<float> a, bb;
  gc.for_each([&](const std::string&, const Tensor& t) { a.insert(a.end(), t.data.begin(), t.data.end()); });
  gg.for_each([&](const std::string&, const Tensor& t) { bb.insert(bb.end(), t.data.begin(), t.data.end()); });
  EXPECT_LT(rel_err(bb, a), 1e-4);
}

}  // namespace
}  // namespace ftune
