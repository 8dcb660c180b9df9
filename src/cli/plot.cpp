// `ftune plot DIR [--out FILE.png]`: the loss curves of a run (finished, or in progress in
// DIR/.ftune-partial) as a PNG.
#include <fmt/format.h>

#include <filesystem>

#include "cli/commands.h"
#include "core/error.h"
#include "train/loss_plot.h"
#include "train/run_output.h"

namespace ftune {

void add_plot_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("plot", "Draw the loss curves of a run's metrics.jsonl as a PNG");
  struct Args {
    std::string dir, out;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("dir", a->dir, "The run's output_dir (or a metrics.jsonl file)")->required();
  cmd->add_option("--out", a->out, "PNG to write (default: DIR/loss.png)");
  cmd->callback([a] {
    namespace fs = std::filesystem;
    fs::path metrics = a->dir;
    if (fs::is_directory(metrics)) {
      const fs::path live = metrics / RunOutput::kStagingName / "metrics.jsonl";
      metrics = fs::exists(live) ? live : metrics / "metrics.jsonl";  // a run in progress, else the finished one
    }
    if (!fs::is_regular_file(metrics)) fail("{}: no metrics.jsonl", a->dir);
    const std::string out = a->out.empty() ? (fs::path(a->dir) / "loss.png").string() : a->out;
    write_loss_plot(read_loss_curves(metrics.string()), out, fs::absolute(a->dir).filename().string());
    fmt::print(stderr, "ftune: wrote {}\n", out);
  });
}

}  // namespace ftune
