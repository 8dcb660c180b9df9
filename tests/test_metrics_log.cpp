// metrics.jsonl: a failed write stops at once, and non-finite numbers never become invalid JSON.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include "core/error.h"
#include "train/metrics_log.h"
#include "test_util.h"

namespace ftune {
namespace {

TEST(MetricsLog, WriteFailureStopsAtOnce) {
  if (!std::filesystem::exists("/dev/full")) GTEST_SKIP() << "no /dev/full on this machine";
  MetricsLog log("/dev/full");  // every write fails with ENOSPC, as on a full disk
  try {
    log.write("{\"step\": 1}");
    FAIL() << "the write to a full device was not reported";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/dev/full: cannot write metrics"), std::string::npos) << e.what();
  }
}

TEST(MetricsLog, LinesAreJson) {
  const testing::TempDir dir("metrics");
  const std::string path = dir.str() + "/metrics.jsonl";
  {
    MetricsLog log(path);
    const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
    for (double v : {1.25, -3.5e-7, nan, inf, -inf})
      log.write(fmt::format("{{\"loss\": {}, \"lr\": {}}}", json_number(v, 6), json_number(v)));
  }
  std::ifstream in(path);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);  // throws on "nan" or "inf"
    if (n == 0) EXPECT_DOUBLE_EQ(j.at("loss").get<double>(), 1.25);
    if (n == 1) EXPECT_DOUBLE_EQ(j.at("lr").get<double>(), -3.5e-7);
    if (n >= 2) EXPECT_TRUE(j.at("loss").is_null() && j.at("lr").is_null()) << line;
    ++n;
  }
  EXPECT_EQ(n, 5);
}

}  // namespace
}  // namespace ftune
