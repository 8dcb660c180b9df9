// Adam8bitState: the states of one flat vector and its step.
#include "optim/adamw8bit.h"

#include "core/error.h"

namespace ftune {

Adam8bitState::Adam8bitState(int64_t n, int64_t min_8bit_size) : n_(n), is_8bit_(n >= min_8bit_size) {
  if (n < 0) fail("optimizer state: length must be >= 0, got {}", n);
  if (is_8bit_) {
    m_q.assign(n, quantize_to_map(dynamic_map(true), 0.0f));
    v_q.assign(n, quantize_to_map(dynamic_map(false), 0.0f));
    absmax_m.assign(adam8bit_blocks(n), 0.0f);
    absmax_v.assign(adam8bit_blocks(n), 0.0f);
  } else {
    m32.assign(n, 0.0f);
    v32.assign(n, 0.0f);
  }
}

void Adam8bitState::step(const AdamW8bitStep& s, float* p, const float* g) {
  if (is_8bit_)
    adamw8bit_update(s, p, g, m_q.data(), v_q.data(), absmax_m.data(), absmax_v.data(), n_);
  else
    adam32_update(s, p, g, m32.data(), v32.data(), n_);
}

size_t Adam8bitState::state_bytes() const {
  return m_q.size() + v_q.size() + (absmax_m.size() + absmax_v.size() + m32.size() + v32.size()) * sizeof(float);
}

std::vector<float> Adam8bitState::first_moment() const {
  if (!is_8bit_) return m32;
  std::vector<float> out(n_);
  dequantize_blockwise(dynamic_map(true), m_q.data(), absmax_m.data(), n_, out.data());
  return out;
}

std::vector<float> Adam8bitState::second_moment() const {
  if (!is_8bit_) return v32;
  std::vector<float> out(n_);
  dequantize_blockwise(dynamic_map(false), v_q.data(), absmax_v.data(), n_, out.data());
  return out;
}

void save_adam8bit(const Adam8bitState& st, const std::string& prefix, StateDict& out) {
  out.u8[prefix + "m_q"] = st.m_q, out.u8[prefix + "v_q"] = st.v_q;
  out.f32[prefix + "absmax_m"] = st.absmax_m, out.f32[prefix + "absmax_v"] = st.absmax_v;
  out.f32[prefix + "m32"] = st.m32, out.f32[prefix + "v32"] = st.v32;
}

void load_adam8bit(Adam8bitState& st, const std::string& prefix, const StateDict& in) {
  auto n = [](const auto& v) { return static_cast<int64_t>(v.size()); };
  st.m_q = in.u8_of(prefix + "m_q", n(st.m_q)), st.v_q = in.u8_of(prefix + "v_q", n(st.v_q));
  st.absmax_m = in.f32_of(prefix + "absmax_m", n(st.absmax_m));
  st.absmax_v = in.f32_of(prefix + "absmax_v", n(st.absmax_v));
  st.m32 = in.f32_of(prefix + "m32", n(st.m32)), st.v32 = in.f32_of(prefix + "v32", n(st.v32));
}

}  // namespace ftune
