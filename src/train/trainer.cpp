// The training step lives here: micro-batches of one optimizer step are counted first so the
// loss is the mean over every trained token of the step (accumulation == one big batch), then
// forward/backward per micro-batch, clip, schedule, AdamW, metrics, and the adapter at the end.
#include "train/trainer.h"

#include <fmt/format.h>
#include <omp.h>
#include <cblas.h>

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/rng.h"
#include "data/batcher.h"
#include "data/dataset.h"
#include "io/checkpoint.h"
#include "io/peft_adapter.h"
#include "model/llama.h"
#include "optim/adamw.h"
#include "optim/schedule.h"
#include "tokenizer/tokenizer.h"
#include "train/backend.h"
#include "train/progress.h"

namespace ftune {

namespace fs = std::filesystem;

void prepare_output_dir(const std::string& dir, bool overwrite) {
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    if (!fs::is_directory(dir, ec)) fail("{}: output_dir exists and is not a directory", dir);
    if (!fs::is_empty(dir, ec) && !overwrite)
      fail("{}: output_dir is not empty (pass --overwrite to replace the files ftune writes there)", dir);
  }
  fs::create_directories(dir, ec);
  if (ec) fail("{}: cannot create output_dir: {}", dir, ec.message());
}

namespace {

LoraSpec spec_from_config(const LoraSettings& s) {
  LoraSpec spec;
  spec.r = s.r;
  spec.alpha = s.alpha;
  spec.dropout = s.dropout;
  spec.use_rslora = s.use_rslora;
  for (const auto& name : s.target_modules)
    for (int p = 0; p < kNumProj; ++p)
      if (name == proj_name(static_cast<Proj>(p))) spec.targets[p] = true;
  return spec;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  if (!f) fail("{}: cannot write", path);
}

// Mean loss over every trained token of the validation set (no dropout).
double validation_loss(TrainBackend& model, const std::vector<Example>& val, int64_t micro, int32_t pad, int64_t multiple) {
  double sum = 0;
  int64_t count = 0;
  for (size_t i = 0; i < val.size(); i += static_cast<size_t>(micro)) {
    std::vector<const std::vector<int32_t>*> ids, labels;
    for (size_t j = i; j < std::min(val.size(), i + static_cast<size_t>(micro)); ++j)
      ids.push_back(&val[j].ids), labels.push_back(&val[j].labels);
    const auto r = model.loss(make_batch(ids, labels, pad, multiple));
    sum += r.loss_sum;
    count += r.count;
  }
  return count ? sum / static_cast<double>(count) : 0.0;
}

uint64_t dropout_key(uint64_t seed, int64_t step, int64_t micro) {
  Rng r(seed, 0xD20F0000ull + static_cast<uint64_t>(step) * 4096 + static_cast<uint64_t>(micro));
  return r.next_u64() | 1;  // never 0, which means "no dropout"
}

}  // namespace

