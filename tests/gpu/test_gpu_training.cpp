// `ftune train` on the GPU follows the CPU run: same data, seed, dropout and packing, 200 steps;
// skipped without a GPU.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <fstream>

#include "../test_util.h"
#include "model/presets.h"
#include "model/weights.h"
#include "ops/cuda/context.h"
#include "train/trainer.h"

namespace ftune {
namespace {

// The largest relative difference between the mean losses of two runs over 10-step windows (the
// per-step noise of bf16 averages out over a window).
double worst_window(const TrainReport& ref, const TrainReport& other) {
  double worst = 0;
  for (size_t i = 0; i + 10 <= ref.steps.size() && i + 10 <= other.steps.size(); i += 10) {
    double a = 0, b = 0;
    for (size_t j = i; j < i + 10; ++j) a += ref.steps[j].loss, b += other.steps[j].loss;
    worst = std::max(worst, std::abs(b - a) / a);
  }
  return worst;
}

TEST(GpuTraining, LossCurveFollowsTheCpuRun) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  testing::TempDir dir("gpu-train");
  LlamaConfig c = preset_config("tiny");
  c.vocab_size = 128;
  c.num_hidden_layers = 2;
  std::filesystem::create_directories(dir / "model");
  save_llama_model(c, random_llama_weights(c, 1), dir / "model", DType::F32);
  {
    std::ofstream f(dir / "data.jsonl");
    Rng r(3);
    for (int i = 0; i < 64; ++i) {
      const int start = static_cast<int>(r.below(20)), len = 8 + static_cast<int>(r.below(24));
      std::string ids;
      for (int t = 0; t < len; ++t) ids += fmt::format("{}{}", t ? ", " : "", 3 + (start + 3 * t) % 100);
      f << "{\"input_ids\": [" << ids << "]}\n";
    }
  }
  auto run = [&](const std::string& device, const std::string& precision, const std::string& method = "lora",
                 const std::string& optimizer = "adamw") {
    TrainConfig cfg;
    cfg.model = dir / "model";
    cfg.output_dir = dir / ("out-" + device + precision + method + optimizer);
    cfg.train.optimizer = optimizer;
    cfg.train.method = method;
    cfg.data.train = dir / "data.jsonl";
    cfg.data.max_seq_len = 64;
    cfg.data.packing = true;
    cfg.train.micro_batch_size = 2;
    cfg.train.grad_accum = 2;
    cfg.train.max_steps = 200;
    cfg.train.lr = 3e-3;
    cfg.train.warmup_steps = 10;
    cfg.train.device = device;
    cfg.train.precision = precision;
    cfg.lora.r = 8;
    cfg.lora.alpha = 16;
    cfg.lora.dropout = 0.1;
    cfg.train.log_every = 50;
    cfg.train.threads = 4;  // tiny matrices: more CPU threads only add synchronization
    return run_training(cfg);
  };
  const TrainReport cpu = run("cpu", "fp32"), gpu = run("cuda", "fp32");
  ASSERT_EQ(cpu.steps.size(), gpu.steps.size());
  double worst = 0;
  for (size_t i = 0; i < cpu.steps.size(); ++i) {
    const double d = std::abs(gpu.steps[i].loss - cpu.steps[i].loss) / cpu.steps[i].loss;
    if (d > 1e-4)
      std::printf("step %zu: cpu %.6f gpu %.6f tokens %ld/%ld\n", i + 1, cpu.steps[i].loss, gpu.steps[i].loss,
                  static_cast<long>(cpu.steps[i].tokens), static_cast<long>(gpu.steps[i].tokens));
    worst = std::max(worst, d);
  }
  // Both in fp32 with identical dropout masks: only summation order differs, and 200 AdamW steps
  // keep that drift far below the loss's own change (which is O(1)).
  EXPECT_LT(worst, 1e-3);
  EXPECT_LT(gpu.steps.back().loss, 0.7 * gpu.steps.front().loss);
  std::printf("[ measured ] 200 steps: loss %.4f -> %.4f (cpu) vs %.4f -> %.4f (gpu fp32); worst per-step rel diff %.2e\n",
              cpu.steps.front().loss, cpu.steps.back().loss, gpu.steps.front().loss, gpu.steps.back().loss, worst);

