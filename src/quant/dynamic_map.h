// bitsandbytes' dynamic 8-bit quantization map (create_dynamic_map(signed, 7, 8)) and the
// nearest-code search with the midpoint rule, shared by double quantization of NF4 absmax values
// and by the 8-bit optimizer states.
#pragma once
#include <array>
#include <cstdint>

namespace ftune {

using QuantMap = std::array<float, 256>;  // ascending

// The signed map spans [-0.99296875, 1] with 0 at index 127; the unsigned one [0, 1] with 0 at
// index 0. Computed with float32 arithmetic the way torch does it.
const QuantMap& dynamic_map(bool is_signed);

// Index of the map entry nearest to x (x already divided by its block's absmax): a binary search
// for the bracketing entries, then the midpoint decides (a tie takes the lower entry).
uint8_t quantize_to_map(const QuantMap& map, float x);

}  // namespace ftune