TrainReport run_training(const TrainConfig& cfg, const std::function<void(const StepMetrics&)>& on_step) {
  const TrainSettings& ts = cfg.train;
  if (ts.threads > 0) {
    omp_set_num_threads(static_cast<int>(ts.threads));
    openblas_set_num_threads(static_cast<int>(ts.threads));
  }
  // Everything the user can get wrong is checked before any long work starts.
  prepare_output_dir(cfg.output_dir, cfg.overwrite);
  const LlamaConfig mcfg = load_llama_config(cfg.model);
  const CheckpointReader ckpt(cfg.model);
  check_llama_checkpoint(mcfg, ckpt);
  std::unique_ptr<Tokenizer> tok;
  const bool has_tokenizer = fs::exists(fs::path(cfg.model) / "tokenizer.model") ||
                             fs::exists(fs::path(cfg.model) / "tokenizer.json");
  if (cfg.data.format == "text" || (cfg.data.format == "auto" && has_tokenizer)) tok = load_tokenizer(cfg.model);
  const DataSplit data = load_data(cfg.data, tok.get(), mcfg.vocab_size, cfg.model, ts.seed);
  const std::vector<Example>& examples = data.train;
  const DatasetStats& stats = data.train_stats;
  LoraSpec spec = spec_from_config(cfg.lora);
  LoraParams lora;
  if (!cfg.lora.init_adapter.empty()) {
    lora = load_peft_adapter(cfg.lora.init_adapter, mcfg);
    spec = lora.spec;
    spec.dropout = cfg.lora.dropout;
    lora.spec = spec;
  }
  if (cfg.lora.init_adapter.empty()) lora = LoraParams::init(mcfg, spec, ts.seed);

  write_text((fs::path(cfg.output_dir) / "config.yaml").string(), train_config_to_yaml(cfg));
  fmt::print(stderr, "ftune: {} layers, hidden {}, {:.1f}M base parameters; LoRA r={} alpha={} on {} ({:.2f}M trainable)\n",
             mcfg.num_hidden_layers, mcfg.hidden_size, static_cast<double>(mcfg.num_parameters()) / 1e6, spec.r,
             spec.alpha, fmt::join(spec.target_names(), ","), static_cast<double>(lora.num_parameters()) / 1e6);
  fmt::print(stderr, "ftune: train: {} (template {}, max_seq_len {})\n", stats.summary(), data.template_name,
             cfg.data.max_seq_len);
  for (const auto& p : stats.problems) fmt::print(stderr, "ftune:   skipped {}\n", p);
  if (!data.val.empty()) fmt::print(stderr, "ftune: validation: {}\n", data.val_stats.summary());

  int64_t longest = 0;
  for (const auto* set : {&data.train, &data.val})
    for (const auto& e : *set) longest = std::max<int64_t>(longest, static_cast<int64_t>(e.ids.size()));
  ModelOptions mopt;
  mopt.max_batch = ts.micro_batch_size;
  const int64_t m = cfg.data.pad_to_multiple_of;
  mopt.max_seq = ((cfg.data.packing ? std::max(longest, cfg.data.max_seq_len) : longest) + m - 1) / m * m;
  mopt.gradient_checkpointing = ts.gradient_checkpointing;
  BackendOptions bopt{mopt, {ts.beta1, ts.beta2, ts.eps, ts.weight_decay}, ts.precision,
                      ts.method == "qlora", ts.optimizer, ts.offload_activations};
  const auto model = make_backend(ts.device, mcfg, ckpt, lora, bopt);
  fmt::print(stderr, "ftune: running on {}\n", model->name());
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  if (model->planned_bytes())
    fmt::print(stderr, "ftune: device memory planned {:.2f} GiB (weights, activations, adapter and optimizer state)\n",
               static_cast<double>(model->planned_bytes()) / kGiB);
  LrSchedule sched{ts.schedule, ts.lr, ts.warmup_steps, ts.max_steps, ts.min_lr_ratio};
  // Padding never reaches the loss or, through the causal mask, a real token; any valid id will do.
  const int32_t pad = static_cast<int32_t>(mcfg.pad_token_id >= 0        ? mcfg.pad_token_id
                                           : !mcfg.eos_token_ids.empty() ? mcfg.eos_token_ids[0]
                                                                         : 0);
  MicroBatcher batcher(examples, ts.micro_batch_size, ts.shuffle, ts.seed, pad,
                       cfg.data.packing ? cfg.data.max_seq_len : 0, cfg.data.pad_to_multiple_of);

  const std::string metrics_path = (fs::path(cfg.output_dir) / "metrics.jsonl").string();
  std::ofstream metrics(metrics_path);
  if (!metrics) fail("{}: cannot write", metrics_path);
  ProgressLine progress(ts.max_steps, stderr);
  TrainReport report;
  report.examples = stats.kept;
  report.truncated = stats.truncated;
  report.dropped = stats.dropped;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<Batch> micro(ts.grad_accum);
  for (int64_t step = 0; step < ts.max_steps; ++step) {
    const auto ts0 = std::chrono::steady_clock::now();
    int64_t targets = 0, tokens = 0;
    for (auto& b : micro) {
      b = batcher.next();
      targets += b.count_targets();
      tokens += b.tokens;
    }
    double loss_sum = 0.0;
    const float scale = targets > 0 ? 1.0f / static_cast<float>(targets) : 0.0f;
    for (size_t m = 0; m < micro.size(); ++m)
      loss_sum += model->forward_backward(micro[m], scale, dropout_key(ts.seed, step, static_cast<int64_t>(m))).loss_sum;
    StepMetrics sm;
    sm.step = step + 1;
    sm.loss = targets > 0 ? loss_sum / static_cast<double>(targets) : 0.0;
    sm.lr = sched.at(step);
    sm.grad_norm = model->step(sm.lr, ts.max_grad_norm);
    const auto now = std::chrono::steady_clock::now();
    sm.tokens = tokens;
    sm.tokens_per_s = static_cast<double>(tokens) / std::chrono::duration<double>(now - ts0).count();
    sm.elapsed_s = std::chrono::duration<double>(now - t0).count();
    metrics << fmt::format(
        "{{\"step\": {}, \"loss\": {:.6f}, \"lr\": {:.6g}, \"grad_norm\": {:.6f}, \"tokens\": {}, \"tokens_per_s\": {:.1f}, "
        "\"elapsed_s\": {:.3f}, \"epoch\": {}}}\n",
        sm.step, sm.loss, sm.lr, sm.grad_norm, sm.tokens, sm.tokens_per_s, sm.elapsed_s, batcher.epoch());
    metrics.flush();
    if (ts.log_every > 0 && (sm.step % ts.log_every == 0 || sm.step == ts.max_steps)) progress.update(sm);
    if (!data.val.empty() && ((ts.eval_every > 0 && sm.step % ts.eval_every == 0) || sm.step == ts.max_steps)) {
      const double vl = validation_loss(*model, data.val, ts.micro_batch_size, pad, m);
      report.val_losses.emplace_back(sm.step, vl);
      metrics << fmt::format("{{\"step\": {}, \"val_loss\": {:.6f}, \"val_ppl\": {:.4f}}}\n", sm.step, vl, std::exp(vl));
      metrics.flush();
      fmt::print(stderr, "{}ftune: step {} validation loss {:.4f} (perplexity {:.2f})\n", isatty(2) ? "\n" : "", sm.step,
                 vl, std::exp(vl));
    }
    report.steps.push_back(sm);
    if (on_step) on_step(sm);
  }
  if (model->planned_bytes())
    fmt::print(stderr, "ftune: device memory in use at the end {:.2f} GiB (planned {:.2f} GiB)\n",
               static_cast<double>(model->measured_bytes()) / kGiB, static_cast<double>(model->planned_bytes()) / kGiB);
  model->read_adapter(lora);
  save_peft_adapter(cfg.output_dir, lora, cfg.model);
  return report;
}

}  // namespace ftune
