// metrics.jsonl: one JSON object per line, flushed after each, and a write that fails (a full
// disk, a removed directory) stops the run at once instead of at the end.
#pragma once
#include <cstdio>
#include <string>

namespace ftune {

class MetricsLog {
 public:
  explicit MetricsLog(std::string path);  // creates or truncates the file
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  // Appends `line` (a complete JSON object, no newline) and flushes it to the file.
  void write(const std::string& line);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  FILE* f_ = nullptr;
};

// A number as JSON: fixed `decimals` after the point (shortest form when negative), or null
// when it is not finite (JSON has no NaN or infinity).
std::string json_number(double v, int decimals = -1);

}  // namespace ftune
