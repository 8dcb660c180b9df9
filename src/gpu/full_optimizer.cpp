// The three optimizers of full fine-tuning on the GPU (see full_optimizer.h).
// OffloadAdamW's pipeline, per step, with piece k of at most kPiece elements of one slot (s = k % 2):
//   side:    D2H g(0) | D2H g(1) | D2H g(2) ...            (each records got[s])
//   host:    wait got[0], wait sent[0]; update(0) into out[0] | wait got[1] ... update(1) ...
//   compute: H2D out(0) -> slot (records sent[0]) | H2D out(1) ...
// D2H of piece k+1 is issued once piece k-1's update has consumed its staging slot, so the copy of
// one piece overlaps the host update of the previous one. The compute stream, which the next
// forward uses, is ordered after every H2D by stream order alone.
#include "gpu/full_optimizer.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "gpu/adamw8bit_states.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/elementwise.h"
#include "optim/flat_adamw.h"

namespace ftune {

namespace {

constexpr cuda::Storage F32 = cuda::Storage::F32;

size_t esz(cuda::Storage s) { return static_cast<size_t>(cuda::storage_bytes(s)); }

// The masters on the device: shared by both device-resident kinds.
class DeviceMasters : public FullOptimizer {
 public:
  DeviceMasters(const cuda::Context& ctx, int64_t P, std::vector<ComputeSlot> slots)
      : ctx_(ctx), P_(P), slots_(std::move(slots)), p_(static_cast<size_t>(P) * 4) {}
  void set_master(int64_t offset, const float* host, int64_t n) override {
    FT_ASSERT(offset >= 0 && offset + n <= P_);
    ctx_.synchronize();
    p_.upload_at(static_cast<size_t>(offset) * 4, host, static_cast<size_t>(n) * 4);
  }
  void masters_from_compute() override {
    for (const ComputeSlot& s : slots_) cuda::convert(ctx_, s.storage, s.data, F32, p() + s.offset, s.n);
  }
  void master_to_host(int64_t offset, float* host, int64_t n) const override {
    FT_ASSERT(offset >= 0 && offset + n <= P_);
    ctx_.synchronize();
    p_.download_at(static_cast<size_t>(offset) * 4, host, static_cast<size_t>(n) * 4);
  }
  void refresh_compute() override {
    for (const ComputeSlot& s : slots_) cuda::convert(ctx_, F32, p() + s.offset, s.storage, s.data, s.n);
  }

 protected:
  float* p() const { return p_.as<float>(); }
  std::vector<float> download(const cuda::DeviceBuffer& b) const {
    ctx_.synchronize();
    return b.to_host<float>(static_cast<size_t>(P_));
  }
  const cuda::Context& ctx_;
  int64_t P_;
  std::vector<ComputeSlot> slots_;
  cuda::DeviceBuffer p_;  // [P] fp32 masters
};

class DeviceAdamW final : public DeviceMasters {
 public:
  DeviceAdamW(const cuda::Context& ctx, int64_t P, std::vector<ComputeSlot> slots)
      : DeviceMasters(ctx, P, std::move(slots)), m_(static_cast<size_t>(P) * 4), v_(static_cast<size_t>(P) * 4) {
    ctx_.zero(m_.data(), m_.bytes()), ctx_.zero(v_.data(), v_.bytes());
  }
  std::string describe() const override { return "fp32 masters and AdamW moments on the device"; }
  void step(const cuda::AdamWStep& s, const float* g) override {
    cuda::AdamWStep plain = s;
    plain.weight_decay = 0.0f;
    // One launch per run of slots that share the decay setting (torch's two parameter groups).
    size_t i = 0;
    while (i < slots_.size()) {
      size_t j = i;
      while (j < slots_.size() && slots_[j].decay == slots_[i].decay) ++j;
      const int64_t b = slots_[i].offset, e = slots_[j - 1].offset + slots_[j - 1].n;
      cuda::adamw_update(ctx_, slots_[i].decay ? s : plain, p() + b, g + b, m_.as<float>() + b, v_.as<float>() + b,
                         e - b);
      i = j;
    }
    refresh_compute();
    t_ = s.t;
  }
  void save(StateDict& out) const override {
    out.f32["master"] = download(p_), out.f32["adam.m"] = download(m_), out.f32["adam.v"] = download(v_);
    out.ints["adam.t"] = t_;
  }
  void load(const StateDict& in) override {
    ctx_.synchronize();
    p_.upload(in.f32_of("master", P_).data(), p_.bytes());
    m_.upload(in.f32_of("adam.m", P_).data(), m_.bytes());
    v_.upload(in.f32_of("adam.v", P_).data(), v_.bytes());
    t_ = in.int_of("adam.t");
    refresh_compute();
  }
  size_t host_bytes() const override { return 0; }

