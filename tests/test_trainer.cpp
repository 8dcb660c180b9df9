// The training loop end to end on a tiny model: the loss falls, runs are reproducible from the
// seed, an adapter written by one run starts the next, and the LR schedules.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <fstream>

#include "io/peft_adapter.h"
#include "model/presets.h"
#include "model/weights.h"
#include "optim/schedule.h"
#include "test_util.h"
#include "train/trainer.h"

namespace ftune {
namespace {

struct TinyRun {
  testing::TempDir dir{"trainer"};
  TrainConfig cfg;
  TinyRun() {
    LlamaConfig c = preset_config("tiny");
    c.vocab_size = 64;
    c.num_hidden_layers = 2;
    std::filesystem::create_directories(dir / "model");
    save_llama_model(c, random_llama_weights(c, 1), dir / "model", DType::BF16);
    // A repetitive corpus: the model can learn it quickly.
    std::ofstream f(dir / "data.jsonl");
    Rng r(3);
    for (int i = 0; i < 24; ++i) {
      const int start = static_cast<int>(r.below(10));
      std::string ids;
      for (int t = 0; t < 20; ++t) ids += fmt::format("{}{}", t ? ", " : "", 3 + (start + t) % 12);
      f << "{\"input_ids\": [" << ids << "]}\n";
    }
    cfg.model = dir / "model";
    cfg.output_dir = dir / "out";
    cfg.data.train = dir / "data.jsonl";
    cfg.data.max_seq_len = 32;
    cfg.train.micro_batch_size = 4;
    cfg.train.grad_accum = 2;
    cfg.train.max_steps = 30;
    cfg.train.lr = 1e-2;
    cfg.train.schedule = "constant";
    cfg.lora.r = 4;
    cfg.lora.alpha = 8;
  }
};

TEST(Trainer, LossFallsAndOutputsAreWritten) {
  TinyRun run;
  const TrainReport r = run_training(run.cfg);
  ASSERT_EQ(r.steps.size(), 30u);
  EXPECT_LT(r.steps.back().loss, 0.7 * r.steps.front().loss)
      << r.steps.front().loss << " -> " << r.steps.back().loss;
  for (const auto& s : r.steps) EXPECT_TRUE(std::isfinite(s.loss) && std::isfinite(s.grad_norm));
  std::ifstream m(run.dir / "out/metrics.jsonl");
  int lines = 0;
  for (std::string l; std::getline(m, l);) ++lines;
  EXPECT_EQ(lines, 30);
  EXPECT_TRUE(std::filesystem::exists(run.dir / "out/config.yaml"));
  const LoraSpec s = load_peft_config(run.dir / "out");
  EXPECT_EQ(s.r, 4);
  EXPECT_EQ(s.target_names().size(), 7u);
}

TEST(Trainer, SameSeedSameRun) {
  TinyRun a, b;
  a.cfg.train.max_steps = b.cfg.train.max_steps = 5;
  a.cfg.lora.dropout = b.cfg.lora.dropout = 0.1;
  const auto ra = run_training(a.cfg), rb = run_training(b.cfg);
  for (size_t i = 0; i < ra.steps.size(); ++i) {
    EXPECT_EQ(ra.steps[i].loss, rb.steps[i].loss);
    EXPECT_EQ(ra.steps[i].grad_norm, rb.steps[i].grad_norm);
  }
  TinyRun c;
  c.cfg.train.max_steps = 5;
  c.cfg.lora.dropout = 0.1;
  c.cfg.train.seed = 43;
  const auto rc = run_training(c.cfg);
  EXPECT_NE(rc.steps[1].loss, ra.steps[1].loss);
}

TEST(Trainer, InitAdapterContinuesTraining) {
  TinyRun first;
  const auto r1 = run_training(first.cfg);
  TinyRun second;
  second.cfg.lora.init_adapter = first.dir / "out";
  second.cfg.lora.r = 16;  // ignored: the adapter's own r (4) is used
  second.cfg.train.max_steps = 2;
  const auto r2 = run_training(second.cfg);
  // Starts where the first run ended, far below a fresh start.
  EXPECT_LT(r2.steps.front().loss, 0.5 * (r1.steps.front().loss + r1.steps.back().loss));
  EXPECT_EQ(load_peft_config(second.dir / "out").r, 4);
}

TEST(Trainer, EpochsSetTheSteps) {
  TinyRun run;  // 24 examples, micro-batches of 4, accumulation 2: 6 micro-batches, 3 steps an epoch
  run.cfg.train.epochs = 2.5;
  const TrainReport r = run_training(run.cfg);
  EXPECT_EQ(r.steps.size(), 8u);  // ceil(2.5 * 6 / 2)
  std::ifstream m(run.dir / "out/metrics.jsonl");
  std::string line, last;
  while (std::getline(m, line)) last = line;
  EXPECT_NE(last.find("\"epoch\": 2"), std::string::npos) << last;  // the third epoch, half done
}

TEST(Trainer, EarlyStoppingEndsTheRunAndKeepsTheBestCheckpoint) {
  TinyRun run;
  run.cfg.data.val_fraction = 0.25;
  run.cfg.train.eval_every = 1;
  run.cfg.train.early_stopping_patience = 2;
  run.cfg.train.lr = 0.3;  // too large: the validation loss soon stops improving
  run.cfg.train.max_steps = 60;
  const TrainReport r = run_training(run.cfg);
  ASSERT_TRUE(r.stopped_early);
  ASSERT_GE(r.val_losses.size(), 3u);
  EXPECT_LT(r.steps.size(), 60u);
  // The last `patience` evaluations are no better than the best one before them.
  double best = r.val_losses.front().second;
  int64_t best_step = r.val_losses.front().first;
  for (size_t i = 0; i + 2 < r.val_losses.size(); ++i)
    if (r.val_losses[i].second < best) best = r.val_losses[i].second, best_step = r.val_losses[i].first;
  for (size_t i = r.val_losses.size() - 2; i < r.val_losses.size(); ++i) EXPECT_GE(r.val_losses[i].second, best);
  const auto best_dir = std::filesystem::path(run.dir / "out") / "checkpoints" / "best" / fmt::format("step-{:08d}", best_step);
  EXPECT_TRUE(std::filesystem::exists(best_dir / "manifest.json")) << best_dir;
  EXPECT_TRUE(std::filesystem::exists(run.dir / "out/adapter_model.safetensors"));
}

TEST(Schedule, WarmupThenDecay) {
  LrSchedule s{"cosine", 1.0, 10, 110, 0.1};
  EXPECT_DOUBLE_EQ(s.at(0), 0.0);  // transformers' warmup starts at 0
  EXPECT_DOUBLE_EQ(s.at(5), 0.5);
  EXPECT_DOUBLE_EQ(s.at(10), 1.0);
  EXPECT_NEAR(s.at(60), 0.1 + 0.9 * 0.5, 1e-12);
  EXPECT_NEAR(s.at(110), 0.1, 1e-12);
  LrSchedule l{"linear", 2.0, 0, 100, 0.0};
  EXPECT_DOUBLE_EQ(l.at(0), 2.0);
  EXPECT_NEAR(l.at(75), 0.5, 1e-12);
  LrSchedule c{"constant", 3.0, 4, 100, 0.0};
  EXPECT_DOUBLE_EQ(c.at(2), 1.5);
  EXPECT_DOUBLE_EQ(c.at(99), 3.0);
}

}  // namespace
}  // namespace ftune
