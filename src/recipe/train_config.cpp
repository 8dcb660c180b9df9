// Recipe parsing for `ftune train`: one key table drives YAML reading, `--set` overrides,
// validation, the Markdown key reference and the YAML written next to the outputs.
#include "recipe/train_config.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <string_view>
#include <variant>

#include "core/error.h"
#include "recipe/run_plan.h"

namespace ftune {
namespace {

namespace fs = std::filesystem;

using IntRef = int64_t& (*)(TrainConfig&);
using SeedRef = uint64_t& (*)(TrainConfig&);
using RealRef = double& (*)(TrainConfig&);
using BoolRef = bool& (*)(TrainConfig&);
using TextRef = std::string& (*)(TrainConfig&);
using ListRef = std::vector<std::string>& (*)(TrainConfig&);
using Field = std::variant<IntRef, SeedRef, RealRef, BoolRef, TextRef, ListRef>;

// Numeric bounds of a key; absent sides are unbounded.
struct Range {
  std::optional<double> lo, hi;
  bool lo_open = false, hi_open = false;
};
Range at_least(double v) { return {v, std::nullopt, false, false}; }
Range above(double v) { return {v, std::nullopt, true, false}; }
Range from_to_open(double a, double b) { return {a, b, false, true}; }
Range from_to(double a, double b) { return {a, b, false, false}; }

struct KeyDef {
  std::string_view name;
  Field field;
  std::string_view doc;
  bool required = false;
  bool path = false;  // relative values are resolved (see resolve_path)
  Range range{};
  std::vector<std::string_view> choices{};  // for lists: allowed per element
};

constexpr std::string_view kAllLinear = "all-linear";
// No machine ftune runs on has more hardware threads; a larger value is a typo.
constexpr double kMaxThreads = 4096;

// Non-capturing lambdas decay to the function-pointer alternatives of Field.
#define FT_FIELD(member) +[](TrainConfig& c) -> auto& { return c.member; }

const std::vector<KeyDef>& key_table() {
  static const std::vector<KeyDef> kTable = {
      {.name = "model", .field = FT_FIELD(model), .doc = "Hugging Face model directory (`config.json`, `*.safetensors`, `tokenizer.model`).", .required = true, .path = true},
      {.name = "output_dir", .field = FT_FIELD(output_dir), .doc = "Where the adapter, config.yaml and metrics are written.", .required = true, .path = true},
      {.name = "overwrite", .field = FT_FIELD(overwrite), .doc = "Allow replacing ftune's files in an output_dir that is not empty."},
      {.name = "lora.r", .field = FT_FIELD(lora.r), .doc = "LoRA rank.", .range = at_least(1)},
      {.name = "lora.alpha", .field = FT_FIELD(lora.alpha), .doc = "LoRA alpha; the update is scaled by alpha / r (alpha / sqrt(r) with use_rslora).", .range = above(0)},
      {.name = "lora.dropout", .field = FT_FIELD(lora.dropout), .doc = "Dropout probability on the input of the LoRA branch (a mask per projection, as peft draws it). At 0 the GPU runs the A projections that share an input as one GEMM, a few percent faster.", .range = from_to_open(0, 1)},
      {.name = "lora.target_modules", .field = FT_FIELD(lora.target_modules), .doc = "Linear layers that get adapters; `all-linear` means all seven.",
       .choices = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}},
      {.name = "lora.use_rslora", .field = FT_FIELD(lora.use_rslora), .doc = "Rank-stabilized LoRA: scale by alpha / sqrt(r) instead of alpha / r."},
      {.name = "lora.init_adapter", .field = FT_FIELD(lora.init_adapter), .doc = "PEFT adapter directory to start from; empty means a fresh initialization.", .path = true},
      {.name = "data.train", .field = FT_FIELD(data.train), .doc = "Training data: a JSONL file (one example per line), a `.json` file (JSON lines, or one array of rows), a Parquet file, a plain-text file (`.txt`, `.md`), or a directory of them (a Hugging Face datasets directory of Parquet shards included).", .required = true, .path = true},
      {.name = "data.format", .field = FT_FIELD(data.format), .doc = "Row format: `text` (causal LM on raw text), `alpaca` (instruction/input/output), `messages` (role/content lists), `prompt_completion`, `input_ids` (with optional `labels`); `auto` decides per row.",
       .choices = {"auto", "text", "alpaca", "messages", "prompt_completion", "input_ids"}},
      {.name = "data.text_field", .field = FT_FIELD(data.text_field), .doc = "Field that holds the text of a `text` row (plain-text files put their text here)."},
      {.name = "data.columns", .field = FT_FIELD(data.columns), .doc = "Field renames, `name=column`: e.g. `[output=answer, instruction=question]` (names: text instruction input output system messages role content prompt completion input_ids labels)."},
      {.name = "data.template", .field = FT_FIELD(data.template_name), .doc = "Prompt template for instruction and chat rows; `auto` takes the model's tokenizer_config.json chat_template (Llama 2, Llama 3, Llama 3.1 with its dated default system turn, ChatML) and falls back to alpaca.",
       .choices = {"auto", "llama2", "llama3", "llama3.1", "mistral", "chatml", "alpaca", "custom"}},
      {.name = "data.custom_template", .field = FT_FIELD(data.custom_template), .doc = "For data.template=custom: text with {prompt} and {completion} (and optionally {system}), e.g. `Q: {prompt} A: {completion}`."},
      {.name = "data.train_on", .field = FT_FIELD(data.train_on), .doc = "Tokens the loss is computed on: the `completion` (answers; instruction and chat rows) or `all`.",
       .choices = {"completion", "all"}},
      {.name = "data.text_sample_by", .field = FT_FIELD(data.text_sample_by), .doc = "How plain-text files (.txt, .md) become rows.", .choices = {"document", "paragraph", "line"}},
      {.name = "data.val", .field = FT_FIELD(data.val), .doc = "Validation data (same forms as data.train); empty = none, or split off by data.val_fraction.", .path = true},
      {.name = "data.val_fraction", .field = FT_FIELD(data.val_fraction), .doc = "Fraction of data.train held out for validation (deterministic from train.seed) when data.val is empty.", .range = from_to(0, 0.5)},
      {.name = "data.strict", .field = FT_FIELD(data.strict), .doc = "Fail on the first malformed row instead of skipping, counting and reporting it."},
      {.name = "data.max_seq_len", .field = FT_FIELD(data.max_seq_len), .doc = "Longest example in tokens; longer rows are handled as data.overflow says.", .range = at_least(2)},
      {.name = "data.overflow", .field = FT_FIELD(data.overflow), .doc = "What happens to rows longer than data.max_seq_len: cut them or skip them (both are counted).",
       .choices = {"truncate", "drop"}},
      {.name = "data.add_bos", .field = FT_FIELD(data.add_bos), .doc = "Prepend the tokenizer's BOS token to `text` rows."},
      {.name = "data.add_eos", .field = FT_FIELD(data.add_eos), .doc = "Append the tokenizer's EOS token to `text` rows."},
      {.name = "data.pad_to_multiple_of", .field = FT_FIELD(data.pad_to_multiple_of), .doc = "Round each micro-batch's row length up to a multiple of this (8 keeps GPU matrix shapes aligned; 1 = no rounding).", .range = at_least(1)},
      {.name = "data.packing", .field = FT_FIELD(data.packing), .doc = "Concatenate examples into rows of data.max_seq_len tokens; positions restart and attention never crosses an example boundary."},
      {.name = "train.method", .field = FT_FIELD(train.method), .doc = "Fine-tuning method: `lora` on the base as stored (bf16 on the GPU), `qlora`: the seven projections of every layer frozen in NF4 with double quantization (bitsandbytes' format, blocks of 64), LoRA in bf16 on top, or `full`: every weight trains (fp32 master weights and AdamW moments, weight decay on matrices only, as transformers' Trainer groups them; on the GPU bf16 or fp16 compute copies) and output_dir receives a Hugging Face model directory in the base's dtype.", .choices = {"lora", "qlora", "full"}},
      {.name = "train.optimizer", .field = FT_FIELD(train.optimizer), .doc = "`adamw` (fp32 moments), `adamw_8bit` (moments in 8 bits, blockwise as bitsandbytes), or `paged_adamw_8bit` (the 8-bit moments in host memory, streamed to the GPU around each step).", .choices = {"adamw", "adamw_8bit", "paged_adamw_8bit"}},
      {.name = "train.micro_batch_size", .field = FT_FIELD(train.micro_batch_size), .doc = "Sequences per forward and backward pass.", .range = at_least(1)},
      {.name = "train.grad_accum", .field = FT_FIELD(train.grad_accum), .doc = "Micro-batches whose gradients are summed per optimizer step.", .range = at_least(1)},
      {.name = "train.max_steps", .field = FT_FIELD(train.max_steps), .doc = "Optimizer steps to run.", .range = at_least(1)},
      {.name = "train.epochs", .field = FT_FIELD(train.epochs), .doc = "Passes over data.train, instead of train.max_steps (which it sets: the micro-batches of one epoch, times the epochs, over train.grad_accum, rounded up); fractions are allowed. 0 = use train.max_steps.", .range = at_least(0)},
      {.name = "train.early_stopping_patience", .field = FT_FIELD(train.early_stopping_patience), .doc = "Stop when the validation loss has not improved for this many evaluations (train.eval_every); the best step's checkpoint is kept in output_dir/checkpoints/best (CPU runs). 0 = off.", .range = at_least(0)},
      {.name = "train.lr", .field = FT_FIELD(train.lr), .doc = "Peak learning rate.", .range = above(0)},
      {.name = "train.schedule", .field = FT_FIELD(train.schedule), .doc = "Learning-rate decay after warmup.", .choices = {"constant", "linear", "cosine"}},
      {.name = "train.warmup_steps", .field = FT_FIELD(train.warmup_steps), .doc = "Steps of linear warmup from 0 to train.lr.", .range = at_least(0)},
      {.name = "train.min_lr_ratio", .field = FT_FIELD(train.min_lr_ratio), .doc = "Final learning rate of the linear and cosine schedules, as a fraction of train.lr.", .range = from_to(0, 1)},
      {.name = "train.weight_decay", .field = FT_FIELD(train.weight_decay), .doc = "AdamW decoupled weight decay.", .range = at_least(0)},
      {.name = "train.beta1", .field = FT_FIELD(train.beta1), .doc = "AdamW first-moment decay.", .range = from_to_open(0, 1)},
      {.name = "train.beta2", .field = FT_FIELD(train.beta2), .doc = "AdamW second-moment decay.", .range = from_to_open(0, 1)},
      {.name = "train.eps", .field = FT_FIELD(train.eps), .doc = "AdamW denominator epsilon.", .range = above(0)},
      {.name = "train.max_grad_norm", .field = FT_FIELD(train.max_grad_norm), .doc = "Clip the global gradient norm to this value; 0 or less disables clipping."},
      {.name = "train.seed", .field = FT_FIELD(train.seed), .doc = "Seed for adapter initialization, dropout and shuffling."},
      {.name = "train.gradient_checkpointing", .field = FT_FIELD(train.gradient_checkpointing), .doc = "Keep only block inputs and recompute activations in backward: less memory, about a third more compute. On the GPU, a micro-batch of more than 16384 tokens then also runs its MLP 8192 tokens at a time (forward, recompute and backward), so long sequences need only a chunk's gate, up and SwiGLU buffers."},
      {.name = "train.deterministic", .field = FT_FIELD(train.deterministic), .doc = "On the GPU, make a run repeat bit for bit on the same GPU and build: the flash attention backward adds each key block's share of dQ in a fixed order (key blocks ascending, each waiting for the one before) instead of with unordered atomic adds, as FlashAttention's deterministic mode does. Also keeps attention on ftune's flash kernels, not cuDNN's fused ones, whose backward is not repeatable. Costs backward attention time; everything else on the GPU, and all of the CPU, is repeatable already."},
      {.name = "train.offload_activations", .field = FT_FIELD(train.offload_activations), .doc = "With gradient checkpointing on the GPU: keep each layer's saved input in pinned host memory (three on the device), copied out and back on a side stream while the layers compute. Saves (layers - 2) x tokens x hidden x 2 bytes of device memory."},
      {.name = "train.max_memory", .field = FT_FIELD(train.max_memory), .doc = "The device memory one rank may use, as Hugging Face's `max_memory` writes it: a number with B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024), e.g. `15GiB` for a T4's usable memory when ranks share a larger GPU. The plan must fit under it (counting the CUDA context), or the run is refused before anything loads with the plan's numbers and the settings that would fit; while training, each rank's measured use is checked against it after every step. Empty: the GPU's free memory is the limit."},
      {.name = "train.optimizer_offload", .field = FT_FIELD(train.optimizer_offload), .doc = "Full fine-tuning on the GPU: the fp32 master weights and AdamW moments live in host memory and the CPU threads update them, with the gradients and new weights streamed over PCIe in chunks (ZeRO-Offload's idea). The GPU holds only the compute copy, the gradients and the activations: a Llama-2-7B full fine-tune fits one 80 GB GPU. Needs train.optimizer adamw."},
      {.name = "train.shuffle", .field = FT_FIELD(train.shuffle), .doc = "Shuffle the examples every epoch."},
      {.name = "train.eval_every", .field = FT_FIELD(train.eval_every), .doc = "Validation loss every this many steps (and at the end) when there is validation data; 0 = only at the end.", .range = at_least(0)},
      {.name = "train.log_every", .field = FT_FIELD(train.log_every), .doc = "Log metrics every this many optimizer steps.", .range = at_least(1)},
      {.name = "train.device", .field = FT_FIELD(train.device), .doc = "Where to train: `cpu` (fp32 reference), `cuda` (one GPU), or `auto` (cuda when present).",
       .choices = {"cpu", "cuda", "auto"}},
      {.name = "train.precision", .field = FT_FIELD(train.precision), .doc = "Storage of weights and activations on the GPU: `bf16` (fp32 accumulation, fp32 adapter and optimizer state; sm_80 and newer), `fp16` with dynamic loss scaling (for GPUs without bf16, such as the T4), `fp32` (the exact twin of the CPU model), or `auto`: bf16 where the GPU has it, else fp32. The CPU model is always fp32.",
       .choices = {"auto", "bf16", "fp16", "fp32"}},
      {.name = "train.save_every", .field = FT_FIELD(train.save_every), .doc = "Write a checkpoint (weights, optimizer state, data position; everything a run needs to continue exactly) every this many steps and at the end, under output_dir/checkpoints/; 0 = none (a stop signal still writes one).", .range = at_least(0)},
      {.name = "train.keep_last", .field = FT_FIELD(train.keep_last), .doc = "Complete checkpoints kept (older ones are deleted once a newer one is complete); 0 = all.", .range = at_least(0)},
      {.name = "train.resume", .field = FT_FIELD(train.resume), .doc = "`auto`: continue from the latest intact checkpoint in output_dir when there is one (what a restarted worker needs), else start; `never`: start afresh (`ftune train --resume` asks for it once).", .choices = {"never", "auto"}},
      {.name = "train.grace_s", .field = FT_FIELD(train.grace_s), .doc = "Seconds between a stop signal (SIGTERM, SIGINT) and the end of the checkpoint it triggers: the step in progress finishes when it can within this time, otherwise it is abandoned at the next micro-batch and the checkpoint holds the step before. The default fits Kubernetes' 30 s termination grace period.", .range = at_least(0.0)},
      {.name = "train.save_merged", .field = FT_FIELD(train.save_merged), .doc = "LoRA and QLoRA: also write the base with the adapter folded in (W + scaling B A, from the base in its original precision) as a Hugging Face model directory in output_dir/merged, in the base's dtype."},
      {.name = "train.report_to", .field = FT_FIELD(train.report_to), .doc = "Where the metrics go as the run goes: `jsonl` (output_dir/metrics.jsonl: one line per step with loss, lr, grad_norm, tokens, tokens/s, memory in use; one per evaluation with val_loss and val_ppl; always written, since checkpoints and plots read it) and `tensorboard` (the same scalars as TensorBoard event files in output_dir/tensorboard: `tensorboard --logdir output_dir`).", .choices = {"jsonl", "tensorboard"}},
      {.name = "dist.zero", .field = FT_FIELD(dist.zero), .doc = "With several ranks (torchrun, Kubernetes, Slurm, or `ftune train --nproc-per-node N`): 0 is data parallelism, every rank holding the whole model and the gradients summed over the ranks after each step's backward; 1 and 2 are ZeRO's stages for train.method full: each rank keeps the AdamW moments of its shard of the weights only and updates that part (1), and receives only that part of the summed gradients (2), with results bit for bit those of 0; 3 also shards the weights themselves (FSDP-style: each unit, the embedding, a decoder layer or the lm_head, is all-gathered before it runs and freed after, and its gradient reduce-scattered right after its backward), so a rank holds 1/N of the weights, gradients and optimizer state. With train.method lora or qlora, 3 shards the frozen base the same way (FSDP-QLoRA: each rank keeps 1/N of it, a unit gathered just before it runs) and the adapter runs data parallel; on the GPU the QLoRA base is sharded as its NF4 bytes (blocks of 64, double-quantized), and ranks that share a GPU read each other's pieces through CUDA IPC (FTUNE_NO_CUDA_IPC=1: through host memory). On the GPU, 1 and 2 are one mode: the gradients are reduce-scattered unit by unit as the backward produces them (each rank keeps its piece), the optimizer state is sharded, and after each step the updated pieces are all-gathered into the whole weights every rank keeps.", .range = from_to(0, 3)},
      {.name = "dist.pipeline", .field = FT_FIELD(dist.pipeline), .doc = "Pipeline parallelism: the decoder layers are split over this many ranks (the stages; the embedding on the first, the final norm, lm_head and loss on the last), in contiguous groups balanced by their weights' memory, so a model too large for one GPU trains on several. Each step's train.grad_accum micro-batches flow through the stages in a 1F1B schedule (one forward, one backward), the hidden states and their gradients passed stage to stage; the idle share of a step (the bubble) is (stages - 1) / (micro-batches + stages - 1), which `ftune plan` prints: raise train.grad_accum to shrink it. The ranks' number must be a multiple of it: consecutive ranks form one pipeline, and the pipelines run data parallel. Works with LoRA, QLoRA and full fine-tuning (dist.zero 0).", .range = at_least(1)},
      {.name = "dist.timeout_s", .field = FT_FIELD(dist.timeout_s), .doc = "Seconds the ranks wait for each other, at the start and in every collective, before the run stops with an error naming the ranks that did not arrive.", .range = above(0)},
      {.name = "train.threads", .field = FT_FIELD(train.threads), .doc = "CPU threads; 0 means all cores, and more than the machine's cores is capped to them.", .range = from_to(0, kMaxThreads)},
  };
  return kTable;
}

#undef FT_FIELD

const KeyDef* find_key(std::string_view name) {
  for (const KeyDef& k : key_table())
    if (k.name == name) return &k;
  return nullptr;
}

bool is_section(std::string_view name) {
  for (const KeyDef& k : key_table())
    if (k.name.size() > name.size() && k.name.substr(0, name.size()) == name && k.name[name.size()] == '.') return true;
  return false;
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

std::string_view last_part(std::string_view name) {
  auto dot = name.rfind('.');
  return dot == std::string_view::npos ? name : name.substr(dot + 1);
}
std::string_view section_of(std::string_view name) {
  auto dot = name.rfind('.');
  return dot == std::string_view::npos ? std::string_view{} : name.substr(0, dot);
}

// The closest key by edit distance over the full dotted name, or over the last part when the
// key sits in the wrong section (`lr` at the top level means `train.lr`).
[[noreturn]] void fail_unknown(const std::string& label, const std::string& name) {
  const KeyDef* best = nullptr;
  size_t best_score = SIZE_MAX;
  for (const KeyDef& k : key_table()) {
    const std::string_view mine = last_part(name), theirs = last_part(k.name);
    // A shortened name (`warmup` for `warmup_steps`) is as close as a one-letter typo.
    const bool shortened = mine.size() >= 3 && (theirs.starts_with(mine) || mine.starts_with(theirs));
    size_t moved = (shortened ? 1 : edit_distance(mine, theirs)) + (section_of(name) == section_of(k.name) ? 0 : 2);
    size_t score = std::min(edit_distance(name, k.name), moved);
    if (score < best_score) best_score = score, best = &k;
  }
  if (best && best_score <= std::max<size_t>(3, name.size() / 3))
    fail("{}: unknown key '{}' (did you mean '{}'?)", label, name, best->name);
  fail("{}: unknown key '{}' (`ftune train --help-config` lists the valid keys)", label, name);
}

std::string describe(const YAML::Node& v) {
  if (!v.IsDefined() || v.IsNull()) return "nothing";
  if (v.IsSequence()) return "a list";
  if (v.IsMap()) return "a mapping";
  return fmt::format("'{}'", v.Scalar());
}

// Where a value came from: the recipe (relative paths against its directory) or `--set`
// (relative paths against the working directory).
struct Source {
  std::string label;
  std::string base_dir;
  bool from_command_line = false;
};

std::string resolve_path(const std::string& value, const Source& src) {
  if (value.empty() || fs::path(value).is_absolute()) return value;
  if (src.from_command_line) return fs::absolute(value).lexically_normal().string();
  if (src.base_dir.empty()) return value;
  return (fs::path(src.base_dir) / value).lexically_normal().string();
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

template <typename T>
std::optional<T> parse_number(std::string_view s) {
  if (!s.empty() && s.front() == '+') s.remove_prefix(1);
  T out{};
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  if constexpr (std::is_floating_point_v<T>)
    if (!std::isfinite(out)) return std::nullopt;
  return out;
}

std::string range_text(const Range& r) {
  if (r.lo && r.hi) return fmt::format("[{}, {}{}", *r.lo, *r.hi, r.hi_open ? ")" : "]");
  if (r.lo) return fmt::format("{} {}", r.lo_open ? ">" : ">=", *r.lo);
  return "";
}

void check_range(const KeyDef& k, double v, const std::string& shown, const Source& src) {
  const Range& r = k.range;
  bool ok = (!r.lo || (r.lo_open ? v > *r.lo : v >= *r.lo)) && (!r.hi || (r.hi_open ? v < *r.hi : v <= *r.hi));
  if (!ok) {
    if (r.hi) fail("{}: {}: must be in {}, found {}", src.label, k.name, range_text(r), shown);
    fail("{}: {}: must be {}, found {}", src.label, k.name, range_text(r), shown);
  }
}

std::string quoted_list(const std::vector<std::string_view>& xs) {
  std::string out;
  for (auto x : xs) out += fmt::format("{}'{}'", out.empty() ? "" : ", ", x);
  return out;
}

void check_choice(const KeyDef& k, const std::string& v, const Source& src) {
  if (k.choices.empty()) return;
  if (std::find(k.choices.begin(), k.choices.end(), v) != k.choices.end()) return;
  fail("{}: {}: must be one of {}, found '{}'", src.label, k.name, quoted_list(k.choices), v);
}

std::string scalar_of(const KeyDef& k, const YAML::Node& v, const Source& src, const char* expected) {
  if (!v.IsScalar()) fail("{}: {}: expected {}, found {}", src.label, k.name, expected, describe(v));
  return v.Scalar();
}

std::vector<std::string> list_of(const KeyDef& k, const YAML::Node& v, const Source& src) {
  std::vector<std::string> raw;
  if (v.IsSequence()) {
    for (const YAML::Node& e : v) {
      if (!e.IsScalar()) fail("{}: {}: expected a list of names, found {} in the list", src.label, k.name, describe(e));
      raw.push_back(e.Scalar());
    }
  } else if (v.IsScalar()) {
    // `q_proj,v_proj` is accepted for a list, as is a single name.
    std::string_view s = v.Scalar();
    while (true) {
      auto comma = s.find(',');
      std::string part(s.substr(0, comma));
      part.erase(0, part.find_first_not_of(" \t"));
      part.erase(part.find_last_not_of(" \t") + 1);
      if (!part.empty()) raw.push_back(part);
      if (comma == std::string_view::npos) break;
      s.remove_prefix(comma + 1);
    }
  } else {
    fail("{}: {}: expected a list of names, found {}", src.label, k.name, describe(v));
  }
  std::vector<std::string> out;
  auto add = [&](std::string_view x) {
    if (std::find(out.begin(), out.end(), x) == out.end()) out.emplace_back(x);
  };
  for (const std::string& x : raw) {
    if (k.choices.empty()) {  // a free list (data.columns)
      add(x);
      continue;
    }
    if (x == kAllLinear) {
      for (auto c : k.choices) add(c);
      continue;
    }
    if (std::find(k.choices.begin(), k.choices.end(), x) == k.choices.end())
      fail("{}: {}: '{}' is not one of {} or '{}'", src.label, k.name, x, quoted_list(k.choices), kAllLinear);
    add(x);
  }
  if (out.empty() && !k.choices.empty()) fail("{}: {}: must name at least one module", src.label, k.name);
  return out;
}

void set_key(TrainConfig& cfg, const KeyDef& k, const YAML::Node& v, const Source& src) {
  std::visit(
      [&](auto ref) {
        using T = std::remove_reference_t<decltype(ref(cfg))>;
        if constexpr (std::is_same_v<T, int64_t>) {
          std::string s = scalar_of(k, v, src, "an integer");
          auto n = parse_number<int64_t>(s);
          if (!n) fail("{}: {}: expected an integer, found '{}'", src.label, k.name, s);
          check_range(k, static_cast<double>(*n), s, src);
          ref(cfg) = *n;
        } else if constexpr (std::is_same_v<T, uint64_t>) {
          std::string s = scalar_of(k, v, src, "a non-negative integer");
          auto n = parse_number<uint64_t>(s);
          if (!n) fail("{}: {}: expected a non-negative integer, found '{}'", src.label, k.name, s);
          ref(cfg) = *n;
        } else if constexpr (std::is_same_v<T, double>) {
          std::string s = scalar_of(k, v, src, "a number");
          auto n = parse_number<double>(s);
          if (!n) fail("{}: {}: expected a number, found '{}'", src.label, k.name, s);
          check_range(k, *n, s, src);
          ref(cfg) = *n;
        } else if constexpr (std::is_same_v<T, bool>) {
          std::string s = lower(scalar_of(k, v, src, "true or false"));
          if (s == "true" || s == "yes" || s == "on") {
            ref(cfg) = true;
          } else if (s == "false" || s == "no" || s == "off") {
            ref(cfg) = false;
          } else {
            fail("{}: {}: expected true or false, found '{}'", src.label, k.name, v.Scalar());
          }
        } else if constexpr (std::is_same_v<T, std::string>) {
          std::string s = v.IsNull() ? std::string() : scalar_of(k, v, src, "a string");
          check_choice(k, s, src);
          ref(cfg) = k.path ? resolve_path(s, src) : s;
        } else {
          static_assert(std::is_same_v<T, std::vector<std::string>>);
          ref(cfg) = list_of(k, v, src);
        }
      },
      k.field);
}

void apply_map(TrainConfig& cfg, const YAML::Node& node, const std::string& prefix, const Source& src,
               std::set<std::string>& seen) {
  for (auto it = node.begin(); it != node.end(); ++it) {
    if (!it->first.IsScalar())
      fail("{}: keys must be plain names, found {} under '{}'", src.label, describe(it->first), prefix.empty() ? "the top level" : prefix.substr(0, prefix.size() - 1));
    std::string name = prefix + it->first.Scalar();
    if (const KeyDef* k = find_key(name)) {
      if (!seen.insert(name).second) fail("{}: key '{}' is given twice", src.label, name);
      set_key(cfg, *k, it->second, src);
    } else if (is_section(name)) {
      if (it->second.IsNull()) continue;
      if (!it->second.IsMap())
        fail("{}: '{}' must be a mapping of keys ({}.<key>: value), found {}", src.label, name, name, describe(it->second));
      apply_map(cfg, it->second, name + ".", src, seen);
    } else {
      fail_unknown(src.label, name);
    }
  }
}

void apply_override(TrainConfig& cfg, const std::string& item) {
  const Source src{"--set", "", true};
  auto eq = item.find('=');
  std::string key = item.substr(0, eq);
  key.erase(0, key.find_first_not_of(" \t"));
  key.erase(key.find_last_not_of(" \t") + 1);
  if (eq == std::string::npos || key.empty())
    fail("--set '{}': expected key=value (for example --set lora.r=16)", item);
  const std::string value = item.substr(eq + 1);
  const KeyDef* k = find_key(key);
  if (!k) {
    if (is_section(key)) fail("--set: '{}' is a section; set one of its keys, e.g. {}.<key>=value", key, key);
    fail_unknown(src.label, key);
  }
  YAML::Node node;
  try {
    node = YAML::Load(value);
  } catch (const YAML::Exception&) {
    // Strings need no YAML: a path such as `a: b` is taken as written.
    if (!std::holds_alternative<TextRef>(k->field)) fail("--set: {}: cannot read '{}' as a YAML value", key, value);
    node = YAML::Node(value);
  }
  if (std::holds_alternative<TextRef>(k->field) && !node.IsScalar() && !node.IsNull()) node = YAML::Node(value);
  set_key(cfg, *k, node, src);
  cfg.given.insert(std::string(k->name));
}

std::string show_default(const KeyDef& k) {
  if (k.required) return "required";
  TrainConfig d;
  return std::visit(
      [&](auto ref) -> std::string {
        const auto& v = ref(d);
        using T = std::remove_cvref_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>) {
          return v ? "`true`" : "`false`";
        } else if constexpr (std::is_same_v<T, std::string>) {
          return v.empty() ? "`\"\"`" : fmt::format("`{}`", v);
        } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
          std::vector<std::string_view> names(v.begin(), v.end());
          std::vector<std::string_view> all(k.choices.begin(), k.choices.end());
          if (!all.empty() && names == all) return fmt::format("`{}`", kAllLinear);
          return fmt::format("`[{}]`", fmt::join(v, ", "));
        } else {
          return fmt::format("`{}`", v);
        }
      },
      k.field);
}

std::string_view type_name(const KeyDef& k) {
  if (k.path) return "path";
  if (std::holds_alternative<IntRef>(k.field) || std::holds_alternative<SeedRef>(k.field)) return "integer";
  if (std::holds_alternative<RealRef>(k.field)) return "number";
  if (std::holds_alternative<BoolRef>(k.field)) return "bool";
  if (std::holds_alternative<ListRef>(k.field)) return "list";
  return k.choices.empty() ? "string" : "choice";
}

std::string allowed_text(const KeyDef& k) {
  std::string out;
  for (auto c : k.choices) out += fmt::format("{}`{}`", out.empty() ? "" : ", ", c);
  if (std::holds_alternative<ListRef>(k.field) && !k.choices.empty()) out = fmt::format("each of {}; or `{}`", out, kAllLinear);
  if (k.range.lo) out = range_text(k.range);
  if (std::holds_alternative<SeedRef>(k.field)) out = ">= 0";
  return out;
}

}  // namespace

