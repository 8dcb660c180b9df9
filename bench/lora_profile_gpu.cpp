// Where a LoRA training step's time goes on the GPU: every op family of one step of the
// Llama-2-7B-shape benchmark (seq 2048, micro-batch 4, r 16, all seven projections) timed alone
// with CUDA events at the step's exact shapes and multiplied by its count per step, beside the
// measured time of the whole step. The ops are the step's own: attention on cuDNN's fused engines
// where they load (ftune's flash kernels otherwise, or with --no-cudnn), and the adapter's A
// projections that share an input as one GEMM per group (one per projection with --no-fuse-lora),
// as GpuModelOptions chooses them. One JSON line per family, then one with the totals.
//   bench_lora_profile_gpu [--shape llama2-7b] [--checkpointing] [--no-cudnn] [--no-fuse-lora]
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <chrono>
#include <functional>
#include <string>

#include "core/error.h"
#include "event_timing.h"
#include "gpu/llama_gpu.h"
#include "lora_bench.h"
#include "model/presets.h"
#include "ops/cuda/attention.h"
#include "ops/cuda/cudnn_attention.h"
#include "ops/cuda/cross_entropy.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/flash_attention.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/rmsnorm.h"
#include "ops/cuda/rope.h"
#include "ops/cuda/swiglu.h"

namespace {

using namespace ftune;
constexpr cuda::Storage BF = cuda::Storage::BF16, F32 = cuda::Storage::F32;

using bench::time_ms;

}  // namespace