  // fp16 with dynamic loss scaling (the scale starts at 65536 and halves on overflow): the same
  // curve within the bf16 bounds below (fp16 keeps 3 more mantissa bits than bf16). It runs on
  // every GPU (sm_75, the T4, included); the bf16 rows need sm_80.
  const TrainReport hf = run("cuda", "fp16");
  const double worst_hf = worst_window(cpu, hf);
  EXPECT_LT(worst_hf, 0.03);
  EXPECT_LT(std::abs(hf.steps.back().loss - cpu.steps.back().loss) / cpu.steps.back().loss, 0.05);
  std::printf("[ measured ] 200 steps fp16: loss %.4f -> %.4f; worst 10-step window rel diff to the cpu run %.2e\n",
              hf.steps.front().loss, hf.steps.back().loss, worst_hf);
  // QLoRA in fp16 (the NF4 base dequantized into fp16 before each GEMM, the T4's QLoRA): the CPU's
  // QLoRA curve within the same windows.
  const TrainReport qc = run("cpu", "fp32", "qlora"), qh = run("cuda", "fp16", "qlora");
  const double worst_qh = worst_window(qc, qh);
  EXPECT_LT(worst_qh, 0.03);
  EXPECT_LT(qh.steps.back().loss, 0.7 * qh.steps.front().loss);
  std::printf("[ measured ] 200 steps qlora fp16: gpu %.4f -> %.4f; worst 10-step window vs cpu qlora %.2e\n",
              qh.steps.front().loss, qh.steps.back().loss, worst_qh);

  // bf16: the same curve within bf16 noise. Per step the loss of a bf16 forward differs by ~1e-3
  // relative; the trajectories drift apart slowly, so compare 10-step windows (noise averages
  // out) at 3% and the final loss at 5%.
  if (cuda::Context().sm_version() < 80) {
    std::printf("[ skipped ] the bf16 rows: this GPU (sm_%d) has no bf16\n", cuda::Context().sm_version());
    return;
  }
  const TrainReport bf = run("cuda", "bf16");
  ASSERT_EQ(cpu.steps.size(), bf.steps.size());
  const double worst_bf = worst_window(cpu, bf);
  EXPECT_LT(worst_bf, 0.03);
  EXPECT_LT(std::abs(bf.steps.back().loss - cpu.steps.back().loss) / cpu.steps.back().loss, 0.05);
  std::printf("[ measured ] 200 steps bf16: loss %.4f -> %.4f; worst 10-step window rel diff to the cpu run %.2e\n",
              bf.steps.front().loss, bf.steps.back().loss, worst_bf);

  // QLoRA: the CPU (fp32 on the NF4 round trip) and the GPU (bf16, NF4 dequantized per GEMM) follow
  // each other within bf16 noise (same windows as above); and QLoRA follows bf16 LoRA closely: NF4
  // moves each weight by ~10% rms, which shifts a tiny random model's loss by a few percent (10%).
  const TrainReport qg = run("cuda", "bf16", "qlora");
  const double worst_q = worst_window(qc, qg), worst_ql = worst_window(bf, qg);
  EXPECT_LT(worst_q, 0.03);
  EXPECT_LT(worst_ql, 0.10);
  EXPECT_LT(qg.steps.back().loss, 0.7 * qg.steps.front().loss);
  std::printf("[ measured ] 200 steps qlora: gpu %.4f -> %.4f, cpu %.4f -> %.4f; worst 10-step window gpu vs cpu %.2e, "
              "qlora vs bf16 lora %.2e\n",
              qg.steps.front().loss, qg.steps.back().loss, qc.steps.front().loss, qc.steps.back().loss, worst_q, worst_ql);

  // QLoRA with the paged 8-bit optimizer on the GPU follows the CPU's 8-bit run (the same update,
  // bit for bit, on bf16-noisy gradients) and stays close to fp32 AdamW (8-bit moments: 5%).
  const TrainReport pc = run("cpu", "fp32", "qlora", "adamw_8bit"), pg = run("cuda", "bf16", "qlora", "paged_adamw_8bit");
  const double worst_p = worst_window(pc, pg), worst_p32 = worst_window(qg, pg);
  EXPECT_LT(worst_p, 0.03);
  EXPECT_LT(worst_p32, 0.05);
  std::printf("[ measured ] 200 steps qlora + paged 8-bit AdamW: gpu %.4f -> %.4f; worst 10-step window vs cpu 8-bit %.2e, "
              "vs fp32 AdamW %.2e\n",
              pg.steps.front().loss, pg.steps.back().loss, worst_p, worst_p32);
}

}  // namespace
}  // namespace ftune
