// Causal flash attention alone on one GPU: ftune's forward and backward kernels (or, with
// --kernels cudnn, cuDNN's fused engines through ops/cuda/cudnn_attention.h) at a given shape,
// timed with CUDA events over --reps runs after one warm-up; one JSON line. bench/peer_attention.py
// times PyTorch's scaled_dot_product_attention backends at the same shape the same way.
// FLOPs as FlashAttention counts them: forward 4 * B * H * T^2 * d / 2 (causal), backward 2.5x.
//   bench_attention_gpu [--batch 4] [--seq 2048] [--heads 32] [--kv-heads 32] [--head-dim 128]
//                       [--dtype bf16|fp16] [--deterministic] [--kernels ftune|cudnn] [--reps 5]
// The cuDNN line also reports the plans' workspace and the time to build them.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <memory>
#include <string>

#include "core/error.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_buffer.h"
#include "ops/cuda/cudnn_attention.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/flash_attention.h"
#include "bench_args.h"

int main(int argc, char** argv) {
  using namespace ftune;
  int64_t batch = 4, seq = 2048, heads = 32, kv_heads = 32, d = 128, reps = 5;
  std::string dtype = "bf16", kernels = "ftune";
  cuda::FlashOptions fo;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto val = [&] { return bench::flag_value(argc, argv, i); };
      if (a == "--batch") batch = std::stoll(val());
      else if (a == "--seq") seq = std::stoll(val());
      else if (a == "--heads") heads = std::stoll(val());
      else if (a == "--kv-heads") kv_heads = std::stoll(val());
      else if (a == "--head-dim") d = std::stoll(val());
      else if (a == "--dtype") dtype = val();
      else if (a == "--reps") reps = std::stoll(val());
      else if (a == "--deterministic") fo.deterministic = true;
      else if (a == "--kernels") kernels = val();
      else fail("unknown option {}", a);
    }
    if (dtype != "bf16" && dtype != "fp16") fail("--dtype: bf16 or fp16, got {}", dtype);
    if (kernels != "ftune" && kernels != "cudnn") fail("--kernels: ftune or cudnn, got {}", kernels);
    if (kernels == "cudnn" && fo.deterministic) fail("--deterministic is ftune's kernels only");
    if (batch < 1 || seq < 1 || heads < 1 || kv_heads < 1 || heads % kv_heads != 0 || reps < 1)
      fail("sizes must be positive and heads a multiple of kv-heads");
    const cuda::Storage s = dtype == "fp16" ? cuda::Storage::F16 : cuda::Storage::BF16;
    cuda::Context ctx;
    const cuda::AttnShape a{batch, seq, heads, kv_heads, d, 1.0f / std::sqrt(static_cast<float>(d))};
    if (!cuda::flash_attention_supported(ctx, s, a, fo)) fail("flash attention does not support this shape on {}", ctx.name());
    std::unique_ptr<cuda::CudnnAttention> dnn;
    double plan_ms = 0;
    size_t ws_bytes = 0;
    if (kernels == "cudnn") {
      dnn = std::make_unique<cuda::CudnnAttention>(ctx);
      if (!dnn->loaded()) fail("cuDNN: {}", dnn->status());
      const auto t0 = std::chrono::steady_clock::now();
      if (!dnn->supports(s, a)) fail("cuDNN refused the shape: {}", dnn->refusal());
      plan_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      ws_bytes = dnn->workspace_bytes(s, a);
    }
    const int64_t nq = batch * seq * heads * d, nkv = batch * seq * kv_heads * d, nl = batch * heads * seq;
    cuda::DeviceBuffer q(nq * 2), k(nkv * 2), v(nkv * 2), o(nq * 2), dout(nq * 2), dq(nq * 2), dk(nkv * 2), dv(nkv * 2),
        lse(nl * 4), delta(nl * 4), scratch(static_cast<size_t>(cuda::flash_attention_scratch_floats(a, fo)) * 4),
        ws(ws_bytes);
    cuda::fill_normal(ctx, s, q.data(), nq, 1, 0.0f, 1.0f);
    cuda::fill_normal(ctx, s, k.data(), nkv, 2, 0.0f, 1.0f);
    cuda::fill_normal(ctx, s, v.data(), nkv, 3, 0.0f, 1.0f);
    cuda::fill_normal(ctx, s, dout.data(), nq, 4, 0.0f, 1.0f);
    auto fwd = [&] {
      if (dnn) return dnn->forward(s, a, q.data(), k.data(), v.data(), o.data(), lse.as<float>(), ws.data());
      cuda::flash_attention_forward(ctx, s, a, q.data(), k.data(), v.data(), nullptr, o.data(), lse.as<float>(), fo);
    };
    auto bwd = [&] {
      if (dnn)
        return dnn->backward(s, a, q.data(), k.data(), v.data(), o.data(), lse.as<float>(), dout.data(), dq.data(),
                             dk.data(), dv.data(), delta.as<float>(), scratch.as<float>(), ws.data());
      cuda::flash_attention_backward(ctx, s, a, q.data(), k.data(), v.data(), nullptr, o.data(), lse.as<float>(),
                                     dout.data(), dq.data(), dk.data(), dv.data(), delta.as<float>(),
                                     scratch.as<float>(), fo);
    };
    cudaEvent_t e0, e1, e2;
    FT_CUDA(cudaEventCreate(&e0));
    FT_CUDA(cudaEventCreate(&e1));
    FT_CUDA(cudaEventCreate(&e2));
    fwd(), bwd();
    FT_CUDA(cudaEventRecord(e0, ctx.stream()));
    for (int64_t i = 0; i < reps; ++i) fwd();
    FT_CUDA(cudaEventRecord(e1, ctx.stream()));
    for (int64_t i = 0; i < reps; ++i) bwd();
    FT_CUDA(cudaEventRecord(e2, ctx.stream()));
    ctx.synchronize();
    float ms_f = 0, ms_b = 0;
    FT_CUDA(cudaEventElapsedTime(&ms_f, e0, e1));
    FT_CUDA(cudaEventElapsedTime(&ms_b, e1, e2));
    ms_f /= reps, ms_b /= reps;
    const double ff = 4.0 * batch * heads * double(seq) * seq * d / 2, fb = 2.5 * ff;
    fmt::print(
        "{{\"bench\":\"attention\",\"impl\":\"{}{}\",\"gpu\":\"{}\",\"dtype\":\"{}\",\"batch\":{},\"seq\":{},"
        "\"heads\":{},\"kv_heads\":{},\"head_dim\":{},\"fwd_ms\":{:.3f},\"bwd_ms\":{:.3f},\"fwd_tflops\":{:.1f},"
        "\"bwd_tflops\":{:.1f},\"workspace_bytes\":{},\"plan_ms\":{:.1f}}}\n",
        dnn ? "ftune-cudnn " + dnn->status() : std::string("ftune"), fo.deterministic ? "-deterministic" : "", ctx.name(), dtype, batch, seq, heads, kv_heads, d, ms_f, ms_b,
        ff / (ms_f * 1e-3) / 1e12, fb / (ms_b * 1e-3) / 1e12, ws_bytes, plan_ms);
    cudaEventDestroy(e0), cudaEventDestroy(e1), cudaEventDestroy(e2);
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_attention_gpu: {}\n", e.what());
    return 1;
  }
}
