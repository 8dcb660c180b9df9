// The GPU model against transformers + peft (the HF fixtures) and against the CPU model on packed
// rows: loss and every LoRA gradient; skipped without a GPU.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "../test_util.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "io/peft_adapter.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "gpu/llama_gpu.h"
#include "model/presets.h"
#include "quant/nf4.h"
#include "gpu_fixtures.h"

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

cuda::Storage storage(bool bf16) { return bf16 ? cuda::Storage::BF16 : cuda::Storage::F32; }

// Every tensor of an adapter (or its gradients) in one vector, in for_each order.
std::vector<float> flat(const LoraParams& p) {
  std::vector<float> v;
  p.for_each([&](const std::string&, const Tensor& t) { v.insert(v.end(), t.data.begin(), t.data.end()); });
  return v;
}

// Loss and LoRA gradients of every fixture case against transformers + peft (float64 goldens).
void check_fixtures(bool bf16, bool checkpointing, double loss_tol, double grad_tol, bool fp16 = false) {
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
    GpuModelOptions o{b.batch, b.seq, fp16 ? cuda::Storage::F16 : storage(bf16), checkpointing};
    LlamaGpu gpu(ctx, cfg, memory_source(w).get(), &lora.spec, o);
    gpu.set_lora(lora);
    LoraParams grads = lora.zeros_like();
    const auto [sum, count] = gpu.forward_backward(b, 1.0f / static_cast<float>(b.count_targets()));
    gpu.add_grads_to(grads);
    const double ref = golden.read_f32("loss").data.at(0);
    const double loss_err = std::abs(sum / static_cast<double>(count) - ref) / ref;
    EXPECT_LT(loss_err, loss_tol) << dir.filename();
    double worst = 0;
    grads.for_each([&](const std::string& key, const Tensor& g) {
      const double err = rel_err(g.data, golden.read_f32("grad." + key).data);
      worst = std::max(worst, err);
      EXPECT_LT(err, grad_tol) << dir.filename() << " " << key;
    });
    std::printf("[ measured ] %s %s%s: loss rel err %.2e, worst LoRA gradient rel err %.2e\n", dir.filename().c_str(),
                fp16 ? "fp16" : bf16 ? "bf16" : "fp32", checkpointing ? " checkpointed" : "", loss_err, worst);
    ++cases;
  }
  EXPECT_GE(cases, 5);
}

// fp32 kernels vs float64: 1e-5 on the loss, 1e-4 on gradients (sums over all tokens).
TEST(LlamaGpu, MatchesHfFixturesInFp32) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  check_fixtures(false, false, 1e-5, 1e-4);
  check_fixtures(false, true, 1e-5, 1e-4);
}

// bf16 storage rounds every activation and weight to 8 significant bits (2^-9 relative); over two
// layers the loss moves by ~1e-3 and the LoRA gradients, each a sum of products of rounded
// values, by ~1e-2 relative.
TEST(LlamaGpu, MatchesHfFixturesInBf16) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  if (cuda::Context().sm_version() < 80) GTEST_SKIP() << "bf16 needs sm_80";
  check_fixtures(true, false, 5e-3, 5e-2);
  check_fixtures(true, true, 5e-3, 5e-2);
}

// A small grouped-query model with head_dim 64 (the flash kernels' size).
LlamaConfig gqa_d64(int64_t layers) {
  LlamaConfig c;
  c.vocab_size = 300;
  c.hidden_size = 128;
  c.intermediate_size = 192;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 64;
  return c;
}

