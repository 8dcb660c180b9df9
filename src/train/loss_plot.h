// The loss curves of a run as a PNG (cairo): training loss per step, its moving average, and the
// validation losses, over the steps of metrics.jsonl.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace ftune {

struct LossCurves {
  std::vector<std::pair<int64_t, double>> train;  // (step, loss)
  std::vector<std::pair<int64_t, double>> val;    // (step, validation loss)
};

// The curves in a metrics.jsonl file; lines that are not step or validation records are skipped,
// a line that is not JSON is an error naming the file and line.
LossCurves read_loss_curves(const std::string& metrics_path);

// Draws `c` into a width x height PNG at `png_path` (written beside and renamed into place).
void write_loss_plot(const LossCurves& c, const std::string& png_path, const std::string& title, int width = 960,
                     int height = 540);

}  // namespace ftune
