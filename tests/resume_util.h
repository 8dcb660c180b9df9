// The resume-equivalence harness shared by the CPU and GPU resume tests: a tiny model and data set,
// a run crashed after a step (an exception thrown from the step callback stands for the killed
// process) and resumed from its latest checkpoint, compared with the uninterrupted run.
#pragma once
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "io/safetensors.h"
#include "model/presets.h"
#include "model/weights.h"
#include "test_util.h"
#include "train/run_checkpoint.h"
#include "train/trainer.h"

namespace ftune::testing {

namespace fs = std::filesystem;

inline std::string slurp(const fs::path& p) {
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

// tol 0: the resumed run must be bitwise the uninterrupted one (losses, norms, saved weights);
// otherwise within tol relative (losses, norms, each saved tensor). *worst_out: the worst relative
// difference seen (0 when bitwise).
inline void expect_same_run(ResumeSetup& s, int64_t crash_after, double tol = 0.0, double* worst_out = nullptr) {
  const std::string method = s.cfg.train.method;
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
  double worst = 0;
  EXPECT_EQ(resumed.first_step, at);
  ASSERT_EQ(resumed.steps.size() + static_cast<size_t>(at), full.steps.size());
  for (size_t i = 0; i < resumed.steps.size(); ++i) {
    const StepMetrics& x = full.steps[at + i];
    const StepMetrics& y = resumed.steps[i];
    EXPECT_EQ(x.step, y.step);
    EXPECT_EQ(x.tokens, y.tokens) << "step " << x.step;
    if (tol == 0.0) {
      EXPECT_EQ(x.loss, y.loss) << "step " << x.step;  // bitwise
      EXPECT_EQ(x.grad_norm, y.grad_norm) << "step " << x.step;
    }
    worst = std::max({worst, std::abs(x.loss - y.loss) / std::abs(x.loss),
                      std::abs(x.grad_norm - y.grad_norm) / std::abs(x.grad_norm)});
  }
  EXPECT_LE(worst, tol);
  // The final weights, byte for byte, and the metrics of every step (timings aside) line for line.
  const char* weights = method == "full" ? "model.safetensors" : "adapter_model.safetensors";
  if (tol == 0.0) {
    EXPECT_EQ(slurp(fs::path(s.dir / "a") / weights), slurp(fs::path(s.dir / "b") / weights)) << weights;
  } else {
    const SafetensorsFile fa = SafetensorsFile::open((fs::path(s.dir / "a") / weights).string());
    const SafetensorsFile fb = SafetensorsFile::open((fs::path(s.dir / "b") / weights).string());
    for (const auto& t : fa.tensors()) {
      const double e = rel_err(fb.read_f32(t.name).data, fa.read_f32(t.name).data);
      EXPECT_LE(e, tol) << t.name;
      worst = std::max(worst, e);
    }
  }
  std::istringstream ma(slurp(s.dir / "a/metrics.jsonl")), mb(slurp(s.dir / "b/metrics.jsonl"));
  int lines = 0;
  for (std::string la, lb; std::getline(ma, la) && std::getline(mb, lb); ++lines)
    EXPECT_EQ(la.substr(0, la.find("\"tokens_per_s\"")), lb.substr(0, lb.find("\"tokens_per_s\""))) << lines;
  if (tol == 0.0) {
    EXPECT_EQ(lines, 14);
  }
  if (worst_out) *worst_out = worst;
}

}  // namespace ftune::testing
