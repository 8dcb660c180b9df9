// Host side of the flash attention: which code path a device and storage get (sm_80+, sm_75 or
// none), read from the kernel images the build holds for the device, argument checks and dispatch
// to the launchers of flash_attention_fwd.cu and flash_attention_bwd.cu.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/flash_attention.cuh"
#include "ops/cuda/flash_attention.h"

namespace ftune::cuda {

namespace {

using flash::bf16;
using flash::fp16;

enum class Path { kNone, kSm80, kTuring };

template <bool kTuring>
size_t smem_need(int64_t d) {
  return d == 64 ? std::max(flash::Fwd<64, kTuring>::kSmem, flash::Bwd<64, kTuring>::kSmem)
                 : std::max(flash::Fwd<128, kTuring>::kSmem, flash::Bwd<128, kTuring>::kSmem);
}

// Whether the device's image of the kernels has the path's code. Kernels of the sm_80 path compiled
// for sm_75 have empty bodies, and a newer GPU without its own code in the build JIT-compiles the
// PTX of the newest arch below it: the image's binary version is then the GPU's while its PTX
// version stays that arch's, so the PTX version says which body runs.
template <typename E, bool kTuring>
bool image_runs(int64_t d, int optin) {
  cudaFuncAttributes attr{};
  if (flash::kernel_attributes<E, kTuring>(&attr, d) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  const int need = kTuring ? 75 : 80;
  if (attr.binaryVersion < need || attr.ptxVersion < need) return false;
  return static_cast<size_t>(optin) >= smem_need<kTuring>(d);
}

Path path_for(const Context& ctx, Storage s, const AttnShape& a, const FlashOptions& o) {
  if (s == Storage::F32 || (a.head_dim != 64 && a.head_dim != 128)) return Path::kNone;
  if (a.heads <= 0 || a.kv_heads <= 0 || a.heads % a.kv_heads != 0) return Path::kNone;
  const int sm = ctx.sm_version();
  int optin = 0;
  FT_CUDA(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, ctx.device()));
  if (!o.turing && sm >= 80) {
    const bool ok = s == Storage::BF16 ? image_runs<bf16, false>(a.head_dim, optin)
                                       : image_runs<fp16, false>(a.head_dim, optin);
    if (ok) return Path::kSm80;
  }
  if (s == Storage::F16 && sm >= 75 && image_runs<fp16, true>(a.head_dim, optin)) return Path::kTuring;
  return Path::kNone;
}

Path checked_path(const Context& ctx, Storage s, const AttnShape& a, const FlashOptions& o) {
  const Path path = path_for(ctx, s, a, o);
  if (path == Path::kNone)
    fail("flash attention: {} storage, head_dim {}, heads {}/{}{} not supported on sm_{}",
         s == Storage::BF16 ? "bf16" : s == Storage::F16 ? "fp16" : "fp32", a.head_dim, a.heads, a.kv_heads,
         o.turing ? " (sm_75 path)" : "", ctx.sm_version());
  FT_ASSERT(a.batch >= 0 && a.seq >= 0 && a.seq <= INT_MAX / 2);
  FT_ASSERT(a.batch <= 65535 && (a.seq + 63) / 64 <= 65535);  // grid y and z; every block is >= 64 rows
  return path;
}

template <typename E>
flash::Args<E> make_args(const AttnShape& a) {
  flash::Args<E> p{};
  p.T = static_cast<int>(a.seq), p.H = static_cast<int>(a.heads), p.KV = static_cast<int>(a.kv_heads);
  p.scale = a.scale, p.c = a.scale * flash::kLog2e;
  return p;
}

// Calls f(E*, std::bool_constant<kTuring>) with the instantiation of the path.
template <typename F>
void dispatch_path(Path path, Storage s, F&& f) {
  if (path == Path::kTuring) f(static_cast<fp16*>(nullptr), std::true_type{});
  else if (s == Storage::BF16) f(static_cast<bf16*>(nullptr), std::false_type{});
  else f(static_cast<fp16*>(nullptr), std::false_type{});
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

bool flash_attention_supported(const Context& ctx, Storage s, const AttnShape& a, const FlashOptions& o) {
  return path_for(ctx, s, a, o) != Path::kNone;
}

void flash_attention_forward(const Context& ctx, Storage s, const AttnShape& a, const void* q, const void* k,
                             const void* v, const int32_t* doc, void* out, float* lse, const FlashOptions& o) {
  const Path path = checked_path(ctx, s, a, o);
  if (a.batch == 0 || a.seq == 0) return;
  FT_ASSERT(aligned16(q) && aligned16(k) && aligned16(v) && aligned16(out));
  dispatch_path(path, s, [&](auto* e, auto turing) {
    using E = std::remove_pointer_t<decltype(e)>;
    flash::Args<E> p = make_args<E>(a);
    p.q = static_cast<const E*>(q), p.k = static_cast<const E*>(k), p.v = static_cast<const E*>(v);
    p.doc = doc, p.o = static_cast<E*>(out), p.lse = lse;
    flash::launch_forward<E, decltype(turing)::value>(ctx, p, a.batch, a.head_dim, doc != nullptr);
  });
}

int64_t flash_attention_scratch_floats(const AttnShape& a, const FlashOptions& o) {
  return a.batch * a.seq * a.heads * a.head_dim + (o.deterministic ? a.batch * a.heads * ((a.seq + 31) / 32) : 0);
}

void flash_attention_backward(const Context& ctx, Storage s, const AttnShape& a, const void* q, const void* k,
                              const void* v, const int32_t* doc, const void* out, const float* lse, const void* dout,
                              void* dq, void* dk, void* dv, float* delta, float* scratch, const FlashOptions& o) {
  const Path path = checked_path(ctx, s, a, o);
  if (a.batch == 0 || a.seq == 0) return;
  FT_ASSERT(aligned16(q) && aligned16(k) && aligned16(v) && aligned16(dout) && aligned16(scratch));
  FT_ASSERT(aligned16(out) && aligned16(dq) && aligned16(dk) && aligned16(dv));
  dispatch_path(path, s, [&](auto* e, auto turing) {
    using E = std::remove_pointer_t<decltype(e)>;
    flash::Args<E> p = make_args<E>(a);
    p.q = static_cast<const E*>(q), p.k = static_cast<const E*>(k), p.v = static_cast<const E*>(v);
    p.out = static_cast<const E*>(out), p.dout = static_cast<const E*>(dout), p.doc = doc;
    p.dq = static_cast<E*>(dq), p.dk = static_cast<E*>(dk), p.dv = static_cast<E*>(dv);
    p.lse = const_cast<float*>(lse), p.delta = delta, p.dq_acc = scratch;
    p.sem = o.deterministic ? reinterpret_cast<int*>(scratch + a.batch * a.seq * a.heads * a.head_dim) : nullptr;
    flash::launch_backward<E, decltype(turing)::value>(ctx, p, a.batch, a.head_dim, doc != nullptr);
  });
}

}  // namespace ftune::cuda