namespace {
TrainConfig parse_keys(const std::string& yaml_text, const std::string& label, const std::vector<std::string>& overrides,
                       const std::string& base_dir) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::DeepRecursion& e) {
    fail("{}:{}: the recipe nests deeper than {} levels", label, e.mark.line + 1, e.depth());
  } catch (const YAML::Exception& e) {
    fail("{}:{}: invalid YAML: {}", label, e.mark.line + 1, e.msg);
  }
  TrainConfig cfg;
  if (!root.IsNull()) {
    if (!root.IsMap()) fail("{}: expected a mapping of keys at the top level, found {}", label, describe(root));
    std::set<std::string> seen;
    apply_map(cfg, root, "", Source{label, base_dir, false}, seen);
    cfg.given = seen;
  }
  for (const std::string& item : overrides) apply_override(cfg, item);
  for (const KeyDef& k : key_table()) {
    if (!k.required) continue;
    if (std::get<TextRef>(k.field)(cfg).empty())
      fail("{}: required key '{}' is missing (set it in the recipe or with --set {}=...)", label, k.name, k.name);
  }
  return cfg;
}
}  // namespace

TrainConfig parse_train_config(const std::string& yaml_text, const std::string& label,
                               const std::vector<std::string>& overrides, const std::string& base_dir) {
  TrainConfig cfg = parse_keys(yaml_text, label, overrides, base_dir);
  make_run_plan(cfg, label);  // every rule across keys, checked while the recipe's name is at hand
  return cfg;
}