 private:
  cuda::DeviceBuffer m_, v_;  // [P] fp32
  int64_t t_ = 0;
};

class DeviceAdamW8bitFull final : public DeviceMasters {
 public:
  DeviceAdamW8bitFull(const cuda::Context& ctx, int64_t P, std::vector<ComputeSlot> slots)
      : DeviceMasters(ctx, P, std::move(slots)) {
    for (const ComputeSlot& s : slots_) states_.push_back(std::make_unique<DeviceAdamW8bit>(ctx_, s.n));
  }
  std::string describe() const override {
    return "fp32 masters and 8-bit blockwise AdamW moments (per tensor) on the device";
  }
  void step(const cuda::AdamWStep& s, const float* g) override {
    for (size_t i = 0; i < slots_.size(); ++i) {
      const ComputeSlot& c = slots_[i];
      const AdamW8bitStep st{s.lr, s.beta1, s.beta2, s.eps, c.decay ? s.weight_decay : 0.0f, s.t, s.grad_coef};
      states_[i]->step(st, p() + c.offset, g + c.offset);
    }
    refresh_compute();
    t_ = s.t;
  }
  void save(StateDict& out) const override {
    out.f32["master"] = download(p_);
    for (size_t i = 0; i < states_.size(); ++i) {
      save_adam8bit(states_[i]->to_host(), fmt::format("adam8.{}.", i), out);
    }
    out.ints["adam8.t"] = t_;
  }
  void load(const StateDict& in) override {
    ctx_.synchronize();
    p_.upload(in.f32_of("master", P_).data(), p_.bytes());
    for (size_t i = 0; i < states_.size(); ++i) {
      Adam8bitState st(slots_[i].n);
      load_adam8bit(st, fmt::format("adam8.{}.", i), in);
      states_[i]->load(st);
    }
    t_ = in.int_of("adam8.t");
    refresh_compute();
  }
  size_t host_bytes() const override { return 0; }

 private:
  std::vector<std::unique_ptr<DeviceAdamW8bit>> states_;  // one per slot
  int64_t t_ = 0;
};

class OffloadAdamW final : public FullOptimizer {
 public:
  static constexpr int64_t kPiece = int64_t{16} << 20;  // elements per streamed piece (64 MB of fp32)

