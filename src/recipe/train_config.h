// Everything `ftune train` is told: the validated result of a YAML recipe plus `--set`
// overrides. Every key has a documented entry in train_config.cpp's key table, which is
// also the source of `--help-config` and docs/config.md.
#pragma once
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "data/data_settings.h"

namespace ftune {

struct LoraSettings {
  int64_t r = 8;
  double alpha = 16.0;
  double dropout = 0.0;
  std::vector<std::string> target_modules = {"q_proj", "k_proj", "v_proj", "o_proj",
                                             "gate_proj", "up_proj", "down_proj"};
  bool use_rslora = false;
  std::string init_adapter;  // existing PEFT adapter dir to start from; "" = fresh init
};


struct TrainSettings {
  std::string method = "lora";     // lora, qlora or full
  std::string optimizer = "adamw";  // adamw, adamw_8bit or paged_adamw_8bit
  int64_t micro_batch_size = 4;
  int64_t grad_accum = 1;
  int64_t max_steps = 100;  // optimizer steps
  double epochs = 0.0;      // > 0: train this many passes over data.train instead (sets max_steps)
  int64_t early_stopping_patience = 0;  // stop after this many evaluations without a better validation loss; 0 = off
  double lr = 2e-4;
  std::string schedule = "cosine";  // "constant", "linear", "cosine"
  int64_t warmup_steps = 0;
  double min_lr_ratio = 0.0;        // cosine/linear end at lr * min_lr_ratio
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double max_grad_norm = 1.0;       // <= 0 disables clipping
  uint64_t seed = 42;
  bool gradient_checkpointing = false;
  bool offload_activations = false;  // checkpointed layer inputs in pinned host memory (GPU)
  bool deterministic = false;        // GPU: attention's backward sums in a fixed order (bitwise repeatable)
  bool optimizer_offload = false;    // full fine-tuning on the GPU: masters and moments on the host
  std::string max_memory;            // GPU memory cap per rank ("15GiB", "16000MB"); empty = the GPU's
  bool shuffle = true;
  int64_t eval_every = 0;          // 0 = evaluate at the end only
  int64_t log_every = 1;
  int64_t threads = 0;              // 0 = all cores; more than the cores is capped to them
  std::string device = "cpu";       // cpu, cuda or auto
  std::string precision = "auto";   // GPU storage: auto, bf16, fp16 or fp32
  int64_t save_every = 0;           // checkpoint every this many steps (and at the end); 0 = none
  int64_t keep_last = 2;            // complete checkpoints kept; 0 = all
  std::string resume = "never";     // never, or auto: continue from the latest checkpoint when there is one
  double grace_s = 25.0;            // after SIGTERM/SIGINT: the checkpoint must be written within this
  bool save_merged = false;         // LoRA/QLoRA: also write base + adapter as a model in output_dir/merged
  std::vector<std::string> report_to = {"jsonl"};  // jsonl (metrics.jsonl, always written), tensorboard
};

struct DistSettings {
  int64_t zero = 0;          // 0: data parallel (gradients all-reduced); 1, 2, 3: ZeRO stages
  int64_t pipeline = 1;      // pipeline stages: the layers split over this many ranks (1: none)
  double timeout_s = 300.0;  // rendezvous and every collective fail after this long
};

struct TrainConfig {
  std::string model;       // HF model directory
  std::string output_dir;
  bool overwrite = false;
  std::set<std::string> given;  // the keys the recipe or --set gave (the others hold defaults)
  std::string resume_from;      // `--resume` ("latest") or `--resume DIR`; not a recipe key
  LoraSettings lora;
  DataSettings data;
  TrainSettings train;
  DistSettings dist;
};

// Reads a YAML recipe, applies `key=value` overrides (dotted keys, e.g. lora.r=16), validates.
// Errors are one line naming the file and key; an unknown key names the closest valid key.
// Relative paths in the recipe are resolved against the recipe's directory.
TrainConfig load_train_config(const std::string& yaml_path, const std::vector<std::string>& overrides);
TrainConfig parse_train_config(const std::string& yaml_text, const std::string& label,
                               const std::vector<std::string>& overrides, const std::string& base_dir);
// A configuration train_config_to_yaml wrote (a checkpoint's), read back as it was.
TrainConfig read_resolved_config(const std::string& yaml_text, const std::string& label);
// The resolved configuration as YAML (written to output_dir/config.yaml).
std::string train_config_to_yaml(const TrainConfig& cfg);
// Keys whose values differ between two configurations, with both values ("key: a -> b").
std::vector<std::string> train_config_differences(const TrainConfig& before, const TrainConfig& now);
// Markdown documentation of every key: name, type, default, meaning.
std::string train_config_help();

}  // namespace ftune
