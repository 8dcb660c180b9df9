// metrics.jsonl writer.
#include "train/metrics_log.h"

#include <fmt/format.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include "core/error.h"

namespace ftune {

MetricsLog::MetricsLog(std::string path) : path_(std::move(path)) {
  f_ = std::fopen(path_.c_str(), "w");
  if (!f_) fail("{}: cannot write: {}", path_, std::strerror(errno));
}

MetricsLog::~MetricsLog() {
  if (f_) std::fclose(f_);
}

void MetricsLog::write(const std::string& line) {
  errno = 0;
  const bool ok = std::fputs(line.c_str(), f_) >= 0 && std::fputc('\n', f_) != EOF && std::fflush(f_) == 0;
  if (!ok) fail("{}: cannot write metrics: {}", path_, errno ? std::strerror(errno) : "write error");
}

std::string json_number(double v, int decimals) {
  if (!std::isfinite(v)) return "null";
  return decimals < 0 ? fmt::format("{}", v) : fmt::format("{:.{}f}", v, decimals);
}

}  // namespace ftune