  static int64_t widest_piece(const std::vector<ComputeSlot>& slots) {
    int64_t widest = 1;
    for (const ComputeSlot& s : slots) widest = std::max(widest, std::min(s.n, kPiece));
    return widest;
  }
  static size_t staging_bytes(const std::vector<ComputeSlot>& slots) {
    return 4 * static_cast<size_t>(widest_piece(slots)) * 4;  // two gradient and two output slots, fp32
  }
  OffloadAdamW(const cuda::Context& ctx, int64_t P, std::vector<ComputeSlot> slots)
      : ctx_(ctx), P_(P), slots_(std::move(slots)), p_(P), m_(P, 0.0f), v_(P, 0.0f) {
    const int64_t widest = widest_piece(slots_);
    for (int i = 0; i < 2; ++i) {
      gin_[i] = cuda::PinnedBuffer(static_cast<size_t>(widest) * 4);
      out_[i] = cuda::PinnedBuffer(static_cast<size_t>(widest) * 4);
      FT_CUDA(cudaEventCreateWithFlags(&got_[i], cudaEventDisableTiming));
      FT_CUDA(cudaEventCreateWithFlags(&sent_[i], cudaEventDisableTiming));
    }
    FT_CUDA(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
    for (const ComputeSlot& s : slots_)
      for (int64_t b = 0; b < s.n; b += kPiece) pieces_.push_back({&s, b, std::min(kPiece, s.n - b)});
  }
  ~OffloadAdamW() override {
    for (int i = 0; i < 2; ++i) {
      if (got_[i]) cudaEventDestroy(got_[i]);
      if (sent_[i]) cudaEventDestroy(sent_[i]);
    }
    if (ready_) cudaEventDestroy(ready_);
  }
  std::string describe() const override {
    return "fp32 masters and AdamW moments in host memory, updated by the CPU (optimizer offload)";
  }
  void set_master(int64_t offset, const float* host, int64_t n) override {
    FT_ASSERT(offset >= 0 && offset + n <= P_);
    std::memcpy(p_.data() + offset, host, static_cast<size_t>(n) * 4);
  }
  void masters_from_compute() override {
    ctx_.synchronize();
    for (const ComputeSlot& s : slots_) {
      std::vector<uint16_t> h(s.storage == F32 ? 0 : s.n);
      if (s.storage == F32) {
        FT_CUDA(cudaMemcpy(p_.data() + s.offset, s.data, static_cast<size_t>(s.n) * 4, cudaMemcpyDeviceToHost));
        continue;
      }
      FT_CUDA(cudaMemcpy(h.data(), s.data, h.size() * 2, cudaMemcpyDeviceToHost));
      const bool half = s.storage == cuda::Storage::F16;
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < s.n; ++i) p_[s.offset + i] = half ? f16_to_f32(h[i]) : bf16_to_f32(h[i]);
    }
  }
  void master_to_host(int64_t offset, float* host, int64_t n) const override {
    FT_ASSERT(offset >= 0 && offset + n <= P_);
    std::memcpy(host, p_.data() + offset, static_cast<size_t>(n) * 4);
  }
  void refresh_compute() override {
    ctx_.synchronize();
    for (size_t k = 0; k < pieces_.size(); ++k) {
      const Piece& pc = pieces_[k];
      const int s = static_cast<int>(k % 2);
      FT_CUDA(cudaEventSynchronize(sent_[s]));
      to_storage(pc, p_.data() + pc.slot->offset + pc.begin, out_[s]);
      send(pc, s);
    }
  }
  void step(const cuda::AdamWStep& s, const float* g) override {
    const AdamWSettings set{s.beta1, s.beta2, s.eps, s.weight_decay};
    const AdamWConstants plain = adamw_constants(set, s.t, s.lr, s.grad_coef, false);
    const AdamWConstants decayed = adamw_constants(set, s.t, s.lr, s.grad_coef, true);
    // The gradients are complete once the compute stream's work so far is done.
    FT_CUDA(cudaEventRecord(ready_, ctx_.stream()));
    FT_CUDA(cudaStreamWaitEvent(ctx_.side_stream(), ready_, 0));
    auto fetch = [&](size_t k) {
      const Piece& pc = pieces_[k];
      const int sl = static_cast<int>(k % 2);
      FT_CUDA(cudaMemcpyAsync(gin_[sl].as<float>(), g + pc.slot->offset + pc.begin, static_cast<size_t>(pc.n) * 4,
                              cudaMemcpyDeviceToHost, ctx_.side_stream()));
      FT_CUDA(cudaEventRecord(got_[sl], ctx_.side_stream()));
    };
    if (!pieces_.empty()) fetch(0);
    for (size_t k = 0; k < pieces_.size(); ++k) {
      const Piece& pc = pieces_[k];
      const int sl = static_cast<int>(k % 2);
      if (k + 1 < pieces_.size()) fetch(k + 1);  // its staging slot was consumed by piece k-1's update
      FT_CUDA(cudaEventSynchronize(got_[sl]));
      const int64_t at = pc.slot->offset + pc.begin;
      adamw_apply(pc.slot->decay ? decayed : plain, p_.data() + at, gin_[sl].as<float>(), m_.data() + at,
                  v_.data() + at, pc.n);
      FT_CUDA(cudaEventSynchronize(sent_[sl]));  // out staging slot free again
      to_storage(pc, p_.data() + at, out_[sl]);
      send(pc, sl);
    }
    t_ = s.t;
  }
  void save(StateDict& out) const override {
    out.f32["master"] = p_, out.f32["adam.m"] = m_, out.f32["adam.v"] = v_;
    out.ints["adam.t"] = t_;
  }
  void load(const StateDict& in) override {
    p_ = in.f32_of("master", P_), m_ = in.f32_of("adam.m", P_), v_ = in.f32_of("adam.v", P_);
    t_ = in.int_of("adam.t");
    refresh_compute();
  }
  size_t host_bytes() const override {
    return 3 * static_cast<size_t>(P_) * 4 + 2 * (gin_[0].bytes() + out_[0].bytes());
  }

