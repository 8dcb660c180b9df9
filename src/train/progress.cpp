// Progress line: rewritten in place on a terminal, one line per step into a log otherwise.
#include "train/progress.h"

#include <fmt/format.h>
#include <unistd.h>

namespace ftune {

ProgressLine::ProgressLine(int64_t total_steps, FILE* out)
    : total_(total_steps), out_(out), tty_(isatty(fileno(out)) != 0) {}

ProgressLine::~ProgressLine() {
  if (open_line_) std::fputc('\n', out_);
}

void ProgressLine::update(const StepMetrics& m) {
  const double per_step = m.elapsed_s / static_cast<double>(m.step);
  const int64_t eta = static_cast<int64_t>(per_step * static_cast<double>(total_ - m.step) + 0.5);
  std::string line =
      fmt::format("step {}/{}  loss {:.4f}  lr {:.3g}  grad_norm {:.3f}  {:.0f} tok/s  {:.2f} GiB  ETA {}:{:02d}:{:02d}",
                  m.step, total_, m.loss, m.lr, m.grad_norm, m.tokens_per_s, m.memory_gib, eta / 3600, eta / 60 % 60,
                  eta % 60);
  if (m.skipped_steps) line += fmt::format("  skipped {} (fp16 overflow)", m.skipped_steps);
  if (tty_) {
    fmt::print(out_, "\r\033[K{}", line);
    open_line_ = true;
  } else {
    fmt::print(out_, "{}\n", line);
  }
  std::fflush(out_);
}

}  // namespace ftune
