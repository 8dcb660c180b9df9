// Comparison of greedy generations with tools/make_generate_fixtures.py's goldens (transformers and
// peft in float64), shared by the CPU and GPU generation tests.
#pragma once
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "infer/generate.h"

namespace ftune::testing {

// fp32 against float64: the same tokens, except where the golden's two best logits are within
// rounding of a tie (a gap under 1e-4; the goldens' smallest measured gap is 5e-4): from there the
// continuations may part, so the comparison stops at that step.
constexpr double kTieGap = 1e-4;

// `want`: the golden's "base" or "adapter" rows. Returns the steps compared.
inline int expect_greedy_tokens(const nlohmann::json& want, const std::vector<Generation>& gens,
                                const std::string& label) {
  int compared = 0;
  EXPECT_EQ(want.size(), gens.size()) << label;
  for (size_t r = 0; r < gens.size() && r < want.size(); ++r) {
    const auto tokens = want[r]["tokens"].get<std::vector<int32_t>>();
    const auto gaps = want[r]["gaps"].get<std::vector<double>>();
    EXPECT_EQ(gens[r].tokens.size(), tokens.size()) << label << " row " << r;
    for (size_t i = 0; i < tokens.size() && i < gens[r].tokens.size(); ++i) {
      EXPECT_EQ(gens[r].tokens[i], tokens[i]) << label << " row " << r << " step " << i;
      ++compared;
      if (gaps[i] < kTieGap || gens[r].tokens[i] != tokens[i]) break;
    }
    EXPECT_EQ(gens[r].finish_reason, "length") << label << " row " << r;
  }
  return compared;
}

}  // namespace ftune::testing