TEST(LlamaGpu, PackedRowsMatchTheCpuModel) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  const LlamaConfig c = gqa_d64(2);
  const LlamaWeights w = random_llama_weights(c, 5);
  LoraSpec s;
  s.r = 8;
  s.alpha = 16;
  s.targets.fill(true);
  const LoraParams lora = nonzero_lora(c, s, 6);
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
  const std::vector<float> a = flat(gc);
  // fp32: the CPU's twin (1e-5 loss, 1e-4 gradients). bf16 (head_dim 64 takes the flash kernels):
  // rounding of activations and weights, 5e-3 on the loss and 5e-2 on the gradients.
  for (bool bf16 : {false, true})
    for (int mode = 0; mode < 3; ++mode) {  // all activations, checkpointed, checkpointed + offload
      GpuModelOptions go{b.batch, b.seq, storage(bf16), mode > 0};
      go.offload = mode == 2;
      LlamaGpu gpu(ctx, c, memory_source(w).get(), &s, go);
      gpu.set_lora(lora);
      LoraParams gg = lora.zeros_like();
      const auto [sum, count] = gpu.forward_backward(b, scale);
      gpu.add_grads_to(gg);
      EXPECT_EQ(count, rc.count);
      EXPECT_NEAR(sum, rc.loss_sum, (bf16 ? 5e-3 : 1e-5) * rc.loss_sum) << bf16 << mode;
      const std::vector<float> bb = flat(gg);
      const double err = rel_err(bb, a);
      EXPECT_LT(err, bf16 ? 5e-2 : 1e-4) << bf16 << mode;
      std::printf("[ measured ] packed rows %s%s: loss rel err %.2e, LoRA gradient rel err %.2e\n",
                  bf16 ? "bf16" : "fp32", mode == 2 ? " checkpointed+offload" : mode == 1 ? " checkpointed" : "",
                  std::abs(sum - rc.loss_sum) / rc.loss_sum, err);
    }
}

// fp16's forward overflow is found and named: layer 1's gate and up projections scaled by 600 make
// its SwiGLU product pass 65504 (random N(0, 0.02) weights keep layer 0 and every other value far
// inside fp16's range), so the report names layer 1 and the SwiGLU product; with the weights as
// drawn there is nothing to report; bf16, whose range is fp32's, has no count at all.
TEST(LlamaGpu, Fp16ForwardOverflowNamesTheLayer) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  const LlamaConfig c = gqa_d64(3);
  LlamaWeights w = random_llama_weights(c, 5);
  LoraSpec s;
  s.r = 8;
  s.alpha = 16;
  s.targets.fill(true);
  const LoraParams lora = nonzero_lora(c, s, 6);
  Rng r(3);
  std::vector<std::vector<int32_t>> ids(2);
  for (auto& d : ids)
    for (int i = 0; i < 40; ++i) d.push_back(static_cast<int32_t>(r.below(c.vocab_size)));
  const Batch b = make_batch({&ids[0], &ids[1]}, {&ids[0], &ids[1]}, 0, 8);
  auto run = [&](const LlamaWeights& wt, cuda::Storage st) {
    LlamaGpu gpu(ctx, c, memory_source(wt).get(), &s, GpuModelOptions{b.batch, b.seq, st, false});
    gpu.set_lora(lora);
    gpu.forward_backward(b, 1.0f / static_cast<float>(b.count_targets()));
    return gpu.forward_overflow();
  };
  EXPECT_EQ(run(w, cuda::Storage::F16), "");
  for (Proj p : {Proj::Gate, Proj::Up})
    for (float& x : w.layers[1].proj[static_cast<int>(p)].data) x *= 600.0f;
  const std::string where = run(w, cuda::Storage::F16);
  EXPECT_NE(where.find("fp16 overflow in the forward at layer 1: "), std::string::npos) << where;
  EXPECT_NE(where.find("SwiGLU product"), std::string::npos) << where;
  EXPECT_EQ(run(w, cuda::Storage::BF16), "");
}

// Checkpointing recomputes each layer with the same kernels and dropout masks (with offload, from
// inputs that went to host memory and back): in fp32 the
// gradients equal those of the run that kept every activation, bit for bit; in bf16 the flash
// backward adds dQ with fp32 atomics in no fixed order, so two runs agree only to the last bits
// (1e-3 relative bounds a bf16 ulp flipped here and there).
TEST(LlamaGpu, CheckpointingGivesIdenticalGradientsWithDropout) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  LlamaConfig c;
  c.vocab_size = 256;
  c.hidden_size = 256;
  c.intermediate_size = 320;
  c.num_hidden_layers = 6;  // more layers than offload slots: inputs go to the host and back
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 64;
  const LlamaWeights w = random_llama_weights(c, 7);
  LoraSpec s;
  s.r = 4;
  s.alpha = 8;
  s.dropout = 0.1;
  s.targets.fill(true);
  const LoraParams lora = nonzero_lora(c, s, 8);
  Rng r(3);
  std::vector<std::vector<int32_t>> rows(2, std::vector<int32_t>(77));
  for (auto& row : rows)
    for (auto& x : row) x = static_cast<int32_t>(r.below(c.vocab_size));
  const Batch b = make_batch({&rows[0], &rows[1]}, {&rows[0], &rows[1]}, 0);
  for (bool bf16 : {false, true}) {
    std::vector<std::vector<float>> got;
    std::vector<double> losses;
    for (int mode = 0; mode < 3; ++mode) {  // all activations, checkpointed, checkpointed + offload
      GpuModelOptions go{b.batch, b.seq, storage(bf16), mode > 0};
      go.offload = mode == 2;
      LlamaGpu gpu(ctx, c, memory_source(w).get(), &s, go);
      gpu.set_lora(lora);
      LoraParams g = lora.zeros_like();
      losses.push_back(gpu.forward_backward(b, 0.01f, 0x1234567).first);
      gpu.add_grads_to(g);
      got.push_back(flat(g));
    }
    for (int mode = 1; mode < 3; ++mode) {
      EXPECT_EQ(losses[0], losses[mode]) << mode;
      if (bf16)
        EXPECT_LT(rel_err(got[mode], got[0]), 1e-3) << mode;
      else
        EXPECT_EQ(got[0], got[mode]) << mode;
    }
  }
}

