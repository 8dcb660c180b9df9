// bitsandbytes 4-bit Linear weights in safetensors: the keys Linear4bit._save_to_state_dict writes
// (QuantState.as_dict(packed=True)), read with full validation and written byte-for-byte alike.
#pragma once
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "quant/nf4.h"

namespace ftune {

// True when `file` has a `<prefix>.quant_state.bitsandbytes__*` key, i.e. the weight `prefix`
// (`<module>.weight`) was saved by bitsandbytes in 4-bit form (nf4 or fp4).
bool is_bnb_4bit(const SafetensorsFile& file, const std::string& prefix);

// Reads the NF4 weight stored under `prefix` = `<module>.weight`:
//   prefix                                U8 [(n+1)/2, 1] packed codes (another storage dtype of the
//                                         same byte size is accepted, as bnb's quant_storage allows)
//   prefix.absmax                         U8 [nblocks] when nested, else F32 [nblocks]
//   prefix.quant_map                      F32 [16], must equal nf4_code()
//   prefix.nested_absmax                  F32 [ceil(nblocks/256)]   (nested only)
//   prefix.nested_quant_map               F32 [256]                 (nested only)
//   prefix.quant_state.bitsandbytes__nf4  U8 [len] JSON {quant_type, blocksize, dtype, shape
//                                         [, nested_blocksize, nested_dtype, nested_offset]}
// The file's nested_quant_map and nested_offset are used as stored (torch builds can differ from
// each other in the last bit of the map). `expected_shape` (e.g. [out, in]; empty = any) must
// equal the JSON shape. Every inconsistency,
// an fp4 weight included, throws one line naming the file and the key.
Nf4Tensor read_bnb_nf4(const SafetensorsFile& file, const std::string& prefix,
                       const std::vector<int64_t>& expected_shape = {});

// Adds exactly the keys above for `t` (validated first) to `w`.
void add_bnb_nf4(SafetensorsWriter& w, const std::string& prefix, const Nf4Tensor& t);

// The quant_state JSON as bitsandbytes' pack_dict_to_tensor writes it (Python json.dumps: keys in
// insertion order, ", " and ": " separators, nested_offset as Python's repr of the float).
std::string bnb_quant_state_json(const Nf4Tensor& t);

}  // namespace ftune
