// Device-resident and paged 8-bit AdamW states. The paged pipeline, per step (slot = chunk % 2):
//   side:    up(0) up(1) [wait K0] down(0) up(2) [wait K1] down(1) up(3) ...  [record downloaded]
//   compute: [wait up0] K0 [wait up1] K1 [wait up2] K2 ...                     [wait downloaded]
// up(k+2) reuses the slot of chunk k and comes after down(k) on the same stream, so in-stream order
// is the only guard it needs; the events order the two streams.
#include "gpu/adamw8bit_states.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "ops/cuda/adamw8bit.h"
#include "ops/cuda/cuda_check.h"

namespace ftune {

namespace {

cuda::DeviceBuffer upload_maps() {
  std::vector<float> maps(512);  // [2, 256]
  std::copy(dynamic_map(true).begin(), dynamic_map(true).end(), maps.begin());
  std::copy(dynamic_map(false).begin(), dynamic_map(false).end(), maps.begin() + 256);
  return cuda::DeviceBuffer::from(maps);  // complete on return (DeviceBuffer::upload)
}

Adam8bitLayout layout_for(int64_t n, int64_t min_8bit_size) {
  if (n < 0) fail("8-bit AdamW: parameter count must be >= 0, got {}", n);
  return Adam8bitLayout{n, n >= min_8bit_size};
}

constexpr size_t kMapBytes = 2 * 256 * sizeof(float);  // both dynamic maps on the device

// Elements of one paged chunk: whole 256-element blocks (so absmax indices line up), as many as
// chunk_bytes of state hold, at least one and no more than the vector needs.
int64_t chunk_elems_for(const Adam8bitLayout& layout, size_t chunk_bytes) {
  const size_t block_bytes = 2 * layout.elem_bytes() * kAdam8bitBlock + (layout.is_8bit ? 2 * sizeof(float) : 0);
  const int64_t want = std::max<int64_t>(1, static_cast<int64_t>(chunk_bytes / block_bytes));
  return std::min(want, std::max<int64_t>(1, adam8bit_blocks(layout.n))) * kAdam8bitBlock;
}

// One update of n elements; m, v are uint8 codes or fp32 by mode; maps: [2, 256] on the device.
void launch(const cuda::Context& ctx, const AdamW8bitStep& s, bool is_8bit, float* p, const float* g, void* m, void* v,
            float* absmax_m, float* absmax_v, const float* maps, int64_t n) {
  if (is_8bit)
    cuda::adamw8bit_update(ctx, s, p, g, static_cast<uint8_t*>(m), static_cast<uint8_t*>(v), absmax_m, absmax_v, maps,
                           maps + 256, n);
  else
    cuda::adam32_update(ctx, s, p, g, static_cast<float*>(m), static_cast<float*>(v), n);
}

void check_state(const Adam8bitLayout& l, const Adam8bitState& st) {
  if (st.size() != l.n || st.is_8bit() != l.is_8bit)
    fail("8-bit AdamW: loading a state of {} elements ({}) into one of {} ({})", st.size(),
         st.is_8bit() ? "8-bit" : "fp32", l.n, l.is_8bit ? "8-bit" : "fp32");
}

// Copies between an Adam8bitState and four raw buffers (device or pinned host): into st when State
// is Adam8bitState, out of it when const. Stream-ordered on `stream` and finished on return.
template <typename State>
void copy_states(const Adam8bitLayout& l, State& st, void* m, void* v, void* am, void* av, cudaStream_t stream) {
  auto cp = [&](auto* state_side, void* raw, size_t bytes) {
    if (bytes == 0) return;
    if constexpr (std::is_const_v<State>)
      FT_CUDA(cudaMemcpyAsync(raw, state_side, bytes, cudaMemcpyDefault, stream));
    else
      FT_CUDA(cudaMemcpyAsync(state_side, raw, bytes, cudaMemcpyDefault, stream));
  };
  const size_t nb = static_cast<size_t>(l.blocks()) * sizeof(float);
  if (l.is_8bit) {
    cp(st.m_q.data(), m, l.n);
    cp(st.v_q.data(), v, l.n);
    cp(st.absmax_m.data(), am, nb);
    cp(st.absmax_v.data(), av, nb);
  } else {
    cp(st.m32.data(), m, l.n * sizeof(float));
    cp(st.v32.data(), v, l.n * sizeof(float));
  }
  FT_CUDA(cudaStreamSynchronize(stream));
}

}  // namespace

// ---- DeviceAdamW8bit ----

size_t DeviceAdamW8bit::device_bytes_for(int64_t n, int64_t min_8bit_size) {
  return layout_for(n, min_8bit_size).bytes() + kMapBytes;
}

DeviceAdamW8bit::DeviceAdamW8bit(const cuda::Context& ctx, int64_t n, int64_t min_8bit_size)
    : ctx_(ctx), layout_(layout_for(n, min_8bit_size)), maps_(upload_maps()) {
  m_ = cuda::DeviceBuffer(layout_.elem_bytes() * n);
  v_ = cuda::DeviceBuffer(layout_.elem_bytes() * n);
  absmax_m_ = cuda::DeviceBuffer(sizeof(float) * layout_.blocks());
  absmax_v_ = cuda::DeviceBuffer(sizeof(float) * layout_.blocks());
  load(Adam8bitState(n, min_8bit_size));
}

void DeviceAdamW8bit::step(const AdamW8bitStep& s, float* p_dev, const float* g_dev) {
  launch(ctx_, s, layout_.is_8bit, p_dev, g_dev, m_.data(), v_.data(), absmax_m_.as<float>(), absmax_v_.as<float>(),
         maps_.as<float>(), layout_.n);
}

Adam8bitState DeviceAdamW8bit::to_host() const {
  ctx_.synchronize();
  Adam8bitState st(layout_.n, layout_.is_8bit ? 0 : layout_.n + 1);
  copy_states(layout_, st, m_.data(), v_.data(), absmax_m_.data(), absmax_v_.data(), ctx_.stream());
  return st;
}

void DeviceAdamW8bit::load(const Adam8bitState& st) {
  check_state(layout_, st);
  copy_states(layout_, st, m_.data(), v_.data(), absmax_m_.data(), absmax_v_.data(), ctx_.stream());
}

// ---- PagedAdamW8bit ----

size_t PagedAdamW8bit::device_bytes_for(int64_t n, size_t chunk_bytes, int64_t min_8bit_size) {
  const Adam8bitLayout layout = layout_for(n, min_8bit_size);
  const int64_t elems = chunk_elems_for(layout, chunk_bytes);
  const size_t blocks = layout.is_8bit ? static_cast<size_t>(elems / kAdam8bitBlock) : 0;
  return kMapBytes + 2 * (2 * layout.elem_bytes() * static_cast<size_t>(elems) + 2 * sizeof(float) * blocks);
}

PagedAdamW8bit::PagedAdamW8bit(const cuda::Context& ctx, int64_t n, size_t chunk_bytes, int64_t min_8bit_size)
    : ctx_(ctx), layout_(layout_for(n, min_8bit_size)), maps_(upload_maps()) {
  chunk_elems_ = chunk_elems_for(layout_, chunk_bytes);

  m_ = cuda::PinnedBuffer(layout_.elem_bytes() * n);
  v_ = cuda::PinnedBuffer(layout_.elem_bytes() * n);
  absmax_m_ = cuda::PinnedBuffer(sizeof(float) * layout_.blocks());
  absmax_v_ = cuda::PinnedBuffer(sizeof(float) * layout_.blocks());
  const int64_t slot_blocks = layout_.is_8bit ? chunk_elems_ / kAdam8bitBlock : 0;
  for (Slot& s : slots_) {
    s.m = cuda::DeviceBuffer(layout_.elem_bytes() * chunk_elems_);
    s.v = cuda::DeviceBuffer(layout_.elem_bytes() * chunk_elems_);
    s.absmax_m = cuda::DeviceBuffer(sizeof(float) * slot_blocks);
    s.absmax_v = cuda::DeviceBuffer(sizeof(float) * slot_blocks);
  }
  for (cudaEvent_t* e : {&uploaded_[0], &uploaded_[1], &computed_[0], &computed_[1], &downloaded_})
    FT_CUDA(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
  load(Adam8bitState(n, min_8bit_size));
}

PagedAdamW8bit::~PagedAdamW8bit() {
  // Copies may still target the pinned buffers; no throwing from a destructor.
  cudaStreamSynchronize(ctx_.side_stream());
  cudaStreamSynchronize(ctx_.stream());
  for (cudaEvent_t e : {uploaded_[0], uploaded_[1], computed_[0], computed_[1], downloaded_})
    if (e) cudaEventDestroy(e);
}

size_t PagedAdamW8bit::device_bytes() const {
  size_t b = maps_.bytes();
  for (const Slot& s : slots_) b += s.m.bytes() + s.v.bytes() + s.absmax_m.bytes() + s.absmax_v.bytes();
  return b;
}

size_t PagedAdamW8bit::host_bytes() const {
  return m_.bytes() + v_.bytes() + absmax_m_.bytes() + absmax_v_.bytes();
}

void PagedAdamW8bit::upload(int64_t chunk) {
  const Slot& s = slots_[chunk % 2];
  const int64_t off = chunk * chunk_elems_, len = std::min(chunk_elems_, layout_.n - off);
  const size_t eb = layout_.elem_bytes();
  cudaStream_t side = ctx_.side_stream();
  FT_CUDA(cudaMemcpyAsync(s.m.data(), m_.as<char>() + off * eb, len * eb, cudaMemcpyHostToDevice, side));
  FT_CUDA(cudaMemcpyAsync(s.v.data(), v_.as<char>() + off * eb, len * eb, cudaMemcpyHostToDevice, side));
  if (layout_.is_8bit) {
    const int64_t b0 = off / kAdam8bitBlock, nb = adam8bit_blocks(len);
    FT_CUDA(cudaMemcpyAsync(s.absmax_m.data(), absmax_m_.as<float>() + b0, nb * sizeof(float), cudaMemcpyHostToDevice,
                            side));
    FT_CUDA(cudaMemcpyAsync(s.absmax_v.data(), absmax_v_.as<float>() + b0, nb * sizeof(float), cudaMemcpyHostToDevice,
                            side));
  }
  FT_CUDA(cudaEventRecord(uploaded_[chunk % 2], side));
}

void PagedAdamW8bit::download(int64_t chunk) {
  const Slot& s = slots_[chunk % 2];
  const int64_t off = chunk * chunk_elems_, len = std::min(chunk_elems_, layout_.n - off);
  const size_t eb = layout_.elem_bytes();
  cudaStream_t side = ctx_.side_stream();
  FT_CUDA(cudaStreamWaitEvent(side, computed_[chunk % 2], 0));
  FT_CUDA(cudaMemcpyAsync(m_.as<char>() + off * eb, s.m.data(), len * eb, cudaMemcpyDeviceToHost, side));
  FT_CUDA(cudaMemcpyAsync(v_.as<char>() + off * eb, s.v.data(), len * eb, cudaMemcpyDeviceToHost, side));
  if (layout_.is_8bit) {
    const int64_t b0 = off / kAdam8bitBlock, nb = adam8bit_blocks(len);
    FT_CUDA(cudaMemcpyAsync(absmax_m_.as<float>() + b0, s.absmax_m.data(), nb * sizeof(float), cudaMemcpyDeviceToHost,
                            side));
    FT_CUDA(cudaMemcpyAsync(absmax_v_.as<float>() + b0, s.absmax_v.data(), nb * sizeof(float), cudaMemcpyDeviceToHost,
                            side));
  }
}

void PagedAdamW8bit::step(const AdamW8bitStep& s, float* p_dev, const float* g_dev) {
  if (layout_.n == 0) return;
  const int64_t nc = chunks();
  upload(0);
  for (int64_t k = 0; k < nc; ++k) {
    if (k + 1 < nc) upload(k + 1);  // overlaps chunk k's kernel
    const Slot& slot = slots_[k % 2];
    const int64_t off = k * chunk_elems_, len = std::min(chunk_elems_, layout_.n - off);
    FT_CUDA(cudaStreamWaitEvent(ctx_.stream(), uploaded_[k % 2], 0));
    launch(ctx_, s, layout_.is_8bit, p_dev + off, g_dev + off, slot.m.data(), slot.v.data(), slot.absmax_m.as<float>(),
           slot.absmax_v.as<float>(), maps_.as<float>(), len);
    FT_CUDA(cudaEventRecord(computed_[k % 2], ctx_.stream()));
    download(k);
  }
  FT_CUDA(cudaEventRecord(downloaded_, ctx_.side_stream()));
  FT_CUDA(cudaStreamWaitEvent(ctx_.stream(), downloaded_, 0));
}

Adam8bitState PagedAdamW8bit::to_host() const {
  ctx_.synchronize();
  FT_CUDA(cudaStreamSynchronize(ctx_.side_stream()));
  Adam8bitState st(layout_.n, layout_.is_8bit ? 0 : layout_.n + 1);
  copy_states(layout_, st, m_.as<void>(), v_.as<void>(), absmax_m_.as<void>(), absmax_v_.as<void>(),
              ctx_.side_stream());
  return st;
}

void PagedAdamW8bit::load(const Adam8bitState& st) {
  check_state(layout_, st);
  ctx_.synchronize();  // no step's copies may still be in flight; the copies below queue behind them on side
  copy_states(layout_, st, m_.as<void>(), v_.as<void>(), absmax_m_.as<void>(), absmax_v_.as<void>(),
              ctx_.side_stream());
}

}  // namespace ftune