int main(int argc, char** argv) {
  std::string shape = "llama2-7b";
  bool ckpt = false, use_cudnn = true, fuse = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--shape" && i + 1 < argc) shape = argv[++i];
    else if (a == "--checkpointing") ckpt = true;
    else if (a == "--no-cudnn") use_cudnn = false;
    else if (a == "--no-fuse-lora") fuse = false;
    else
      return fmt::print(stderr, "usage: bench_lora_profile_gpu [--shape NAME] [--checkpointing] [--no-cudnn] "
                                "[--no-fuse-lora]\n"), 2;
  }
  try {
    const LlamaConfig c = preset_config(shape);
    const int64_t B = 4, T = 2048, N = B * T, H = c.hidden_size, I = c.intermediate_size, Q = c.q_dim(),
                  KV = c.kv_dim(), V = c.vocab_size, L = c.num_hidden_layers, r = 16;
    cuda::Context ctx;
    // The whole step first (the model is freed before the op timings allocate).
    double step_ms = 0;
    {
      const LoraSpec spec = bench::all_projections(r, 32);
      GpuModelOptions mo{B, T, BF, ckpt};
      mo.cudnn_attention = use_cudnn, mo.fuse_lora = fuse;
      LlamaGpu model(ctx, c, nullptr, &spec, mo, 1);
      bench::set_adapter(model, c, spec, 2);
      const Batch batch = bench::random_batch(B, T, V, 3);
      int64_t t = 0;
      auto step = [&]() { bench::train_step(model, batch, ++t); };
      step(), step();
      ctx.synchronize();
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < 5; ++i) step();
      ctx.synchronize();
      step_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / 5;
    }
    const int64_t widest = std::max({H, I, Q});
    cuda::DeviceBuffer x(N * widest * 2), y(N * widest * 2), z(N * widest * 2), w(widest * H * 2), hw(V * H * 2), t16(3 * N * r * 2),
        a16(3 * r * widest * 2), g32(3 * widest * r * 4), dag(3 * r * widest * 4), f32a(N * H * 4), f32b(N * H * 4), rs(N * 4), nw(H * 4), cs(N * c.head_dim * 2),
        q(N * Q * 2), k(N * KV * 2), v(N * KV * 2), o(N * Q * 2), lse(N * c.num_attention_heads * 4),
        dq(N * Q * 2), dk(N * KV * 2), dv(N * KV * 2), delta(N * c.num_attention_heads * 4), tgt(N * 4),
        loss(N * 4), logits(static_cast<size_t>(std::min<int64_t>(N, (64 << 20) / (V * 2))) * V * 2),
        lp(int64_t{48} << 20), lg(int64_t{48} << 20), lm(int64_t{48} << 20), lv(int64_t{48} << 20), acc(8);
    for (auto* b : {&x, &y, &z, &w, &hw, &t16, &a16, &q, &k, &v, &o, &dq})
      cuda::fill_normal(ctx, BF, b->data(), static_cast<int64_t>(b->bytes() / 2), 7, 0.0f, 0.5f);
    cuda::fill_normal(ctx, F32, f32a.data(), N * H, 8, 0.0f, 1.0f);
    cuda::fill_normal(ctx, F32, nw.data(), H, 9, 1.0f, 0.0f);
    cuda::fill_normal(ctx, F32, cs.data(), N * c.head_dim / 2, 10, 0.5f, 0.1f);
    ctx.zero(tgt.data(), N * 4);
    struct Proj {
      int64_t out, in;
    };
    const Proj projs[] = {{Q, H}, {KV, H}, {KV, H}, {H, Q}, {I, H}, {I, H}, {H, I}};
    const double fwd_passes = ckpt ? 2.0 : 1.0;  // the checkpointed forward runs twice
    struct Row {
      std::string name;
      double ms;
    };
    std::vector<Row> rows;
    auto add = [&](const std::string& name, double per_call_ms, double calls) { rows.push_back({name, per_call_ms * calls}); };
    double base_f = 0, base_b = 0, lora_f = 0, lora_b = 0;
    for (const Proj& p : projs) {
      base_f += time_ms(ctx, [&] { cuda::gemm(ctx, N, p.out, p.in, 1.0f, {x.data(), BF, false}, {w.data(), BF, true}, 0.0f, y.data(), BF); });
      base_b += time_ms(ctx, [&] { cuda::gemm(ctx, N, p.in, p.out, 1.0f, {y.data(), BF, false}, {w.data(), BF, false}, 0.0f, x.data(), BF); });
    }
    // The adapter's GEMMs as LlamaGpu::linear_fwd / linear_bwd run them, group by group (q/k/v,
    // o, gate/up, down): fused, one A GEMM per group ([g r, in] x^T), its dA in one GEMM added to
    // each member's gradient, and one (s dy B) A term of dx; separate, those per projection.
    const std::vector<std::vector<int>> groups{{0, 1, 2}, {3}, {4, 5}, {6}};
    char* t16b = t16.as<char>();
    for (const auto& grp : groups) {
      const int64_t g = static_cast<int64_t>(grp.size()), in = projs[grp[0]].in;
      const bool fg = fuse && g > 1;
      lora_f += time_ms(ctx, [&] {
        if (fg) cuda::gemm(ctx, g * r, N, in, 1.0f, {a16.data(), BF, false}, {x.data(), BF, true}, 0.0f, t16.data(), BF);
        for (int64_t j = 0; j < g; ++j) {
          const Proj& p = projs[grp[static_cast<size_t>(j)]];
          if (!fg) cuda::gemm(ctx, N, r, p.in, 1.0f, {x.data(), BF, false}, {a16.data(), BF, true}, 0.0f, t16.data(), BF);
          cuda::gemm(ctx, N, p.out, r, 2.0f, {t16b + (fg ? j * r * N * 2 : 0), BF, fg}, {a16.data(), BF, true}, 1.0f, y.data(), BF);
        }
      });
      lora_b += time_ms(ctx, [&] {
        for (int64_t j = 0; j < g; ++j) {
          const Proj& p = projs[grp[static_cast<size_t>(j)]];
          if (fg) {
            cuda::gemm(ctx, p.out, r, N, 2.0f, {y.data(), BF, true}, {t16b + j * r * N * 2, BF, true}, 1.0f, g32.data(), F32);
            cuda::gemm(ctx, r, N, p.out, 2.0f, {a16.data(), BF, true}, {y.data(), BF, true}, 0.0f, t16b + j * r * N * 2, BF);
            continue;
          }
          cuda::gemm(ctx, p.out, r, N, 2.0f, {y.data(), BF, true}, {t16.data(), BF, false}, 1.0f, g32.data(), F32);
          cuda::gemm(ctx, N, r, p.out, 2.0f, {y.data(), BF, false}, {a16.data(), BF, false}, 0.0f, t16.data(), BF);
          cuda::gemm(ctx, r, p.in, N, 1.0f, {t16.data(), BF, true}, {x.data(), BF, false}, 1.0f, g32.data(), F32);
          cuda::gemm(ctx, N, p.in, r, 1.0f, {t16.data(), BF, false}, {a16.data(), BF, false}, 1.0f, x.data(), BF);
        }
        if (!fg) return;
        cuda::gemm(ctx, g * r, in, N, 1.0f, {t16.data(), BF, false}, {x.data(), BF, false}, 0.0f, dag.data(), F32);
        for (int64_t j = 0; j < g; ++j) cuda::add_into(ctx, dag.as<float>() + j * r * in, g32.as<float>(), r * in);
        cuda::gemm(ctx, N, in, g * r, 1.0f, {t16.data(), BF, true}, {a16.data(), BF, false}, 1.0f, x.data(), BF);
      });
    }
    add("base GEMMs, forward", base_f, L * fwd_passes);
    add("base GEMMs, input gradient", base_b, L);
    add("LoRA GEMMs, forward", lora_f, L * fwd_passes);
    add("LoRA GEMMs, backward", lora_b, L);
    const cuda::AttnShape as{B, T, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
                             1.0f / std::sqrt(static_cast<float>(c.head_dim))};
    std::unique_ptr<cuda::CudnnAttention> cudnn;
    if (use_cudnn) cudnn = std::make_unique<cuda::CudnnAttention>(ctx);
    const bool on_cudnn = cudnn && cudnn->loaded() && cudnn->supports(BF, as);
    const bool flash = cuda::flash_attention_supported(ctx, cuda::Storage::BF16, as);
    cuda::DeviceBuffer scratch(flash || on_cudnn ? cuda::flash_attention_scratch_floats(as) * 4 : 4);
    cuda::DeviceBuffer ws(on_cudnn ? std::max<size_t>(cudnn->workspace_bytes(BF, as), 256) : 4);
    const std::string kernels = on_cudnn ? cudnn->status() + " fused" : flash ? "ftune flash" : "ftune reference";
    add("attention forward", time_ms(ctx, [&] {
          if (on_cudnn) cudnn->forward(BF, as, q.data(), k.data(), v.data(), o.data(), lse.as<float>(), ws.data());
          else if (flash) cuda::flash_attention_forward(ctx, cuda::Storage::BF16, as, q.data(), k.data(), v.data(), nullptr, o.data(), lse.as<float>());
          else cuda::attention_forward(ctx, BF, as, q.data(), k.data(), v.data(), nullptr, o.data(), lse.as<float>());
        }, 5), L * fwd_passes);
    add("attention backward", time_ms(ctx, [&] {
          if (on_cudnn)
            cudnn->backward(BF, as, q.data(), k.data(), v.data(), o.data(), lse.as<float>(), o.data(), dq.data(), dk.data(),
                            dv.data(), delta.as<float>(), scratch.as<float>(), ws.data());
          else if (flash)
            cuda::flash_attention_backward(ctx, cuda::Storage::BF16, as, q.data(), k.data(), v.data(), nullptr, o.data(), lse.as<float>(), o.data(),
                                           dq.data(), dk.data(), dv.data(), delta.as<float>(), scratch.as<float>());
          else
            cuda::attention_backward(ctx, BF, as, q.data(), k.data(), v.data(), nullptr, o.data(), lse.as<float>(), o.data(),
                                     dq.data(), dk.data(), dv.data(), delta.as<float>());
        }, 3), L);
    add("rmsnorm forward", time_ms(ctx, [&] { cuda::rmsnorm_forward(ctx, BF, x.data(), nw.as<float>(), y.data(), rs.as<float>(), N, H, 1e-5f); }), 2 * L * fwd_passes);
    add("rmsnorm backward", time_ms(ctx, [&] { cuda::rmsnorm_backward(ctx, BF, f32a.as<float>(), x.data(), nw.as<float>(), rs.as<float>(), f32b.as<float>(), N, H); }), 2 * L);
    add("rope forward + backward", time_ms(ctx, [&] {
          cuda::rope_forward(ctx, BF, q.data(), cs.as<float>(), cs.as<float>(), N, c.num_attention_heads, c.head_dim);
          cuda::rope_forward(ctx, BF, k.data(), cs.as<float>(), cs.as<float>(), N, c.num_key_value_heads, c.head_dim);
        }), L * (fwd_passes + 1));
    add("swiglu forward", time_ms(ctx, [&] { cuda::swiglu_forward(ctx, BF, x.data(), y.data(), z.data(), N * I); }), L * fwd_passes);
    add("swiglu backward", time_ms(ctx, [&] { cuda::swiglu_backward(ctx, BF, x.data(), y.data(), z.data(), x.data(), y.data(), N * I); }), L);
    add("residual gradient to bf16", time_ms(ctx, [&] { cuda::convert(ctx, F32, f32a.data(), BF, y.data(), N * H); }), 2 * L);
    const int64_t chunk = static_cast<int64_t>(logits.bytes() / 2 / V);
    add("lm_head + cross-entropy", time_ms(ctx, [&] {
          cuda::lm_head_cross_entropy(ctx, BF, x.data(), hw.data(), tgt.as<int32_t>(), N, H, V, 1e-4f, loss.as<float>(), y.data(), logits.data(), chunk);
        }, 3), 1);
    const int64_t nl = 40 << 20;
    add("optimizer (norm + AdamW + bf16 copy)", time_ms(ctx, [&] {
          cuda::sum_squares(ctx, lg.as<float>(), nl / 4, acc.as<double>());
          cuda::adamw_update(ctx, {1e-4f, 0.9f, 0.999f, 1e-8f, 0.0f, 1}, lp.as<float>(), lg.as<float>(), lm.as<float>(), lv.as<float>(), nl / 4);
          cuda::convert(ctx, F32, lp.data(), BF, x.data(), nl / 4);
        }), 1);
    double total = 0;
    for (const Row& row : rows) total += row.ms;
    for (const Row& row : rows)
      fmt::print("{{\"bench\": \"lora_profile_{}{}\", \"op\": \"{}\", \"ms_per_step\": {:.2f}, \"share_of_step\": {:.3f}}}\n", shape,
                 ckpt ? "_ckpt" : "", row.name, row.ms, row.ms / step_ms);
    fmt::print("{{\"bench\": \"lora_profile_{}{}\", \"op\": \"total\", \"sum_of_ops_ms\": {:.1f}, \"measured_step_ms\": {:.1f}, "
               "\"unaccounted_ms\": {:.1f}, \"attention\": \"{}\", \"lora_a_gemms\": \"{}\"}}\n",
               shape, ckpt ? "_ckpt" : "", total, step_ms, step_ms - total, kernels, fuse ? "fused" : "separate");
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_lora_profile_gpu: {}\n", e.what());
    return 1;
  }
  return 0;
}