TrainConfig read_resolved_config(const std::string& yaml_text, const std::string& label) {
  TrainConfig cfg = parse_keys(yaml_text, label, {}, "");
  cfg.given.clear();  // every key is written there; none was the user's choice in particular
  return cfg;
}

TrainConfig load_train_config(const std::string& yaml_path, const std::vector<std::string>& overrides) {
  if (!fs::is_regular_file(yaml_path)) fail("{}: not found", yaml_path);
  std::ifstream in(yaml_path, std::ios::binary);
  if (!in) fail("{}: cannot be read", yaml_path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string base_dir = fs::absolute(yaml_path).parent_path().lexically_normal().string();
  return parse_train_config(ss.str(), yaml_path, overrides, base_dir);
}

std::string train_config_to_yaml(const TrainConfig& cfg) {
  TrainConfig c = cfg;  // the accessors hand out mutable references
  YAML::Emitter out;
  out << YAML::BeginMap;
  std::string open_section;
  for (const KeyDef& k : key_table()) {
    const std::string section(section_of(k.name));
    if (section != open_section) {
      if (!open_section.empty()) out << YAML::EndMap;
      if (!section.empty()) out << YAML::Key << section << YAML::Value << YAML::BeginMap;
      open_section = section;
    }
    out << YAML::Key << std::string(last_part(k.name)) << YAML::Value;
    std::visit(
        [&](auto ref) {
          const auto& v = ref(c);
          using T = std::remove_cvref_t<decltype(v)>;
          if constexpr (std::is_same_v<T, double>) {
            out << fmt::format("{}", v);  // shortest form that reads back exactly
          } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
            out << YAML::Flow << v;
          } else {
            out << v;
          }
        },
        k.field);
  }
  if (!open_section.empty()) out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

std::vector<std::string> train_config_differences(const TrainConfig& before, const TrainConfig& now) {
  TrainConfig a = before, b = now;
  auto text = [](TrainConfig& c, const KeyDef& k) {
    return std::visit(
        [&](auto ref) -> std::string {
          const auto& v = ref(c);
          using T = std::remove_cvref_t<decltype(v)>;
          if constexpr (std::is_same_v<T, std::vector<std::string>>) return fmt::format("[{}]", fmt::join(v, ", "));
          else if constexpr (std::is_same_v<T, bool>) return v ? "true" : "false";
          else if constexpr (std::is_same_v<T, std::string>) return v;
          else return fmt::format("{}", v);
        },
        k.field);
  };
  std::vector<std::string> out;
  for (const KeyDef& k : key_table()) {
    const std::string x = text(a, k), y = text(b, k);
    if (x != y) out.push_back(fmt::format("{}: {} -> {}", k.name, x, y));
  }
  return out;
}

std::string train_config_help() {
  std::string out = "| Key | Type | Default | Allowed | Description |\n|---|---|---|---|---|\n";
  for (const KeyDef& k : key_table())
    out += fmt::format("| `{}` | {} | {} | {} | {} |\n", k.name, type_name(k), show_default(k), allowed_text(k), k.doc);
  return out;
}

}  // namespace ftune
