// The state of bitsandbytes' 8-bit blockwise AdamW for one flat fp32 parameter vector on the CPU;
// the update itself is ops/cpu/adamw8bit.h (the CUDA kernel's twin).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/state_dict.h"
#include "ops/cpu/adamw8bit.h"

namespace ftune {

// The optimizer state of one flat parameter vector of length n. bnb's min_8bit_size rule applied
// to the flat vector: n >= min_8bit_size gives 8-bit blockwise states, a shorter vector keeps fp32
// m and v and takes the 32-bit update (pass a huge min_8bit_size to force fp32, e.g. as a
// reference). A fresh state is zero: codes of 0.0 (127 signed, 0 unsigned) with absmax 0.
class Adam8bitState {
 public:
  explicit Adam8bitState(int64_t n, int64_t min_8bit_size = kMin8bitSize);

  // One update of p [n] from g [n].
  void step(const AdamW8bitStep& s, float* p, const float* g);

  int64_t size() const { return n_; }
  bool is_8bit() const { return is_8bit_; }
  size_t state_bytes() const;

  // Dequantized moments (the fp32 states themselves in fp32 mode). [n]
  std::vector<float> first_moment() const;
  std::vector<float> second_moment() const;

  // Raw states, for checkpoints and the GPU copies. 8-bit mode: m_q, v_q [n], absmax_m, absmax_v
  // [ceil(n/256)], m32/v32 empty. fp32 mode: m32, v32 [n], the rest empty.
  std::vector<uint8_t> m_q, v_q;
  std::vector<float> absmax_m, absmax_v;
  std::vector<float> m32, v32;

 private:
  int64_t n_ = 0;
  bool is_8bit_ = true;
};

// A state's arrays into a checkpoint under `prefix` (prefix + "m_q", "v_q", "absmax_m", "absmax_v",
// "m32", "v32"), and back: each must have the size this state has.
void save_adam8bit(const Adam8bitState& st, const std::string& prefix, StateDict& out);
void load_adam8bit(Adam8bitState& st, const std::string& prefix, const StateDict& in);

}  // namespace ftune
