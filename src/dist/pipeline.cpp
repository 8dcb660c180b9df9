// Pipeline placement, layer split and the 1F1B schedule.
#include "dist/pipeline.h"

#include <algorithm>
#include <limits>

#include "core/error.h"

namespace ftune::dist {

PipelinePlace pipeline_place(int rank, int world, int stages) {
  if (stages < 1) fail("dist.pipeline: {} stages; it must be at least 1", stages);
  if (world % stages != 0)
    fail("dist.pipeline: {} stages do not divide the run's {} rank{} (the ranks must be a multiple of the stages)",
         stages, world, world == 1 ? "" : "s");
  return {stages, rank % stages, world / stages, rank / stages};
}

std::vector<int64_t> split_layers(const std::vector<double>& layer_cost, double first_extra, double last_extra,
                                  int stages) {
  const int64_t L = static_cast<int64_t>(layer_cost.size());
  if (stages < 1 || stages > L) fail("dist.pipeline: {} stages for a model of {} layers (at most one stage per layer)", stages, L);
  std::vector<double> prefix(static_cast<size_t>(L + 1), 0.0);
  for (int64_t l = 0; l < L; ++l) prefix[l + 1] = prefix[l] + layer_cost[l];
  auto cost = [&](int s, int64_t a, int64_t b) {
    return prefix[b] - prefix[a] + (s == 0 ? first_extra : 0.0) + (s == stages - 1 ? last_extra : 0.0);
  };
  // best[s][e]: the smallest largest cost of stages 0..s covering layers [0, e); cut[s][e] its
  // last stage's first layer. Ties keep the earliest cut, so equal layers split evenly from the front.
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<std::vector<double>> best(stages, std::vector<double>(static_cast<size_t>(L + 1), inf));
  std::vector<std::vector<int64_t>> cut(stages, std::vector<int64_t>(static_cast<size_t>(L + 1), 0));
  for (int64_t e = 1; e <= L; ++e) best[0][e] = cost(0, 0, e);
  for (int s = 1; s < stages; ++s)
    for (int64_t e = s + 1; e <= L; ++e)
      for (int64_t a = s; a < e; ++a) {
        const double v = std::max(best[s - 1][a], cost(s, a, e));
        if (v < best[s][e] - 1e-12 * std::abs(v)) best[s][e] = v, cut[s][e] = a;
      }
  std::vector<int64_t> b(static_cast<size_t>(stages + 1));
  b[stages] = L;
  for (int s = stages - 1; s > 0; --s) b[s] = cut[s][b[s + 1]];
  b[0] = 0;
  return b;
}

std::vector<int64_t> split_llama_layers(const LlamaConfig& cfg, int stages, bool nf4, bool gpu) {
  const double bytes_per_param = !gpu ? 4.0 : nf4 ? 0.5625 : 2.0, head_bytes_per_param = gpu ? 2.0 : 4.0;
  const double H = static_cast<double>(cfg.hidden_size), I = static_cast<double>(cfg.intermediate_size);
  const double d = static_cast<double>(cfg.head_dim);
  const double layer = H * d * (2.0 * cfg.num_attention_heads + 2.0 * cfg.num_key_value_heads) + 3.0 * H * I;
  const double table = static_cast<double>(cfg.vocab_size) * H * head_bytes_per_param;
  // With tied embeddings the last stage holds the embedding too (as its lm_head).
  return split_layers(std::vector<double>(static_cast<size_t>(cfg.num_hidden_layers), layer * bytes_per_param), table,
                      table, stages);
}

int64_t pipeline_slots(int stages, int stage, int64_t micro_batches) {
  return std::max<int64_t>(1, std::min<int64_t>(stages - stage, micro_batches));
}

double pipeline_bubble(int stages, int64_t micro_batches) {
  return static_cast<double>(stages - 1) / static_cast<double>(micro_batches + stages - 1);
}

std::vector<PipeOp> one_f_one_b(int stages, int stage, int64_t micro_batches) {
  const int64_t M = micro_batches, warm = std::min<int64_t>(stages - 1 - stage, M);
  std::vector<PipeOp> ops;
  for (int64_t i = 0; i < warm; ++i) ops.push_back({true, i});
  for (int64_t i = warm; i < M; ++i) ops.push_back({true, i}), ops.push_back({false, i - warm});
  for (int64_t i = M - warm; i < M; ++i) ops.push_back({false, i});
  return ops;
}

}  // namespace ftune::dist
