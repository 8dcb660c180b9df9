// Checkpoints and exact resume on the CPU: a run stopped after any step and resumed from its last
// checkpoint gives bitwise the losses, gradient norms and final weights of the uninterrupted run
// (LoRA with dropout and packing, 8-bit AdamW, full fine-tuning); damaged checkpoints are refused
// and the one before used; a changed recipe is refused naming the key.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "model/presets.h"
#include "model/weights.h"
#include "test_util.h"
#include "train/run_checkpoint.h"
#include "train/trainer.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct Crash {};  // stands for a process killed after a step

struct ResumeSetup {
  testing::TempDir dir{"resume"};
  TrainConfig cfg;
  explicit ResumeSetup(const std::string& method) {
    LlamaConfig c = preset_config("tiny");
    c.vocab_size = 64;
    c.num_hidden_layers = 2;
    fs::create_directories(dir / "model");
    save_llama_model(c, random_llama_weights(c, 1), dir / "model", DType::F32);
    std::ofstream f(dir / "data.jsonl");
    Rng r(5);
    for (int i = 0; i < 21; ++i) {  // not a multiple of the batch: epochs end mid-batch
      const int start = static_cast<int>(r.below(10)), len = 6 + static_cast<int>(r.below(14));
      std::string ids;
      for (int t = 0; t < len; ++t) ids += fmt::format("{}{}", t ? ", " : "", 3 + (start + t) % 12);
      f << "{\"input_ids\": [" << ids << "]}\n";
    }
    cfg.model = dir / "model";
    cfg.data.train = dir / "data.jsonl";
    cfg.data.max_seq_len = 32;
    cfg.data.packing = true;
    cfg.train.method = method;
    cfg.train.micro_batch_size = 2;
    cfg.train.grad_accum = 2;
    cfg.train.max_steps = 14;
    cfg.train.lr = method == "full" ? 1e-3 : 1e-2;
    cfg.train.warmup_steps = 3;  // cosine after warmup: the schedule position matters
    cfg.train.weight_decay = 0.01;
    cfg.train.threads = 2;
    cfg.lora.r = 4;
    cfg.lora.alpha = 8;
    cfg.lora.dropout = method == "full" ? 0.0 : 0.1;
  }
  TrainReport run(const std::string& out, int64_t crash_after = 0, const std::string& resume_from = "") {
    TrainConfig c = cfg;
    c.output_dir = dir / out;
    c.resume_from = resume_from;
    return run_training(c, [&](const StepMetrics& m) {
      if (crash_after > 0 && m.step == crash_after) throw Crash{};
    });
  }
};

void expect_same_run(const std::string& method, const std::string& optimizer, int64_t crash_after) {
  ResumeSetup s(method);
  s.cfg.train.optimizer = optimizer;
  s.cfg.train.save_every = 3;
  const TrainReport full = s.run("a");
  EXPECT_THROW(s.run("b", crash_after), Crash);
  const std::string root = (fs::path(s.dir / "b") / kCheckpointsDir).string();
  const auto ckpts = list_checkpoints(root);
  ASSERT_FALSE(ckpts.empty());
  const int64_t at = read_checkpoint(ckpts.front()).progress.step;
  EXPECT_EQ(at, crash_after / 3 * 3);
  EXPECT_LE(ckpts.size(), 2u) << "train.keep_last 2";
  const TrainReport resumed = s.run("b", 0, "latest");
  EXPECT_EQ(resumed.first_step, at);
  ASSERT_EQ(resumed.steps.size() + static_cast<size_t>(at), full.steps.size());
  for (size_t i = 0; i < resumed.steps.size(); ++i) {
    const StepMetrics& x = full.steps[at + i];
    const StepMetrics& y = resumed.steps[i];
    EXPECT_EQ(x.step, y.step);
    EXPECT_EQ(x.loss, y.loss) << "step " << x.step;  // bitwise
    EXPECT_EQ(x.grad_norm, y.grad_norm) << "step " << x.step;
    EXPECT_EQ(x.tokens, y.tokens) << "step " << x.step;
  }
  // The final weights, byte for byte, and the metrics of every step (timings aside) line for line.
  const char* weights = method == "full" ? "model.safetensors" : "adapter_model.safetensors";
  EXPECT_EQ(slurp(fs::path(s.dir / "a") / weights), slurp(fs::path(s.dir / "b") / weights)) << weights;
  std::istringstream ma(slurp(s.dir / "a/metrics.jsonl")), mb(slurp(s.dir / "b/metrics.jsonl"));
  int lines = 0;
  for (std::string la, lb; std::getline(ma, la) && std::getline(mb, lb); ++lines)
    EXPECT_EQ(la.substr(0, la.find("\"tokens_per_s\"")), lb.substr(0, lb.find("\"tokens_per_s\""))) << lines;
  EXPECT_EQ(lines, 14);
}