 private:
  struct Piece {
    const ComputeSlot* slot;
    int64_t begin, n;  // within the slot
  };
  // fp32 values into the staging slot, in the compute copy's storage (round to nearest even).
  static void to_storage(const Piece& pc, const float* src, const cuda::PinnedBuffer& dst) {
    const cuda::Storage st = pc.slot->storage;
    if (st == F32) {
      std::memcpy(dst.as<float>(), src, static_cast<size_t>(pc.n) * 4);
      return;
    }
    uint16_t* h = dst.as<uint16_t>();
    const bool half = st == cuda::Storage::F16;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < pc.n; ++i) h[i] = half ? f32_to_f16(src[i]) : f32_to_bf16(src[i]);
  }
  void send(const Piece& pc, int sl) {
    const size_t e = esz(pc.slot->storage);
    FT_CUDA(cudaMemcpyAsync(static_cast<char*>(pc.slot->data) + static_cast<size_t>(pc.begin) * e, out_[sl].as<char>(),
                            static_cast<size_t>(pc.n) * e, cudaMemcpyHostToDevice, ctx_.stream()));
    FT_CUDA(cudaEventRecord(sent_[sl], ctx_.stream()));
  }

  const cuda::Context& ctx_;
  int64_t P_;
  std::vector<ComputeSlot> slots_;
  std::vector<Piece> pieces_;
  std::vector<float> p_, m_, v_;             // [P] fp32: masters and moments, host
  std::array<cuda::PinnedBuffer, 2> gin_;    // [piece] fp32 gradients, staged
  std::array<cuda::PinnedBuffer, 2> out_;    // [piece] compute values, staged (fp32 or 16-bit)
  std::array<cudaEvent_t, 2> got_{}, sent_{};
  cudaEvent_t ready_ = nullptr;
  int64_t t_ = 0;
};

}  // namespace

size_t full_optimizer_device_bytes(FullOptimizerKind kind, int64_t P, const std::vector<ComputeSlot>& slots) {
  switch (kind) {
    case FullOptimizerKind::DeviceAdamW: return 3 * static_cast<size_t>(P) * 4;
    case FullOptimizerKind::DeviceAdamW8bit: {
      size_t b = static_cast<size_t>(P) * 4;
      for (const ComputeSlot& s : slots) b += DeviceAdamW8bit::device_bytes_for(s.n);
      return b;
    }
    case FullOptimizerKind::OffloadAdamW: return 0;
  }
  return 0;
}

std::pair<size_t, size_t> full_optimizer_host_bytes(FullOptimizerKind kind, int64_t P,
                                                    const std::vector<ComputeSlot>& slots) {
  if (kind != FullOptimizerKind::OffloadAdamW) return {0, 0};
  return {OffloadAdamW::staging_bytes(slots), 3 * static_cast<size_t>(P) * 4};
}

std::unique_ptr<FullOptimizer> make_full_optimizer(FullOptimizerKind kind, const cuda::Context& ctx, int64_t P,
                                                   std::vector<ComputeSlot> slots) {
  int64_t at = 0;
  for (const ComputeSlot& s : slots) {
    FT_ASSERT(s.offset == at && s.data);
    at += s.n;
  }
  FT_ASSERT(at == P);
  switch (kind) {
    case FullOptimizerKind::DeviceAdamW: return std::make_unique<DeviceAdamW>(ctx, P, std::move(slots));
    case FullOptimizerKind::DeviceAdamW8bit: return std::make_unique<DeviceAdamW8bitFull>(ctx, P, std::move(slots));
    case FullOptimizerKind::OffloadAdamW: return std::make_unique<OffloadAdamW>(ctx, P, std::move(slots));
  }
  fail("internal error: unknown full fine-tuning optimizer");
}

}  // namespace ftune
