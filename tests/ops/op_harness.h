// The CUDA op tests as tables: each row (an OpCase) is one op at one shape and storage dtype, run
// forward and backward on the GPU and by a reference, every output checked against its tolerance.
//
// How to add an op:
//  1. In the op_table_*.cpp of its kernel family (or a new tests/ops/op_table_<family>.cpp), write a
//     function that returns rows: per shape and dtype, the random inputs (Input: name, size, mean,
//     std, stored in the row's dtype or fp32), an optional prepare step (integer inputs such as ids,
//     edge values, inputs derived from others), the reference (the op's CPU twin from ops/cpu/, or a
//     plain loop written there), the CUDA launcher, and one Check per output: the tolerance and a
//     one-line reason for it (bound(): one tolerance per dtype).
//  2. Add TEST(GpuOps, Name) { FTUNE_SKIP_WITHOUT_CUDA(); cuda::Context ctx; run_cases(ctx, rows()); }.
//     Every tests/ops/*.cpp is part of the one test binary gpu_ops (ctest label gpu).
// The runner draws every input with testing::randn (its own seed from the row's name), rounds the
// stored ones to the dtype before reference and launcher see them (so only the op's own rounding is
// measured), then checks each output: relative L2 error (testing::rel_err) below the tolerance, or
// bit for bit at tolerance 0, with the row's name in every failure.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/rng.h"
#include "ops/cuda/context.h"
#include "ops/cuda/device_buffer.h"
#include "ops/cuda/storage.h"

// Every GPU test starts with this: without a device it is reported as skipped, never as passed.
#define FTUNE_SKIP_WITHOUT_CUDA() \
  if (::ftune::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device"

namespace ftune::ops {

// ---- storage dtypes ----

enum class Dtype { F32, BF16, F16 };
inline constexpr Dtype kAllDtypes[] = {Dtype::F32, Dtype::BF16, Dtype::F16};

cuda::Storage storage(Dtype d);
const char* dtype_name(Dtype d);  // "f32", "bf16", "f16"
// x rounded to nearest even in the dtype and widened back to fp32 (identity for F32).
float round_to(Dtype d, float x);
std::vector<float> round_to(Dtype d, std::vector<float> v);
// A device copy of v in the dtype (v should already be representable: round_to).
cuda::DeviceBuffer upload(Dtype d, const std::vector<float>& v);
// n elements of dtype d from element `offset` of b, widened to fp32, after ctx's stream finished.
std::vector<float> download(const cuda::Context& ctx, Dtype d, const cuda::DeviceBuffer& b, size_t n,
                            size_t offset = 0);

// ---- rows ----

using Floats = std::vector<float>;
using Outputs = std::map<std::string, Floats>;  // output name -> values (fp32, widened)

// A row's inputs by name: fp32 values (already rounded where stored in the dtype) and int32 arrays.
struct Tensors {
  std::map<std::string, Floats> f;
  std::map<std::string, std::vector<int32_t>> i;
  const Floats& at(const std::string& name) const;            // throws when missing
  const std::vector<int32_t>& ints(const std::string& name) const;
};

// A random input: mean + std * N(0, 1), never all zeros; `stored`: held in the row's dtype (rounded
// before anyone sees it), else fp32 whatever the dtype (weights, gradients the op keeps in fp32).
struct Input {
  std::string name;
  int64_t n;
  float mean = 0.0f, std = 1.0f;
  bool stored = true;
};

// An output's bound: relative L2 error below tol, or with tol = 0 every element bit for bit.
struct Check {
  std::string output;
  double tol;
  std::string why;  // one line: where the remaining error comes from
};

// One tolerance per dtype, each with its reason.
struct Bound {
  double tol;
  const char* why;
};
Check bound(const std::string& output, Dtype d, Bound f32, Bound bf16, Bound f16);

struct OpCase {
  std::string name;  // unique: op, shape, dtype; seeds the random inputs
  Dtype dtype = Dtype::F32;
  std::vector<Input> inputs;
  // Optional, after the inputs are drawn and rounded: adds integer inputs (ids, document ids),
  // edge values, inputs derived from others (stored ones are rounded again afterwards). rng is
  // seeded from the row's name.
  std::function<void(Tensors&, Rng&)> prepare;
  std::function<Outputs(const Tensors&)> reference;
  std::function<Outputs(const cuda::Context&, const Tensors&)> launch;
  std::vector<Check> checks;   // exactly one per output
  bool deterministic = false;  // launch again: every output bit-identical to the first run
};

// Runs one row and checks it (gtest failures name the row); prints one line of its errors.
void run_case(const cuda::Context& ctx, const OpCase& c);
void run_cases(const cuda::Context& ctx, const std::vector<OpCase>& cases);

}  // namespace ftune::ops
