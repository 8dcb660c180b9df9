// Recipe parsing: YAML, --set overrides, path resolution, every refusal, and the key reference
// in docs/config.md. FTUNE_UPDATE_DOCS=1 rewrites the generated part of docs/config.md.
#include <gtest/gtest.h>

#include "error_util.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "core/error.h"
#include "recipe/run_plan.h"
#include "recipe/train_config.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;

// Every key of the table, spelled out so that a key dropped from the table fails here.
const std::vector<std::string> kAllKeys = {
    "model", "output_dir", "overwrite",
    "lora.r", "lora.alpha", "lora.dropout", "lora.target_modules", "lora.use_rslora", "lora.init_adapter",
    "data.train", "data.format", "data.text_field", "data.max_seq_len", "data.overflow", "data.add_bos",
    "data.add_eos",
    "data.packing", "data.pad_to_multiple_of", "data.columns", "data.template", "data.custom_template", "data.train_on", "data.text_sample_by",
    "data.val", "data.val_fraction", "data.strict", "train.eval_every", "train.device", "train.precision", "train.optimizer", "train.offload_activations", "train.deterministic", "train.optimizer_offload", "train.max_memory",
    "train.method", "train.micro_batch_size", "train.grad_accum", "train.max_steps", "train.lr", "train.schedule",
    "train.warmup_steps", "train.min_lr_ratio", "train.weight_decay", "train.beta1", "train.beta2", "train.eps",
    "train.max_grad_norm", "train.seed", "train.gradient_checkpointing", "train.shuffle", "train.log_every",
    "train.threads", "train.save_every", "train.keep_last", "train.resume", "train.save_merged", "train.epochs",
    "train.early_stopping_patience", "train.report_to", "train.grace_s", "dist.zero", "dist.pipeline", "dist.timeout_s"};

const std::vector<std::string> kAllModules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"};

constexpr const char* kMinimal = "model: /m\noutput_dir: /o\ndata:\n  train: /d/train.jsonl\n";

using testing::expect_error;

TrainConfig parse(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  return parse_train_config(yaml, "recipe.yaml", overrides, "/recipes");
}

void expect_recipe_error(const std::string& yaml, const std::string& substr) {
  expect_error([&] { parse(yaml); }, substr);
}
void expect_set_error(const std::string& item, const std::string& substr) {
  expect_error([&] { parse(kMinimal, {item}); }, substr);
}