// QLoRA: the GPU model with NF4 projections against the CPU model on the NF4 round trip of the
// same weights (what the GPU dequantizes), every fixture case. The GPU rounds the dequantized
// weights and all activations to bf16, so the bf16 tolerances apply (5e-3 loss, 5e-2 gradients).
TEST(LlamaGpu, QloraMatchesTheCpuModelOnNf4Weights) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  if (ctx.sm_version() < 80) GTEST_SKIP() << "bf16 needs sm_80";
  const fs::path root = fs::path(FTUNE_SOURCE_DIR) / "tests/fixtures/hf";
  int cases = 0;
  for (const auto& e : fs::directory_iterator(root)) {
    const fs::path dir = e.path();
    const LlamaConfig cfg = load_llama_config((dir / "model").string());
    const LlamaWeights w = load_llama_weights(cfg, CheckpointReader((dir / "model").string()));
    LlamaWeights wq = w;
    double moved = 0, norm = 0;
    for (auto& layer : wq.layers)
      for (Tensor& t : layer.proj) {
        const std::vector<float> before = t.data;
        nf4_dequantize(nf4_quantize(t.data.data(), t.shape, 64, true), t.data.data());
        for (size_t i = 0; i < before.size(); ++i)
          moved += (t.data[i] - before[i]) * (t.data[i] - before[i]), norm += before[i] * before[i];
      }
    const LoraParams lora = load_peft_adapter((dir / "adapter").string(), cfg);
    const SafetensorsFile golden = SafetensorsFile::open((dir / "golden.safetensors").string());
    auto ids = i64_rows(golden, "input_ids"), labels = i64_rows(golden, "labels");
    std::vector<const std::vector<int32_t>*> pi, pl;
    for (size_t i = 0; i < ids.size(); ++i) pi.push_back(&ids[i]), pl.push_back(&labels[i]);
    const Batch b = make_batch(pi, pl, 0);
    const float scale = 1.0f / static_cast<float>(b.count_targets());
    ModelOptions o;
    o.max_batch = b.batch, o.max_seq = b.seq;
    LlamaCpu cpu(cfg, wq, &lora, o);
    LoraParams gc = lora.zeros_like(), gg = lora.zeros_like();
    const auto rc = cpu.forward_backward(b, scale, gc, 0);
    LlamaGpu gpu(ctx, cfg, memory_source(w).get(), &lora.spec, GpuModelOptions{b.batch, b.seq, cuda::Storage::BF16, false, true});
    gpu.set_lora(lora);
    const auto [sum, count] = gpu.forward_backward(b, scale);
    gpu.add_grads_to(gg);
    const double loss_err = std::abs(sum - rc.loss_sum) / rc.loss_sum;
    EXPECT_LT(loss_err, 5e-3) << dir.filename();
    const std::vector<float> a = flat(gc), bb = flat(gg);
    const double grad_err = rel_err(bb, a);
    EXPECT_LT(grad_err, 5e-2) << dir.filename();
    // NF4 moves the weights by ~10% (rms) and the loss visibly; the comparison above is against
    // the CPU on the same NF4 values, not against the unquantized model.
    std::printf("[ measured ] %s qlora: NF4 weight rel rms change %.3f; gpu vs cpu loss rel err %.2e, gradient rel err "
                "%.2e\n", dir.filename().c_str(), std::sqrt(moved / norm), loss_err, grad_err);
    ++cases;
  }
  EXPECT_GE(cases, 5);
}

