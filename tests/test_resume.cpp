// Checkpoints and exact resume on the CPU: a run stopped after any step and resumed from its last
// checkpoint gives bitwise the losses, gradient norms and final weights of the uninterrupted run
// (LoRA with dropout and packing, 8-bit AdamW, full fine-tuning with fp32 or 8-bit moments); damaged checkpoints are refused
// and the one before used; a changed recipe is refused naming the key.
#include <signal.h>
#include <sys/resource.h>

#include "resume_util.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;
using testing::Crash;
using testing::ResumeSetup;
using testing::slurp;

void expect_bitwise(const std::string& method, const std::string& optimizer, int64_t crash_after) {
  ResumeSetup s(method);
  s.cfg.train.optimizer = optimizer;
  testing::expect_same_run(s, crash_after);
}

TEST(Resume, LoraWithDropoutAndPackingIsBitwiseTheUninterruptedRun) {
  for (int64_t crash : {4, 7, 13}) expect_bitwise("lora", "adamw", crash);
}

TEST(Resume, EightBitAdamWIsBitwiseTheUninterruptedRun) { expect_bitwise("lora", "adamw_8bit", 8); }

TEST(Resume, FullFineTuningIsBitwiseTheUninterruptedRun) { expect_bitwise("full", "adamw", 5); }

TEST(Resume, FullFineTuningWithEightBitMomentsIsBitwiseTheUninterruptedRun) { expect_bitwise("full", "adamw_8bit", 7); }

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

// A full disk while a checkpoint is written: the write fails, its partial files are removed, the
// previous checkpoint stays complete and readable, and the error says so. The file-size limit
// (RLIMIT_FSIZE, with SIGXFSZ ignored so that writes past it fail with EFBIG) stands for the full
// disk: the same failed write(2) path as ENOSPC.
TEST(Resume, DiskFullWhileSavingKeepsThePreviousCheckpoint) {
  testing::TempDir dir("diskfull");
  const std::string root = (fs::path(dir / "checkpoints")).string();
  BackendState small, big;
  small.f32["w"] = testing::randn(1000, 1);
  big.f32["w"] = testing::randn(1 << 20, 2);  // 4 MiB: past the limit below
  const std::string first = write_checkpoint(root, {3, {}, 0}, small, "model: m\n", "{}\n", 2);
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  rlimit lim = old;
  lim.rlim_cur = 1 << 20;
  auto* prev = signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
  std::string what;
  try {
    write_checkpoint(root, {6, {}, 0}, big, "model: m\n", "{}\n", 2);
  } catch (const Error& e) {
    what = e.what();
  }
  setrlimit(RLIMIT_FSIZE, &old);
  signal(SIGXFSZ, prev);
  EXPECT_NE(what.find("checkpoint of step 6 not written"), std::string::npos) << what;
  EXPECT_NE(what.find("state.safetensors: cannot write: File too large"), std::string::npos) << what;
  EXPECT_NE(what.find("the previous checkpoint " + first + " is intact"), std::string::npos) << what;
  EXPECT_EQ(list_checkpoints(root), std::vector<std::string>{first});
  EXPECT_EQ(read_checkpoint(first).state.f32.at("w"), small.f32.at("w"));
  int leftovers = 0;
  for (const auto& e : fs::directory_iterator(root)) leftovers += e.path().filename().string().starts_with(".tmp-");
  EXPECT_EQ(leftovers, 0) << "the partial checkpoint was left behind";
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
