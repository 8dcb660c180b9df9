// `ftune data dump --data PATH [--columns a,b] [-n N]`: rows as ftune reads them, as JSONL.
// `ftune data preview RECIPE [-n N]`: the first examples as the model sees them, with the parts
// that are not trained on marked, token counts, and the batching/packing summary.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "core/error.h"
#include "data/batcher.h"
#include "data/dataset.h"
#include "data/row_source.h"
#include "model/llama_config.h"
#include "tokenizer/tokenizer.h"
#include "train/run_data.h"
#include "recipe/train_config.h"

namespace ftune {

namespace {

struct Enough {};  // stops reading once -n rows were printed

void dump(const std::string& path, const std::vector<std::string>& columns, int64_t limit) {
  RowSourceOptions opt;
  opt.columns = columns;
  int64_t printed = 0, bad = 0;
  try {
    read_rows(
        path, opt,
        [&](const RowRef&, const nlohmann::json& row) {
          if (limit > 0 && printed >= limit) throw Enough{};
          nlohmann::json out = row;
          if (!columns.empty()) {  // JSONL and text rows carry every field; keep the asked ones
            out = nlohmann::json::object();
            for (const auto& c : columns)
              if (row.contains(c)) out[c] = row[c];
          }
          std::fputs(out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str(), stdout);
          std::fputc('\n', stdout);
          ++printed;
        },
        [&](const RowRef& at, const std::string& reason) {
          ++bad;
          fmt::print(stderr, "ftune: skipped {}: {}\n", at.str(), reason);
        });
  } catch (const Enough&) {
  }
  fmt::print(stderr, "ftune: {} rows printed, {} malformed rows skipped\n", printed, bad);
}

void preview(const std::string& recipe, const std::vector<std::string>& sets, int64_t n) {
  const TrainConfig cfg = load_train_config(recipe, sets);
  const LlamaConfig mcfg = load_llama_config(cfg.model);
  const RunData run = load_run_data(cfg, mcfg);  // exactly what `ftune train` reads
  const Tokenizer* tok = run.tokenizer.get();
  const DataSplit& d = run.split;
  const bool tty = isatty(1);
  const char* open = tty ? "\033[2m" : "\u27e6";  // dim on a terminal, else ⟦ ⟧ around untrained text
  const char* close = tty ? "\033[0m" : "\u27e7";
  fmt::print("data: {} | template {}\n", d.train_stats.summary(), d.template_name);
  for (const auto& p : d.train_stats.problems) fmt::print("skipped {}\n", p);
  for (int64_t i = 0; i < std::min<int64_t>(n, static_cast<int64_t>(d.train.size())); ++i) {
    const Example& e = d.train[i];
    int64_t trained = 0;
    for (size_t t = 1; t < e.labels.size(); ++t) trained += e.labels[t] != -100;
    fmt::print("\n--- example {}: {} tokens, {} trained (untrained text is marked {}like this{})\n", i + 1, e.ids.size(),
               trained, open, close);
    std::string out;
    for (size_t a = 0; a < e.ids.size();) {
      const bool on = e.labels[a] != -100;
      size_t b = a;
      std::vector<int32_t> run;
      while (b < e.ids.size() && (e.labels[b] != -100) == on) run.push_back(e.ids[b++]);
      std::string text;
      if (tok) {
        text = tok->decode(run);
      } else {
        for (int32_t id : run) text += fmt::format("{} ", id);
      }
      out += on ? text : open + text + close;
      a = b;
    }
    fmt::print("{}\n", out);
  }
  // What batching does with one epoch: rows, padding or packing fill.
  const int32_t pad = static_cast<int32_t>(mcfg.eos_token_ids.empty() ? 0 : mcfg.eos_token_ids[0]);
  MicroBatcher it(d.train, cfg.train.micro_batch_size, false, cfg.train.seed, pad,
                  cfg.data.packing ? cfg.data.max_seq_len : 0, cfg.data.pad_to_multiple_of);
  int64_t rows = 0, slots = 0, tokens = 0, batches = 0;
  do {
    const Batch b = it.next();
    rows += b.batch;
    slots += b.n();
    tokens += b.tokens;
    ++batches;
  } while (it.state().cursor < d.train.size());
  fmt::print("\n{}: {} examples -> {} micro-batches, {} rows, {} of {} token slots used ({:.1f}%)\n",
             cfg.data.packing ? "packing" : "padding", d.train.size(), batches, rows, tokens, slots,
             100.0 * static_cast<double>(tokens) / static_cast<double>(std::max<int64_t>(1, slots)));
  if (!d.val.empty()) fmt::print("validation: {}\n", d.val_stats.summary());
}

}  // namespace

void add_data_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("data", "Look at datasets as ftune reads them");
  cmd->require_subcommand(1);
  struct Args {
    std::string path, recipe;
    std::vector<std::string> columns, sets;
    int64_t n = 0;
  };
  auto a = std::make_shared<Args>();
  auto* d = cmd->add_subcommand("dump", "Print rows (JSONL, Parquet, text) as JSON lines");
  d->add_option("--data", a->path, "File or directory")->required();
  d->add_option("--columns", a->columns, "Only these columns (comma-separated)")->delimiter(',');
  d->add_option("-n", a->n, "At most this many rows (default: all)");
  d->callback([a, d] {
    if (d->count("-n") && a->n < 1) fail("data dump: -n must be at least 1, found {}", a->n);
    dump(a->path, a->columns, a->n);
  });
  auto* p = cmd->add_subcommand("preview", "Show the first examples of a recipe as the model sees them");
  p->add_option("recipe", a->recipe, "YAML recipe")->required();
  p->add_option("-n", a->n, "Examples to show (default 3)");
  p->add_option("--set", a->sets, "Override a recipe key (repeatable)");
  p->callback([a, p] {
    if (p->count("-n") && a->n < 1) fail("data preview: -n must be at least 1, found {}", a->n);
    preview(a->recipe, a->sets, a->n > 0 ? a->n : 3);
  });
}

}  // namespace ftune
