// `ftune train`: checks the inputs, builds the backend, runs the steps (train/engine.cpp) with
// the schedule, metrics, validation and progress, and at the end writes the adapter (LoRA, QLoRA)
// or the whole model as a Hugging Face directory (full fine-tuning), all staged until complete.
#include "train/trainer.h"

#include <zlib.h>

#include <fmt/format.h>
#include <omp.h>
#include <cblas.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/rng.h"
#include "data/batcher.h"
#include "data/dataset.h"
#include "io/checkpoint.h"
#include "io/peft_adapter.h"
#include "model/hf_export.h"
#include "model/merge.h"
#include "model/llama.h"
#include "optim/adamw.h"
#include "optim/schedule.h"
#include "params/param_table.h"
#include "dist/communicator.h"
#include "dist/pipeline.h"
#include "dist/rendezvous.h"
#include "dist/topology.h"
#include "train/backend.h"
#include "train/engine.h"
#include "train/loss_plot.h"
#include "train/tensorboard.h"
#include "train/metrics_log.h"
#include "train/progress.h"
#include "train/run_data.h"
#include "train/run_output.h"
#include "train/run_checkpoint.h"
#include "train/stop_signal.h"

namespace ftune {

namespace fs = std::filesystem;

namespace {

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  f.flush();
  if (!f) fail("{}: cannot write", path);
}

// The process's resident memory in bytes (Linux /proc/self/statm), 0 when unknown.
size_t resident_bytes() {
  std::ifstream f("/proc/self/statm");
  size_t pages = 0, resident = 0;
  if (!(f >> pages >> resident)) return 0;
  return resident * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

std::string last_part_of(const std::string& key) { return key.substr(key.rfind('.') + 1); }

// lora.init_adapter: the adapter's r, alpha, targets and rsLoRA replace the defaults; a value the
// recipe gives that differs from the adapter's is refused, naming both.
void adopt_init_adapter(TrainConfig& cfg, const LoraSpec& from) {
  const std::string where = cfg.lora.init_adapter + "/adapter_config.json";
  auto check = [&](const char* key, const std::string& ours, const std::string& theirs) {
    if (cfg.given.count(key) && ours != theirs)
      fail("{}: {} is {} but the recipe sets {} = {}; drop {} from the recipe to continue the adapter as saved", where,
           last_part_of(key), theirs, key, ours, key);
  };
  check("lora.r", fmt::format("{}", cfg.lora.r), fmt::format("{}", from.r));
  check("lora.alpha", fmt::format("{}", cfg.lora.alpha), fmt::format("{}", from.alpha));
  check("lora.use_rslora", cfg.lora.use_rslora ? "true" : "false", from.use_rslora ? "true" : "false");
  std::vector<std::string> mine = cfg.lora.target_modules;
  std::sort(mine.begin(), mine.end());
  check("lora.target_modules", fmt::format("[{}]", fmt::join(mine, ", ")),
        fmt::format("[{}]", fmt::join(from.target_names(), ", ")));
  cfg.lora.r = from.r;
  cfg.lora.alpha = from.alpha;
  cfg.lora.use_rslora = from.use_rslora;
  cfg.lora.target_modules = from.target_names();
}

// More threads than hardware threads only adds contention (and far more exhausts the OpenMP
// runtime); 0 means all of them.
int thread_count(int64_t asked, int local_ranks) {
  const int hw = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  if (asked <= 0) return std::max(1, hw / std::max(1, local_ranks));  // ranks of one node share its cores
  if (asked > hw) fmt::print(stderr, "ftune: train.threads = {} is more than the {} hardware threads; using {}\n", asked, hw, hw);
  return static_cast<int>(std::min<int64_t>(asked, hw));
}

// The checkpoint to continue from: `--resume DIR`, or with `--resume` / train.resume auto the
// newest intact one under root (a damaged one is reported and the one before it used).
std::optional<Checkpoint> find_resume(const TrainConfig& cfg, const std::string& root) {
  if (!cfg.resume_from.empty() && cfg.resume_from != "latest") return read_checkpoint(cfg.resume_from);
  if (cfg.resume_from.empty() && cfg.train.resume != "auto") return std::nullopt;
  const auto dirs = list_checkpoints(root);
  if (dirs.empty()) {
    if (cfg.resume_from == "latest") fail("{}: no checkpoint to resume from", root);
    return std::nullopt;  // train.resume auto: nothing yet, so start
  }
  std::string first_reason;
  for (const auto& d : dirs) {
    try {
      return read_checkpoint(d);
    } catch (const Error& e) {
      fmt::print(stderr, "ftune: checkpoint not usable, trying the one before: {}\n", e.what());
      if (first_reason.empty()) first_reason = e.what();
    }
  }
  fail("{}: no intact checkpoint (the newest: {})", root, first_reason);
}

// A resumed run must be the run that was checkpointed: any key that changes what is computed is
// refused; those that only change how far it goes or what it reports may differ. dist.zero and
// dist.pipeline only change where the state lives (a checkpoint holds it whole, in the layout of an
// unsharded run, whatever the stage or the pipeline), so a run may resume with others.
void check_resumable(const Checkpoint& ck, const TrainConfig& now) {
  static const std::set<std::string> kMayChange = {"output_dir",        "overwrite",      "train.max_steps",
                                                   "train.log_every",   "train.eval_every", "train.save_every",
                                                   "train.keep_last",   "train.resume",   "train.threads",
                                                   "train.grace_s",     "train.report_to", "dist.zero",
                                                   "dist.pipeline"};
  const TrainConfig before = read_resolved_config(ck.config_yaml, ck.dir + "/config.yaml");
  for (const std::string& d : train_config_differences(before, now))
    if (!kMayChange.count(d.substr(0, d.find(':'))))
      fail("{}: cannot resume: the run was checkpointed with another setting ({}); resume with the recipe it had, or "
           "start afresh in another output_dir",
           ck.dir, d);
}

void check_steps_left(const Checkpoint& ck, int64_t max_steps) {
  if (max_steps <= ck.progress.step)
    fail("{}: cannot resume: the checkpoint is at step {} and train.max_steps is {}; raise train.max_steps to train on",
         ck.dir, ck.progress.step, max_steps);
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

TrainReport run_training(const TrainConfig& recipe, const std::function<void(const StepMetrics&)>& on_step) {
  TrainConfig cfg = recipe;  // as resolved for this run (an init adapter's settings included)
  const TrainSettings& ts = cfg.train;
  const dist::Topology topo = dist::topology_from_env();
  const bool writer = topo.rank == 0;  // rank 0 writes output_dir, checkpoints and the log
  const int threads = thread_count(ts.threads, topo.local_world);
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
  // Everything the user can get wrong is checked before any long work starts, and nothing is
  // written until the run really starts (a failed start leaves output_dir as it was).
  const std::string ckpt_root = (fs::path(cfg.output_dir) / kCheckpointsDir).string();
  const std::optional<Checkpoint> resume = find_resume(cfg, ckpt_root);
  std::optional<RunOutput> out;
  if (writer) out.emplace(cfg.output_dir, cfg.overwrite || resume.has_value(), std::vector<std::string>{cfg.model});
  const LlamaConfig mcfg = load_llama_config(cfg.model);
  const CheckpointReader ckpt(cfg.model);
  check_llama_checkpoint(mcfg, ckpt);
  const RunPlan plan = make_run_plan(cfg, "recipe");
  // Several ranks: they meet through the store, check that they run the same recipe, and connect.
  std::unique_ptr<dist::Store> store;
  std::unique_ptr<dist::Communicator> comm;
  if (topo.world > 1) {
    const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(cfg.dist.timeout_s * 1000));
    store = dist::connect_store(topo, timeout);
    const std::string yaml = train_config_to_yaml(cfg);
    dist::check_same_plan(*store, topo.rank, topo.world,
                          fmt::format("{:08x}", crc32(0, reinterpret_cast<const Bytef*>(yaml.data()), yaml.size())));
    comm = dist::make_gloo_communicator(*store, topo.rank, topo.world, timeout);
  }
  // A pipeline: the communicator of this rank's pipeline (its stages) and, with several pipelines,
  // that of this stage's replicas (the data-parallel sum).
  const dist::PipelinePlace place = dist::pipeline_place(topo.rank, topo.world, plan.pipeline);
  std::unique_ptr<dist::Store> pipe_store, data_store;
  std::unique_ptr<dist::Communicator> pipe_comm, data_comm;
  PipelineComms pipeline{place, comm.get(), nullptr};
  if (plan.pipeline > 1 && place.replicas > 1) {
    const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(cfg.dist.timeout_s * 1000));
    pipe_store = dist::prefixed(*store, fmt::format("pipeline{}", place.replica));
    pipe_comm = dist::make_gloo_communicator(*pipe_store, place.stage, place.stages, timeout);
    data_store = dist::prefixed(*store, fmt::format("stage{}", place.stage));
    data_comm = dist::make_gloo_communicator(*data_store, place.replica, place.replicas, timeout);
    pipeline.pipe = pipe_comm.get(), pipeline.data = data_comm.get();
  }
  // The log of rank 0; the others run quietly (their errors still reach stderr).
  std::unique_ptr<FILE, int (*)(FILE*)> devnull(writer ? nullptr : std::fopen("/dev/null", "w"), &std::fclose);
  FILE* log = writer ? stderr : devnull.get();
  if (topo.world > 1)
    fmt::print(log, "ftune: {} ranks ({} per node, launched by {}), {}\n", topo.world, topo.local_world, topo.launcher,
               plan.pipeline > 1 ? "pipeline parallel"
               : plan.zero == 0  ? "data parallel"
               : plan.zero == 3 && plan.method != Method::Full
                   ? "ZeRO stage 3 over the frozen base (FSDP-QLoRA style), the adapter data parallel"
               : plan.zero == 3
                   ? "ZeRO stage 3 (weights, gradients and optimizer state sharded)"
                   : fmt::format("ZeRO stage {} (optimizer state{} sharded)", plan.zero, plan.zero == 2 ? " and gradients" : ""));
  const bool full = plan.method == Method::Full;
  LoraParams lora;
  if (full) {
    for (int64_t l = 0; l < mcfg.num_hidden_layers; ++l)
      for (int p = 0; p < kNumProj; ++p)
        if (stored_quantized(ckpt, l, static_cast<Proj>(p)))
          fail("{}: the checkpoint holds 4-bit (bitsandbytes) weights; train.method=full needs the model in bf16, fp16 "
               "or fp32", cfg.model);
  } else if (!cfg.lora.init_adapter.empty()) {
    adopt_init_adapter(cfg, load_peft_config(cfg.lora.init_adapter));
    lora = load_peft_adapter(cfg.lora.init_adapter, mcfg);
    lora.spec.dropout = cfg.lora.dropout;
  } else {
    lora = LoraParams::init(mcfg, lora_spec(cfg.lora), ts.seed);
  }
  const LoraSpec& spec = lora.spec;
  if (resume) check_resumable(*resume, cfg);
  const RunData run_data = load_run_data(cfg, mcfg);
  const DataSplit& data = run_data.split;
  const std::vector<Example>& examples = data.train;
  const DatasetStats& stats = data.train_stats;

  if (full)
    fmt::print(log, "ftune: {} layers, hidden {}; full fine-tuning of all {:.1f}M parameters\n", mcfg.num_hidden_layers,
               mcfg.hidden_size, static_cast<double>(mcfg.num_parameters()) / 1e6);
  else
    fmt::print(log, "ftune: {} layers, hidden {}, {:.1f}M base parameters; LoRA r={} alpha={} on {} ({:.2f}M trainable)\n",
               mcfg.num_hidden_layers, mcfg.hidden_size, static_cast<double>(mcfg.num_parameters()) / 1e6, spec.r,
               spec.alpha, fmt::join(spec.target_names(), ","), static_cast<double>(lora.num_parameters()) / 1e6);
  fmt::print(log, "ftune: train: {} (template {}, max_seq_len {})\n", stats.summary(), data.template_name,
             cfg.data.max_seq_len);
  for (const auto& p : stats.problems) fmt::print(log, "ftune:   skipped {}\n", p);
  if (!data.val.empty()) fmt::print(log, "ftune: validation: {}\n", data.val_stats.summary());

  int64_t longest = 0;
  for (const auto* set : {&data.train, &data.val})
    for (const auto& e : *set) longest = std::max<int64_t>(longest, static_cast<int64_t>(e.ids.size()));
  ModelOptions mopt;
  mopt.max_batch = ts.micro_batch_size;
  const int64_t m = cfg.data.pad_to_multiple_of;
  mopt.max_seq = ((cfg.data.packing ? std::max(longest, cfg.data.max_seq_len) : longest) + m - 1) / m * m;
  mopt.gradient_checkpointing = plan.checkpointing;
  if (plan.pipeline > 1) {  // this stage's layers, split by their weights' memory
    const std::vector<int64_t> bounds =
        dist::split_llama_layers(mcfg, plan.pipeline, plan.method == Method::Qlora, runs_on_gpu(plan));
    mopt.first_layer = bounds[place.stage], mopt.end_layer = bounds[place.stage + 1];
    mopt.slots = dist::pipeline_slots(plan.pipeline, place.stage, plan.grad_accum);
    std::string groups;
    for (int st = 0; st < plan.pipeline; ++st)
      groups += fmt::format("{}{}-{}", st ? ", " : "", bounds[st], bounds[st + 1] - 1);
    fmt::print(log, "ftune: pipeline of {} stages x {} replica{} (layers {}); 1F1B over {} micro-batches, bubble {:.1f}%\n",
               plan.pipeline, place.replicas, place.replicas > 1 ? "s" : "", groups, plan.grad_accum,
               100.0 * dist::pipeline_bubble(plan.pipeline, plan.grad_accum));
  }
  const auto model = make_backend(mcfg, ckpt, lora, BackendOptions{mopt, plan, topo, store.get(), cfg.dist.timeout_s, comm.get(),
                                                                      plan.pipeline > 1 ? pipeline.pipe : nullptr});
  fmt::print(log, "ftune: running on {}\n", model->name());
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  if (model->planned_bytes())
    fmt::print(log, "ftune: device memory planned {:.2f} GiB (weights, activations, adapter and optimizer state)\n",
               static_cast<double>(model->planned_bytes()) / kGiB);
  // Padding never reaches the loss or, through the causal mask, a real token; any valid id will do.
  const int32_t pad = static_cast<int32_t>(mcfg.pad_token_id >= 0        ? mcfg.pad_token_id
                                           : !mcfg.eos_token_ids.empty() ? mcfg.eos_token_ids[0]
                                                                         : 0);
  MicroBatcher batcher(examples, ts.micro_batch_size, ts.shuffle, ts.seed, pad,
                       cfg.data.packing ? cfg.data.max_seq_len : 0, cfg.data.pad_to_multiple_of);
  if (ts.epochs > 0) {  // the steps of that many passes, from the first epoch's micro-batches
    MicroBatcher count(examples, ts.micro_batch_size, ts.shuffle, ts.seed, pad,
                       cfg.data.packing ? cfg.data.max_seq_len : 0, cfg.data.pad_to_multiple_of);
    int64_t per_epoch = 0;
    do {
      count.next();
      ++per_epoch;
    } while (count.state().cursor < examples.size());
    cfg.train.max_steps = std::max<int64_t>(
        1, static_cast<int64_t>(std::ceil(ts.epochs * static_cast<double>(per_epoch) / static_cast<double>(ts.grad_accum))));
    fmt::print(log, "ftune: {} epochs of {} micro-batches: {} steps\n", ts.epochs, per_epoch, ts.max_steps);
  }
  if (resume) check_steps_left(*resume, ts.max_steps);
  LrSchedule sched{ts.schedule, ts.lr, ts.warmup_steps, ts.max_steps, ts.min_lr_ratio};
  int64_t first_step = 0;
  if (resume) {
    model->load_state(resume->state);
    batcher.restore(resume->progress.batcher);
    first_step = resume->progress.step;
    fmt::print(log, "ftune: resuming from {} (step {} of {})\n", resume->dir, first_step, ts.max_steps);
  }

  // The run starts: its files go to the staging directory until the adapter is complete.
  if (writer) out->begin();
  auto failed = [&](const std::string& why) {
    if (!writer) fail("{}", why);
    fail("{} (the partial run is in {}; output_dir is unchanged)", why, out->staging_dir());
  };
  if (!resume && writer) {  // a fresh run: an earlier run's checkpoints would be mistaken for this one's
    std::error_code ec;
    fs::remove_all(ckpt_root, ec);
  }
  if (writer) write_text(out->staged("config.yaml"), train_config_to_yaml(cfg));
  MetricsLog metrics(writer ? out->staged("metrics.jsonl") : "/dev/null");
  std::unique_ptr<EventWriter> events;  // live, beside the staged files: TensorBoard follows it during the run
  if (writer && std::find(ts.report_to.begin(), ts.report_to.end(), "tensorboard") != ts.report_to.end()) {
    const std::string tb = (fs::path(cfg.output_dir) / "tensorboard").string();
    if (!resume) {
      std::error_code ec;
      fs::remove_all(tb, ec);  // a fresh run's curves start alone
    }
    events = std::make_unique<EventWriter>(tb);
  }
  if (resume) {  // the metrics of the steps before the checkpoint, as they were written
    std::istringstream lines(resume->metrics);
    for (std::string line; std::getline(lines, line);)
      if (!line.empty()) metrics.write(line);
  }
  ProgressLine progress(ts.max_steps, log);
  TrainReport report;
  report.examples = stats.kept;
  report.truncated = stats.truncated;
  report.dropped = stats.dropped;
  report.skipped_steps = resume ? resume->progress.skipped_steps : 0;
  report.first_step = first_step;
  const StopSignals stop;
  double checkpoint_s = 0;  // how long the last checkpoint took to write
  // Rank 0 writes the checkpoint into `root`; under ZeRO every rank first hands it its shard.
  auto write_state = [&](const std::string& root, int64_t done, const BatcherState& data,
                         int64_t keep) -> std::string {
    std::optional<BackendState> state;
    if (writer || model->collective_state()) state = model->save_state();
    if (!writer) return "of rank 0";
    return write_checkpoint(root, {done, data, report.skipped_steps}, *state, train_config_to_yaml(cfg),
                            read_text(out->staged("metrics.jsonl")), keep);
  };
  auto save_checkpoint_at = [&](int64_t done, const BatcherState& data) -> std::string {
    const auto c0 = std::chrono::steady_clock::now();
    std::string dir = write_state(ckpt_root, done, data, ts.keep_last);
    checkpoint_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - c0).count();
    return dir;
  };
  auto save_checkpoint = [&](int64_t done) { return save_checkpoint_at(done, batcher.state()); };
  const auto t0 = std::chrono::steady_clock::now();
  Engine engine(*model, plan, ts.seed, comm.get(), plan.pipeline > 1 ? &pipeline : nullptr);
  int64_t done = first_step;  // steps completed
  double best_val = std::numeric_limits<double>::infinity();
  int64_t best_step = 0, evals_since_best = 0;
  try {
    for (int64_t step = first_step; step < ts.max_steps; ++step) {
      const auto ts0 = std::chrono::steady_clock::now();
      StepMetrics sm;
      sm.step = step + 1;
      sm.lr = sched.at(step);
      const BatcherState before = batcher.state();
      // After a stop signal, the step is abandoned between micro-batches when finishing it and then
      // writing the checkpoint would outlast train.grace_s (the time per micro-batch so far, and the
      // last checkpoint's writing time, as the estimates).
      const AbortCheck abort = [&](int64_t micro_done, int64_t micro_total) {
        if (!stop.requested()) return false;  // (the engine asks every rank, so any signalled one decides)
        const double per = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts0).count() /
                           static_cast<double>(micro_done);
        return stop.seconds_since() + per * static_cast<double>(micro_total - micro_done) + checkpoint_s > ts.grace_s;
      };
      const StepOutcome r = engine.step(batcher, step, sm.lr, abort);
      if (r.aborted) {
        const std::string dir = save_checkpoint_at(done, before);
        throw Preempted(fmt::format("stopped by signal {} during step {} of {}, abandoned to stay within "
                                    "train.grace_s={:g}: checkpoint {} of step {} written; run again with --resume (or "
                                    "train.resume: auto) to continue",
                                    stop.signal(), sm.step, ts.max_steps, ts.grace_s, dir, done));
      }
      sm.loss = r.loss;
      sm.grad_norm = r.grad_norm;
      sm.skipped = r.skipped;
      report.skipped_steps += r.skipped;
      sm.skipped_steps = report.skipped_steps;
      const auto now = std::chrono::steady_clock::now();
      sm.tokens = r.tokens;
      sm.tokens_per_s = static_cast<double>(r.tokens) / std::chrono::duration<double>(now - ts0).count();
      sm.elapsed_s = std::chrono::duration<double>(now - t0).count();
      const size_t device_bytes = model->measured_bytes();
      sm.memory_gib = static_cast<double>(device_bytes ? device_bytes : resident_bytes()) / (1024.0 * 1024.0 * 1024.0);
      metrics.write(fmt::format(
          "{{\"step\": {}, \"loss\": {}, \"lr\": {}, \"grad_norm\": {}, \"tokens\": {}, \"tokens_per_s\": {}, "
          "\"elapsed_s\": {}, \"memory_gib\": {}, \"epoch\": {}{}}}",
          sm.step, json_number(sm.loss, 6), json_number(sm.lr), json_number(sm.grad_norm, 6), sm.tokens,
          json_number(sm.tokens_per_s, 1), json_number(sm.elapsed_s, 3), json_number(sm.memory_gib, 3), batcher.epoch(),
          r.skipped ? fmt::format(", \"skipped\": true, \"skipped_steps\": {}", report.skipped_steps) : ""));
      if (ts.log_every > 0 && (sm.step % ts.log_every == 0 || sm.step == ts.max_steps)) progress.update(sm);
      if (events) {
        if (!r.skipped) events->scalar("train/loss", sm.step, sm.loss), events->scalar("train/grad_norm", sm.step, sm.grad_norm);
        events->scalar("train/lr", sm.step, sm.lr);
        events->scalar("train/tokens_per_s", sm.step, sm.tokens_per_s);
        events->scalar("train/memory_gib", sm.step, sm.memory_gib);
        if (report.skipped_steps) events->scalar("train/skipped_steps", sm.step, static_cast<double>(report.skipped_steps));
      }
      if (!data.val.empty() && ((ts.eval_every > 0 && sm.step % ts.eval_every == 0) || sm.step == ts.max_steps)) {
        const double vl = engine.validation_loss(data.val, pad, m);
        if (!std::isfinite(vl)) failed(fmt::format("step {}: the validation loss is {}", sm.step, shown_number(vl)));
        report.val_losses.emplace_back(sm.step, vl);
        if (events) events->scalar("eval/loss", sm.step, vl), events->scalar("eval/perplexity", sm.step, std::exp(vl));
        metrics.write(fmt::format("{{\"step\": {}, \"val_loss\": {}, \"val_ppl\": {}}}", sm.step, json_number(vl, 6),
                                  json_number(std::exp(vl), 4)));
        fmt::print(log, "{}ftune: step {} validation loss {:.4f} (perplexity {:.2f})\n", isatty(2) ? "\n" : "",
                   sm.step, vl, std::exp(vl));
        if (ts.early_stopping_patience > 0) {
          if (vl < best_val) {
            best_val = vl, best_step = sm.step, evals_since_best = 0;
            write_state((fs::path(ckpt_root) / "best").string(), sm.step, batcher.state(), 1);
          } else if (++evals_since_best >= ts.early_stopping_patience) {
            report.stopped_early = true;
          }
        }
      }
      report.steps.push_back(sm);
      done = sm.step;
      if (on_step) on_step(sm);
      if (engine.stop_requested(stop.requested())) {
        const std::string dir = save_checkpoint(sm.step);
        throw Preempted(fmt::format("stopped by signal {} after step {} of {}: checkpoint {} written; run again with "
                                    "--resume (or train.resume: auto) to continue",
                                    stop.signal(), sm.step, ts.max_steps, dir));
      }
      if (report.stopped_early) {
        fmt::print(log, "{}ftune: early stop after step {}: the validation loss has not improved for {} evaluations "
                   "(best {:.4f} at step {})\n",
                   isatty(2) ? "\n" : "", sm.step, ts.early_stopping_patience, best_val, best_step);
        break;
      }
      if (ts.save_every > 0 && sm.step % ts.save_every == 0 && sm.step != ts.max_steps) save_checkpoint(sm.step);
    }
    if (ts.save_every > 0) save_checkpoint(done);
    if (report.skipped_steps == done)
      failed(fmt::format("every one of the {} steps overflowed in fp16 and was skipped; nothing was trained", done));
    if (model->planned_bytes())
      fmt::print(log, "{}ftune: device memory in use at the end {:.2f} GiB (planned {:.2f} GiB)\n",
                 isatty(2) ? "\n" : "", static_cast<double>(model->measured_bytes()) / kGiB,
                 static_cast<double>(model->planned_bytes()) / kGiB);
    if (const std::string k = model->attention_kernels(); !k.empty()) fmt::print(log, "ftune: attention on {}\n", k);
    if (report.skipped_steps)
      fmt::print(log, "ftune: {} of {} steps were skipped (fp16 overflow; the loss scale was lowered)\n",
                 report.skipped_steps, ts.max_steps);
    // Under ZeRO-3 the weights are spread over the ranks: every rank takes part in gathering them,
    // tensor by tensor in the order rank 0 writes them, so no rank ever holds the whole model.
    const ParamTable table = ParamTable::full(mcfg);
    const std::function<Tensor(const ParamSpec&)> stream = full ? model->weight_stream() : nullptr;
    LlamaWeights trained;
    if (full && !stream && (writer || model->collective_state())) model->read_weights(trained);
    if (!full && (writer || model->collective_state())) model->read_adapter(lora);  // (pipeline: from every stage)
    if (!writer) {  // rank 0 writes the result
      if (stream)
        for (const ParamSpec& s : table.specs()) stream(s);
      report.wrote_outputs = false;
      return report;
    }
    if (full && stream) {
      save_hf_model(out->staging_dir(), cfg.model, table, stream, ckpt.info("model.embed_tokens.weight").dtype);
    } else if (full) {
      save_hf_model(out->staging_dir(), cfg.model, table, trained, ckpt.info("model.embed_tokens.weight").dtype);
    } else {
      save_peft_adapter(out->staging_dir(), lora, cfg.model);
      if (ts.save_merged) {
        const std::string merged = out->staged("merged");
        fs::create_directories(merged);
        save_merged_model(merged, cfg.model, lora);
      }
    }
    // The loss curves beside the metrics (a plot that cannot be drawn is not worth the run).
    try {
      write_loss_plot(read_loss_curves(out->staged("metrics.jsonl")), out->staged("loss.png"),
                      fs::absolute(cfg.output_dir).filename().string());
    } catch (const Error& e) {
      fmt::print(log, "ftune: no loss plot: {}\n", e.what());
    }
  } catch (const Preempted&) {
    throw;  // its checkpoint is the result; output_dir keeps the previous run's files
  } catch (const Error& e) {
    const std::string what = e.what();
    if (!writer || what.find(out->staging_dir()) != std::string::npos) throw;
    failed(what);
  }
  // A model saved in fewer shards than an earlier run's leaves none of that run's shards behind.
  out->commit([&](const std::string& name) {
    return full && name.starts_with("model") && (name.ends_with(".safetensors") || name == "model.safetensors.index.json");
  });
  return report;
}

}  // namespace ftune