class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() / ("ftune_train_config_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

TEST(TrainConfig, MinimalRecipeKeepsDefaults) {
  TrainConfig c = parse(kMinimal);
  const TrainConfig d;
  EXPECT_EQ(c.model, "/m");
  EXPECT_EQ(c.output_dir, "/o");
  EXPECT_EQ(c.data.train, "/d/train.jsonl");
  EXPECT_EQ(c.lora.r, d.lora.r);
  EXPECT_EQ(c.lora.target_modules, kAllModules);
  EXPECT_EQ(c.data.max_seq_len, d.data.max_seq_len);
  EXPECT_EQ(c.train.method, "lora");
  EXPECT_DOUBLE_EQ(c.train.lr, d.train.lr);
  EXPECT_EQ(c.train.seed, d.train.seed);
  // The defaults of the table are the struct's, so the YAML of a minimal recipe equals that of
  // a default TrainConfig with the three required keys filled in.
  TrainConfig e;
  e.model = "/m";
  e.output_dir = "/o";
  e.data.train = "/d/train.jsonl";
  EXPECT_EQ(train_config_to_yaml(c), train_config_to_yaml(e));
}

TEST(TrainConfig, EveryKeyIsRead) {
  TrainConfig c = parse(R"(
model: models/tiny
output_dir: out
overwrite: true
lora:
  r: 16
  alpha: 32
  dropout: 0.05
  target_modules: [q_proj, v_proj]
  use_rslora: yes
  init_adapter: adapters/start
data:
  train: data/train.jsonl
  format: input_ids
  text_field: content
  max_seq_len: 1024
  overflow: drop
  add_bos: false
  add_eos: false
  packing: true
  columns: [output=answer, instruction=question]
  template: custom
  custom_template: "Q: {prompt} A: {completion}"
  train_on: all
  text_sample_by: line
  val: data/val.jsonl
  val_fraction: 0.1
  strict: true
train:
  eval_every: 50
  method: lora
  micro_batch_size: 2
  grad_accum: 8
  max_steps: 500
  lr: 1.5e-4
  schedule: linear
  warmup_steps: 10
  min_lr_ratio: 0.1
  weight_decay: 0.01
  beta1: 0.8
  beta2: 0.95
  eps: 1e-6
  max_grad_norm: 0
  seed: 18446744073709551615
  gradient_checkpointing: true
  shuffle: false
  log_every: 5
  threads: 3
)");
  EXPECT_EQ(c.model, "/recipes/models/tiny");
  EXPECT_TRUE(c.data.packing);
  EXPECT_EQ(c.data.columns, (std::vector<std::string>{"output=answer", "instruction=question"}));
  EXPECT_EQ(c.data.template_name, "custom");
  EXPECT_EQ(c.data.custom_template, "Q: {prompt} A: {completion}");
  EXPECT_EQ(c.data.train_on, "all");
  EXPECT_EQ(c.data.text_sample_by, "line");
  EXPECT_EQ(c.data.val, "/recipes/data/val.jsonl");
  EXPECT_DOUBLE_EQ(c.data.val_fraction, 0.1);
  EXPECT_TRUE(c.data.strict);
  EXPECT_EQ(c.train.eval_every, 50);
  EXPECT_EQ(c.output_dir, "/recipes/out");
  EXPECT_TRUE(c.overwrite);
  EXPECT_EQ(c.lora.r, 16);
  EXPECT_DOUBLE_EQ(c.lora.alpha, 32);
  EXPECT_DOUBLE_EQ(c.lora.dropout, 0.05);
  EXPECT_EQ(c.lora.target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_TRUE(c.lora.use_rslora);
  EXPECT_EQ(c.lora.init_adapter, "/recipes/adapters/start");
  EXPECT_EQ(c.data.train, "/recipes/data/train.jsonl");
  EXPECT_EQ(c.data.format, "input_ids");
  EXPECT_EQ(c.data.text_field, "content");
  EXPECT_EQ(c.data.max_seq_len, 1024);
  EXPECT_EQ(c.data.overflow, "drop");
  EXPECT_FALSE(c.data.add_bos);
  EXPECT_FALSE(c.data.add_eos);
  EXPECT_EQ(c.train.micro_batch_size, 2);
  EXPECT_EQ(c.train.grad_accum, 8);
  EXPECT_EQ(c.train.max_steps, 500);
  EXPECT_DOUBLE_EQ(c.train.lr, 1.5e-4);
  EXPECT_EQ(c.train.schedule, "linear");
  EXPECT_EQ(c.train.warmup_steps, 10);
  EXPECT_DOUBLE_EQ(c.train.min_lr_ratio, 0.1);
  EXPECT_DOUBLE_EQ(c.train.weight_decay, 0.01);
  EXPECT_DOUBLE_EQ(c.train.beta1, 0.8);
  EXPECT_DOUBLE_EQ(c.train.beta2, 0.95);
  EXPECT_DOUBLE_EQ(c.train.eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.train.max_grad_norm, 0);
  EXPECT_EQ(c.train.seed, 18446744073709551615ull);
  EXPECT_TRUE(c.train.gradient_checkpointing);
  EXPECT_FALSE(c.train.shuffle);
  EXPECT_EQ(c.train.log_every, 5);
  EXPECT_EQ(c.train.threads, 3);

  // The written YAML reads back to the same configuration, awkward strings included.
  c.data.text_field = "#not: a comment, 'really'";
  c.lora.init_adapter = "";
  c.output_dir = "/runs/[1]: *x";
  c.train.lr = 1.0 / 3.0;
  const std::string yaml = train_config_to_yaml(c);
  const TrainConfig back = parse_train_config(yaml, "config.yaml", {}, "/elsewhere");
  EXPECT_EQ(train_config_to_yaml(back), yaml);
  EXPECT_EQ(back.data.text_field, c.data.text_field);
  EXPECT_EQ(back.output_dir, c.output_dir);
  EXPECT_EQ(back.lora.init_adapter, "");
  EXPECT_EQ(back.train.lr, c.train.lr);
}

TEST(TrainConfig, DottedKeysEmptySectionsAndQuotedNumbers) {
  TrainConfig c = parse(std::string(kMinimal) + "lora.r: 4\ntrain:\ndata.max_seq_len: \"64\"\n");
  EXPECT_EQ(c.lora.r, 4);
  EXPECT_EQ(c.data.max_seq_len, 64);
}

TEST(TrainConfig, TargetModulesForms) {
  auto modules = [](const std::string& v) { return parse(std::string(kMinimal) + "lora:\n  target_modules: " + v + "\n").lora.target_modules; };
  EXPECT_EQ(modules("all-linear"), kAllModules);
  EXPECT_EQ(modules("[all-linear]"), kAllModules);
  EXPECT_EQ(modules("v_proj"), std::vector<std::string>{"v_proj"});
  EXPECT_EQ(modules("q_proj, v_proj"), (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(modules("[down_proj, q_proj, down_proj]"), (std::vector<std::string>{"down_proj", "q_proj"}));
  EXPECT_EQ(modules("\n    - o_proj\n    - up_proj"), (std::vector<std::string>{"o_proj", "up_proj"}));
}

TEST(TrainConfig, OverridesWinAndParseAsYaml) {
  TrainConfig c = parse(std::string(kMinimal) + "lora:\n  r: 8\n",
                        {"lora.r=32", "lora.target_modules=[q_proj,v_proj]", "train.shuffle=false", "train.lr=3e-5",
                         "lora.r=64", "data.text_field=body", "train.schedule=constant", "lora.dropout=0.1"});
  EXPECT_EQ(c.lora.r, 64);
  EXPECT_EQ(c.lora.target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_FALSE(c.train.shuffle);
  EXPECT_DOUBLE_EQ(c.train.lr, 3e-5);
  EXPECT_EQ(c.data.text_field, "body");
  EXPECT_EQ(c.train.schedule, "constant");
  EXPECT_DOUBLE_EQ(c.lora.dropout, 0.1);
  // Required keys may come from --set alone.
  TrainConfig d = parse("", {"model=/m", "output_dir=/o", "data.train=/t.jsonl"});
  EXPECT_EQ(d.model, "/m");
  // A string value keeps everything after the first '='; an empty value clears a string.
  TrainConfig e = parse(kMinimal, {"data.text_field=a=b", "lora.init_adapter=/x", "lora.init_adapter="});
  EXPECT_EQ(e.data.text_field, "a=b");
  EXPECT_EQ(e.lora.init_adapter, "");
}

TEST(TrainConfig, PathsResolveAgainstRecipeDirOrWorkingDir) {
  TrainConfig c = parse("model: ../models/tiny\noutput_dir: /abs/out\ndata:\n  train: ./data/../data/t.jsonl\n");
  EXPECT_EQ(c.model, "/models/tiny");
  EXPECT_EQ(c.output_dir, "/abs/out");
  EXPECT_EQ(c.data.train, "/recipes/data/t.jsonl");

  TrainConfig s = parse(kMinimal, {"model=rel/model", "lora.init_adapter=adapter"});
  EXPECT_EQ(s.model, (fs::current_path() / "rel/model").lexically_normal().string());
  EXPECT_EQ(s.lora.init_adapter, (fs::current_path() / "adapter").lexically_normal().string());

  // Without a base directory, relative paths stay relative (to the working directory).
  TrainConfig n = parse_train_config("model: m\noutput_dir: o\ndata:\n  train: t.jsonl\n", "-", {}, "");
  EXPECT_EQ(n.model, "m");
  EXPECT_EQ(n.data.train, "t.jsonl");
}

TEST(TrainConfig, LoadsFileAndResolvesAgainstItsDirectory) {
  TempDir d;
  fs::create_directories(d.path() / "recipes");
  const fs::path recipe = d.path() / "recipes" / "r.yaml";
  std::ofstream(recipe) << "model: ../m\noutput_dir: out\ndata:\n  train: train.jsonl\nlora:\n  r: 4\n";
  TrainConfig c = load_train_config(recipe.string(), {"lora.alpha=8"});
  EXPECT_EQ(c.model, (d.path() / "m").string());
  EXPECT_EQ(c.output_dir, (d.path() / "recipes" / "out").string());
  EXPECT_EQ(c.data.train, (d.path() / "recipes" / "train.jsonl").string());
  EXPECT_EQ(c.lora.r, 4);
  EXPECT_DOUBLE_EQ(c.lora.alpha, 8);

  std::ofstream(recipe) << "lora:\n  rank: 4\n";
  expect_error([&] { load_train_config(recipe.string(), {}); },
               recipe.string() + ": unknown key 'lora.rank' (did you mean 'lora.r'?)");
  expect_error([&] { load_train_config((d.path() / "none.yaml").string(), {}); },
               (d.path() / "none.yaml").string() + ": not found");
}

TEST(TrainConfig, CommittedRecipesLoad) {
  const fs::path dir = fs::path(FTUNE_SOURCE_DIR) / "configs";
  if (!fs::is_directory(dir)) GTEST_SKIP() << "no configs/ directory";
  int seen = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() != ".yaml") continue;
    ++seen;
    TrainConfig c = load_train_config(e.path().string(), {});
    EXPECT_TRUE(fs::path(c.model).is_absolute()) << e.path();
    EXPECT_TRUE(fs::path(c.data.train).is_absolute()) << e.path();
  }
  EXPECT_GT(seen, 0);
}

TEST(TrainConfigErrors, UnknownKeysSuggestTheClosest) {
  expect_recipe_error("lora:\n  rank: 16\n", "recipe.yaml: unknown key 'lora.rank' (did you mean 'lora.r'?)");
  expect_recipe_error("lr: 0.1\n", "recipe.yaml: unknown key 'lr' (did you mean 'train.lr'?)");
  expect_recipe_error("train:\n  warmup: 3\n", "unknown key 'train.warmup' (did you mean 'train.warmup_steps'?)");
  expect_recipe_error("data:\n  max_seq_length: 3\n", "unknown key 'data.max_seq_length' (did you mean 'data.max_seq_len'?)");
  expect_recipe_error("train:\n  learning_rate_schedule_kind: 3\n", "unknown key 'train.learning_rate_schedule_kind' (`ftune train --help-config` lists the valid keys)");
  expect_recipe_error("optimizer:\n  lr: 1\n", "recipe.yaml: unknown key 'optimizer'");
  expect_set_error("lora.rnak=3", "--set: unknown key 'lora.rnak' (did you mean 'lora.r'?)");
  expect_set_error("lora=3", "--set: 'lora' is a section; set one of its keys");
}

TEST(TrainConfigErrors, WrongTypes) {
  expect_recipe_error("lora:\n  r: abc\n", "recipe.yaml: lora.r: expected an integer, found 'abc'");
  expect_recipe_error("lora:\n  r: 16.5\n", "lora.r: expected an integer, found '16.5'");
  expect_recipe_error("lora:\n  r: [1, 2]\n", "lora.r: expected an integer, found a list");
  expect_recipe_error("lora:\n  r:\n", "lora.r: expected an integer, found nothing");
  expect_recipe_error("train:\n  lr: fast\n", "train.lr: expected a number, found 'fast'");
  expect_recipe_error("train:\n  lr: .nan\n", "train.lr: expected a number, found '.nan'");
  expect_recipe_error("overwrite: maybe\n", "overwrite: expected true or false, found 'maybe'");
  expect_recipe_error("model: {a: 1}\n", "model: expected a string, found a mapping");
  expect_recipe_error("lora:\n  target_modules: {q: 1}\n", "lora.target_modules: expected a list of names, found a mapping");
  expect_recipe_error("train:\n  seed: -1\n", "train.seed: expected a non-negative integer, found '-1'");
  expect_recipe_error("lora: 5\n", "recipe.yaml: 'lora' must be a mapping of keys");
  expect_recipe_error("- a\n- b\n", "recipe.yaml: expected a mapping of keys at the top level, found a list");
  expect_recipe_error("lora:\n  r: [1\n", "recipe.yaml:3: invalid YAML: end of sequence flow not found");
  expect_recipe_error("model: /m\nlora: a: b\nx: 1\n", "recipe.yaml:2: invalid YAML");
  expect_recipe_error("lora:\n  r: 1\n  r: 2\n", "recipe.yaml: key 'lora.r' is given twice");
  expect_set_error("lora.r=abc", "--set: lora.r: expected an integer, found 'abc'");
  expect_set_error("train.lr=[1", "--set: train.lr: cannot read '[1' as a YAML value");
}

TEST(TrainConfigErrors, OutOfRange) {
  struct Case {
    std::string key, value, message;
  };
  const std::vector<Case> cases = {
      {"lora.r", "0", "lora.r: must be >= 1, found 0"},
      {"lora.alpha", "0", "lora.alpha: must be > 0, found 0"},
      {"lora.dropout", "1", "lora.dropout: must be in [0, 1), found 1"},
      {"lora.dropout", "-0.1", "lora.dropout: must be in [0, 1), found -0.1"},
      {"data.max_seq_len", "1", "data.max_seq_len: must be >= 2, found 1"},
      {"train.micro_batch_size", "0", "train.micro_batch_size: must be >= 1, found 0"},
      {"train.grad_accum", "0", "train.grad_accum: must be >= 1, found 0"},
      {"train.max_steps", "0", "train.max_steps: must be >= 1, found 0"},
      {"train.lr", "0", "train.lr: must be > 0, found 0"},
      {"train.lr", "-1e-4", "train.lr: must be > 0, found -1e-4"},
      {"train.warmup_steps", "-1", "train.warmup_steps: must be >= 0, found -1"},
      {"train.min_lr_ratio", "1.5", "train.min_lr_ratio: must be in [0, 1], found 1.5"},
      {"train.weight_decay", "-0.1", "train.weight_decay: must be >= 0, found -0.1"},
      {"train.beta1", "1", "train.beta1: must be in [0, 1), found 1"},
      {"train.beta2", "1.0", "train.beta2: must be in [0, 1), found 1.0"},
      {"train.beta2", "-0.5", "train.beta2: must be in [0, 1), found -0.5"},
      {"train.eps", "0", "train.eps: must be > 0, found 0"},
      {"train.log_every", "0", "train.log_every: must be >= 1, found 0"},
      {"train.threads", "-2", "train.threads: must be in [0, 4096], found -2"},
      {"train.threads", "1000000", "train.threads: must be in [0, 4096], found 1000000"},
  };
  for (const Case& c : cases) {
    expect_set_error(c.key + "=" + c.value, "--set: " + c.message);
    const auto dot = c.key.find('.');
    expect_recipe_error(fmt::format("{}{}:\n  {}: {}\n", kMinimal, c.key.substr(0, dot), c.key.substr(dot + 1), c.value),
                        "recipe.yaml: " + c.message);
  }
}

TEST(TrainConfigErrors, EnumValues) {
  expect_set_error("train.schedule=step", "--set: train.schedule: must be one of 'constant', 'linear', 'cosine', found 'step'");
  expect_set_error("data.overflow=wrap", "data.overflow: must be one of 'truncate', 'drop', found 'wrap'");
  expect_set_error("data.format=parquet", "data.format: must be one of 'auto', 'text', 'alpaca', 'messages', 'prompt_completion', 'input_ids', found 'parquet'");
  expect_set_error("train.method=dora", "train.method: must be one of 'lora', 'qlora', 'full', found 'dora'");
}

TEST(TrainConfigErrors, KeysTheMethodDoesNotUse) {
  const std::string base = "model: m\noutput_dir: o\ndata:\n  train: d.jsonl\ntrain:\n  method: full\n";
  EXPECT_NO_THROW(parse_train_config(base, "recipe.yaml", {}, ""));
  expect_recipe_error(base + "lora:\n  r: 16\n", "recipe.yaml: lora.r is a LoRA setting, but train.method is full");
  expect_recipe_error(base + "lora:\n  target_modules: [q_proj]\n", "recipe.yaml: lora.target_modules is a LoRA setting");
  expect_recipe_error(base + "  optimizer: paged_adamw_8bit\n",
                      "recipe.yaml: train.optimizer=paged_adamw_8bit with train.method=full is not available");
  EXPECT_NO_THROW(parse_train_config(base + "  device: cuda\n", "recipe.yaml", {}, ""));
  expect_recipe_error("model: m\noutput_dir: o\ndata:\n  train: d.jsonl\ntrain:\n  offload_activations: true\n",
                      "recipe.yaml: train.offload_activations needs train.gradient_checkpointing: true");
  // The plan carries the keys as enums.
  const RunPlan p = make_run_plan(parse(base + "  precision: fp16\n  gradient_checkpointing: true\n"), "recipe.yaml");
  EXPECT_EQ(p.method, Method::Full);
  EXPECT_EQ(p.precision, Precision::Fp16);
  EXPECT_EQ(p.optimizer, OptimizerKind::AdamW);
  EXPECT_TRUE(p.checkpointing);
  expect_recipe_error(base + "  epochs: 2\n  max_steps: 10\n", "train.epochs and train.max_steps both set the length");
  expect_recipe_error(base + "  early_stopping_patience: 3\n", "train.early_stopping_patience needs validation losses");
  // The same recipe as LoRA takes those keys.
  const std::string lora = "model: m\noutput_dir: o\ndata:\n  train: d.jsonl\nlora:\n  r: 16\n";
  EXPECT_NO_THROW(parse_train_config(lora, "recipe.yaml", {}, ""));
  expect_set_error("lora.target_modules=[q_proj,lm_head]", "lora.target_modules: 'lm_head' is not one of 'q_proj'");
  expect_set_error("lora.target_modules=[]", "lora.target_modules: must name at least one module");
}

TEST(TrainConfigErrors, MaxMemoryAndZero3) {
  EXPECT_EQ(parse_memory_size("15GiB", "k"), int64_t{15} << 30);
  EXPECT_EQ(parse_memory_size("16000MB", "k"), int64_t{16000000000});
  EXPECT_EQ(parse_memory_size("1.5 GB", "k"), int64_t{1500000000});
  EXPECT_EQ(parse_memory_size("123456", "k"), 123456);
  EXPECT_EQ(parse_memory_size("512KiB", "k"), 512 * 1024);
  for (const char* bad : {"15XB", "-1GiB", "0", "GiB", "fifteen", "1e30GB"})
    testing::expect_error([&] { parse_memory_size(bad, "train.max_memory"); },
                          fmt::format("train.max_memory: '{}' is not a memory size", bad));
  const std::string base = "model: m\noutput_dir: o\ndata:\n  train: d.jsonl\ntrain:\n  method: full\n";
  expect_recipe_error(base + "  max_memory: 15GiB\n", "recipe.yaml: train.max_memory caps GPU memory, but train.device is cpu");
  expect_recipe_error(base + "  device: cuda\n  max_memory: 15 gigs\n", "recipe.yaml: train.max_memory: '15 gigs' is not a memory size");
  EXPECT_EQ(make_run_plan(parse(base + "  device: cuda\n  max_memory: 15GiB\n"), "r").max_memory, int64_t{15} << 30);
  // ZeRO-3: full fine-tuning only; on the CPU fp32 AdamW; its 8-bit GPU moments are not checkpointed yet.
  EXPECT_EQ(make_run_plan(parse(base + "dist:\n  zero: 3\n"), "r").zero, 3);
  expect_recipe_error(base + "  device: cuda\n  optimizer: adamw_8bit\n  save_every: 10\ndist:\n  zero: 3\n",
                      "recipe.yaml: checkpoints (train.save_every) of dist.zero=3 with train.optimizer adamw_8bit");
  EXPECT_EQ(make_run_plan(parse(base + "  device: cuda\n  optimizer: adamw_8bit\ndist:\n  zero: 3\n"), "r").zero, 3);
  EXPECT_EQ(make_run_plan(parse(base + "  device: cuda\ndist:\n  zero: 2\n"), "r").zero, 2);  // the GPU's ZeRO 1 and 2
  expect_recipe_error(base + "  device: cuda\n  optimizer_offload: true\ndist:\n  zero: 1\n",
                      "recipe.yaml: dist.zero=1 with train.optimizer_offload is not available");
  expect_recipe_error(base + "  optimizer: adamw_8bit\ndist:\n  zero: 3\n",
                      "recipe.yaml: dist.zero=3 on the CPU shards fp32 AdamW moments");
  // ZeRO-3 of an adapter's frozen base (FSDP-QLoRA), any optimizer for the adapter; stages 1-2 shard
  // only full fine-tuning's state.
  const std::string q = "model: m\noutput_dir: o\ndata:\n  train: d.jsonl\ntrain:\n  method: qlora\n";
  EXPECT_EQ(make_run_plan(parse(q + "  optimizer: paged_adamw_8bit\n  save_every: 5\ndist:\n  zero: 3\n"), "r").zero, 3);
  expect_recipe_error(q + "dist:\n  zero: 1\n", "recipe.yaml: dist.zero=1 shards full fine-tuning's optimizer state");
  // The pipeline: any method, not with ZeRO; 8-bit moments are not checkpointed under it yet.
  EXPECT_EQ(make_run_plan(parse(base + "dist:\n  pipeline: 4\n"), "r").pipeline, 4);
  expect_recipe_error(base + "dist:\n  pipeline: 2\n  zero: 3\n",
                      "recipe.yaml: dist.pipeline=2 with dist.zero=3 is not available");
  expect_recipe_error(base + "  optimizer: adamw_8bit\n  save_every: 5\ndist:\n  pipeline: 2\n",
                      "recipe.yaml: checkpoints (train.save_every) of dist.pipeline=2 with train.optimizer adamw_8bit");
  expect_recipe_error(base + "dist:\n  pipeline: 0\n", "dist.pipeline");
}

TEST(TrainConfigErrors, RequiredKeysAndMalformedSet) {
  expect_recipe_error("output_dir: /o\ndata:\n  train: /t\n", "recipe.yaml: required key 'model' is missing");
  expect_recipe_error("model: /m\ndata:\n  train: /t\n", "recipe.yaml: required key 'output_dir' is missing");
  expect_recipe_error("model: /m\noutput_dir: /o\n", "recipe.yaml: required key 'data.train' is missing");
  expect_recipe_error("model:\noutput_dir: /o\ndata:\n  train: /t\n", "recipe.yaml: required key 'model' is missing");
  expect_recipe_error("", "recipe.yaml: required key 'model' is missing");
  expect_set_error("lora.r16", "--set 'lora.r16': expected key=value");
  expect_set_error("=16", "--set '=16': expected key=value");
}

TEST(TrainConfigHelp, ListsEveryKeyWithItsDefault) {
  const std::string help = train_config_help();
  for (const std::string& k : kAllKeys) EXPECT_NE(help.find("| `" + k + "` |"), std::string::npos) << k;
  // One row per key plus the two header lines.
  EXPECT_EQ(std::count(help.begin(), help.end(), '\n'), static_cast<long>(kAllKeys.size()) + 2);
  EXPECT_NE(help.find("| `lora.r` | integer | `8` | >= 1 |"), std::string::npos) << help;
  EXPECT_NE(help.find("| `model` | path | required |"), std::string::npos) << help;
  EXPECT_NE(help.find("| `train.lr` | number | `0.0002` | > 0 |"), std::string::npos) << help;
  // The YAML written next to the outputs names every key too.
  const std::string yaml = train_config_to_yaml(parse(kMinimal));
  for (const std::string& k : kAllKeys) {
    const auto dot = k.find('.');
    EXPECT_NE(yaml.find(dot == std::string::npos ? k + ":" : k.substr(dot + 1) + ":"), std::string::npos) << k;
  }
}

TEST(TrainConfigHelp, DocsConfigMdIsCurrent) {
  const fs::path doc = fs::path(FTUNE_SOURCE_DIR) / "docs" / "config.md";
  const std::string marker = "<!-- generated from train_config_help(); edit src/train/train_config.cpp -->\n";
  std::ifstream in(doc);
  ASSERT_TRUE(in) << doc << " is missing";
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  const auto at = text.find(marker);
  ASSERT_NE(at, std::string::npos) << doc << " lacks the marker line";
  const std::string generated = text.substr(at + marker.size());
  if (const char* update = std::getenv("FTUNE_UPDATE_DOCS"); update && std::string(update) == "1") {
    std::ofstream(doc) << text.substr(0, at + marker.size()) << train_config_help();
    return;
  }
  EXPECT_EQ(generated, train_config_help()) << doc << " is stale: run test_train_config with FTUNE_UPDATE_DOCS=1";
  for (const std::string& k : kAllKeys) EXPECT_NE(generated.find("`" + k + "`"), std::string::npos) << k;
}

}  // namespace
}  // namespace ftune