// A model that cannot fit fails before allocating anything, naming its need and the settings that
// would fit, each planned the same way (70B shape, 16 rows of 4096 tokens: far over any GPU).
TEST(LlamaGpu, ModelThatDoesNotFitSaysWhatWould) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  if (ctx.sm_version() < 80) GTEST_SKIP() << "bf16 needs sm_80";
  const LlamaConfig c = preset_config("llama2-70b");
  LoraSpec s;
  s.r = 16, s.alpha = 32;
  s.targets.fill(true);
  try {
    LlamaGpu gpu(ctx, c, nullptr, &s, GpuModelOptions{16, 4096, cuda::Storage::BF16, false});
    FAIL() << "a 70B model with 16 x 4096-token micro-batches fitted";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    EXPECT_NE(m.find("the model needs "), std::string::npos) << m;
    EXPECT_NE(m.find("train.gradient_checkpointing: true ("), std::string::npos) << m;
    EXPECT_NE(m.find("train.method: qlora ("), std::string::npos) << m;
    std::printf("[ measured ] %s\n", m.c_str());
  }
}

// fp16 storage (the T4 path; sm_75 has fp16 tensor cores but no bf16): 10 mantissa bits, so the
// bf16 tolerances hold with room to spare. No loss scale here: these gradients are far from fp16's
// underflow.
TEST(LlamaGpu, MatchesHfFixturesInFp16) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  check_fixtures(false, false, 5e-3, 5e-2, true);
  check_fixtures(false, true, 5e-3, 5e-2, true);
}

TEST(LlamaGpu, QloraTakesStoredNf4Layouts) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  cuda::Context ctx;
  if (ctx.sm_version() < 80) GTEST_SKIP() << "bf16 needs sm_80";
  LlamaConfig c;
  c.vocab_size = 200, c.hidden_size = 256, c.intermediate_size = 384, c.num_hidden_layers = 2;
  c.num_attention_heads = 4, c.num_key_value_heads = 2, c.head_dim = 64;
  const LlamaWeights w = random_llama_weights(c, 21);
  LoraSpec s;
  s.r = 4, s.alpha = 8;
  s.targets.fill(true);
  const LoraParams lora = nonzero_lora(c, s, 22);
  Rng r(23);
  std::vector<std::vector<int32_t>> rows(2, std::vector<int32_t>(60));
  for (auto& row : rows)
    for (auto& x : row) x = static_cast<int32_t>(r.below(c.vocab_size));
  const Batch b = make_batch({&rows[0], &rows[1]}, {&rows[0], &rows[1]}, 0);
  const float scale = 1.0f / static_cast<float>(b.count_targets());
  for (auto [bs, nested] : {std::pair<int64_t, bool>{128, true}, {64, false}}) {
    const Nf4Source src(w, bs, nested);
    LlamaWeights wq = w;  // the CPU twin on the dequantized values
    for (int64_t l = 0; l < c.num_hidden_layers; ++l)
      for (int p = 0; p < kNumProj; ++p) wq.layers[l].proj[p] = src.proj(l, static_cast<Proj>(p));
    ModelOptions o;
    o.max_batch = b.batch, o.max_seq = b.seq;
    LlamaCpu cpu(c, wq, &lora, o);
    LoraParams gc = lora.zeros_like(), gg = lora.zeros_like();
    const auto rc = cpu.forward_backward(b, scale, gc, 0);
    LlamaGpu gpu(ctx, c, &src, &s, GpuModelOptions{b.batch, b.seq, cuda::Storage::BF16, false, true});
    gpu.set_lora(lora);
    const double sum = gpu.forward_backward(b, scale).first;
    gpu.add_grads_to(gg);
    const std::vector<float> a = flat(gc), bb = flat(gg);
    // bf16 tolerances, as for every bf16 comparison with the CPU model.
    EXPECT_NEAR(sum, rc.loss_sum, 5e-3 * rc.loss_sum) << bs << nested;
    EXPECT_LT(rel_err(bb, a), 5e-2) << bs << nested;
    std::printf("[ measured ] stored NF4 (blocks of %ld, %s): loss rel err %.2e, gradient rel err %.2e\n",
                static_cast<long>(bs), nested ? "nested" : "fp32 scales", std::abs(sum - rc.loss_sum) / rc.loss_sum,
                rel_err(bb, a));
  }
}

}  // namespace
}  // namespace ftune