TEST(Resume, LoraWithDropoutAndPackingIsBitwiseTheUninterruptedRun) {
  for (int64_t crash : {4, 7, 13}) expect_same_run("lora", "adamw", crash);
}

TEST(Resume, EightBitAdamWIsBitwiseTheUninterruptedRun) { expect_same_run("lora", "adamw_8bit", 8); }

TEST(Resume, FullFineTuningIsBitwiseTheUninterruptedRun) { expect_same_run("full", "adamw", 5); }

TEST(Resume, DamagedCheckpointIsRefusedAndThePreviousOneUsed) {
  ResumeSetup s("lora");
  s.cfg.train.save_every = 3;
  s.cfg.train.keep_last = 0;
  EXPECT_THROW(s.run("b", 10), Crash);  // checkpoints at 3, 6, 9
  const auto ckpts = list_checkpoints((fs::path(s.dir / "b") / kCheckpointsDir).string());
  ASSERT_EQ(ckpts.size(), 3u);
  {  // flip one byte of the newest one's state
    std::fstream f(fs::path(ckpts.front()) / "state.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    char c = 0;
    f.read(&c, 1);
    f.seekp(200);
    c = static_cast<char>(c ^ 0x5a);
    f.write(&c, 1);
  }
  try {
    read_checkpoint(ckpts.front());
    FAIL() << "a damaged checkpoint was read";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not match the manifest"), std::string::npos) << e.what();
  }
  fs::resize_file(fs::path(ckpts[1]) / "metrics.jsonl", 10);  // the next one truncated
  try {
    read_checkpoint(ckpts[1]);
    FAIL() << "a truncated checkpoint was read";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("(truncated?)"), std::string::npos) << e.what();
  }
  const TrainReport r = s.run("b", 0, "latest");
  EXPECT_EQ(r.first_step, 3);  // the intact one
}

TEST(Resume, ChangedRecipeIsRefusedNamingTheKey) {
  ResumeSetup s("lora");
  s.cfg.train.save_every = 2;
  EXPECT_THROW(s.run("b", 5), Crash);
  s.cfg.train.lr = 3e-2;
  try {
    s.run("b", 0, "latest");
    FAIL() << "resumed with another learning rate";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("(train.lr: 0.01 -> 0.03)"), std::string::npos) << e.what();
  }
  s.cfg.train.lr = 1e-2;
  s.cfg.train.max_steps = 20;  // extending the run is allowed
  s.cfg.train.log_every = 5;
  EXPECT_EQ(s.run("b", 0, "latest").first_step, 4);
}

TEST(Resume, AutoStartsWhenThereIsNoCheckpointAndContinuesWhenThereIs) {
  ResumeSetup s("lora");
  s.cfg.train.save_every = 4;
  s.cfg.train.resume = "auto";
  EXPECT_THROW(s.run("b", 6), Crash);
  EXPECT_EQ(s.run("b").first_step, 4);  // as a restarted worker would
  ResumeSetup fresh("lora");
  fresh.cfg.train.resume = "auto";
  EXPECT_EQ(fresh.run("c").first_step, 0);
  try {
    fresh.run("d", 0, "latest");
    FAIL() << "--resume without a checkpoint";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no checkpoint to resume from"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ftune
