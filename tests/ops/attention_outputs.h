// What the attention op tables share: ftune's flash attention forward then backward on a row's
// inputs, as the outputs the checks compare (out, lse, dq, dk, dv).
#pragma once
#include "op_harness.h"
#include "ops/cuda/attention.h"
#include "ops/cuda/flash_attention.h"

namespace ftune::ops {

// q, k, v, dout from t (and packed-document ids from t's "doc", when present and non-empty),
// stored in dt, computed with options o (op_table_attention.cpp).
Outputs flash_attention_outputs(const cuda::Context& ctx, Dtype dt, const cuda::FlashOptions& o,
                                const cuda::AttnShape& a, const Tensors& t);

}  // namespace ftune::ops
