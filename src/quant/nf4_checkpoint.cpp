// Reading and writing bitsandbytes' serialized Linear4bit weights (packed QuantState). The reader
// trusts nothing: every key's dtype and shape is checked against the JSON quant state before a
// byte is copied.
#include "quant/nf4_checkpoint.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_limits.h"

namespace ftune {

namespace {

using nlohmann::json;

const char* const kQuantStateKey = ".quant_state.bitsandbytes__";

std::string shape_text(const std::vector<int64_t>& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

std::vector<uint8_t> float_bytes(const float* v, size_t n) {
  std::vector<uint8_t> b(n * 4);
  if (n) std::memcpy(b.data(), v, n * 4);
  return b;
}

std::vector<float> read_floats(const SafetensorsFile& f, const TensorInfo& t) {
  const auto bytes = f.bytes(t);
  std::vector<float> v(bytes.size() / 4);
  if (!v.empty()) std::memcpy(v.data(), bytes.data(), v.size() * 4);
  return v;
}

// Python's repr of a float (what json.dumps writes): shortest round-trip digits, ".0" on integral
// values, NaN/Infinity spelled as Python's json module does.
std::string python_float(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  std::string s = fmt::format("{}", v);
  if (s.find_first_of(".en") == std::string::npos) s += ".0";
  return s;
}

class Reader {
 public:
  Reader(const SafetensorsFile& f, const std::string& prefix) : f_(f), prefix_(prefix) {}

  // The tensor `prefix + suffix`, which must exist.
  const TensorInfo& need(const std::string& suffix) const {
    const TensorInfo* t = f_.find(prefix_ + suffix);
    if (!t) fail("{}: tensor '{}' is missing (bitsandbytes 4-bit weight '{}')", f_.path(), prefix_ + suffix, prefix_);
    return *t;
  }

  void expect(const TensorInfo& t, DType dtype, const std::vector<int64_t>& shape, const std::string& why) const {
    if (t.dtype != dtype || t.shape != shape)
      fail("{}: tensor '{}' is {} {}, expected {} {} ({})", f_.path(), t.name, dtype_name(t.dtype), shape_text(t.shape),
           dtype_name(dtype), shape_text(shape), why);
  }

  [[noreturn]] void bad_state(const std::string& what) const {
    fail("{}: tensor '{}{}nf4': {}", f_.path(), prefix_, kQuantStateKey, what);
  }

 private:
  const SafetensorsFile& f_;
  const std::string& prefix_;
};

// The fields of the JSON quant state that the tensors are checked against.
struct QuantStateJson {
  int64_t blocksize = 0;
  std::string dtype;
  std::vector<int64_t> shape;
  bool nested = false;
  double offset = 0;
};

QuantStateJson parse_quant_state(const Reader& r, std::span<const uint8_t> bytes) {
  json j;
  try {
    j = parse_json_bounded(std::string(bytes.begin(), bytes.end()));
  } catch (const JsonTooDeep& e) {
    r.bad_state(e.what());
  } catch (const json::exception& e) {
    r.bad_state(fmt::format("not valid JSON ({})", e.what()));
  }
  if (!j.is_object()) r.bad_state("expected a JSON object");
  static const char* const kKnown[] = {"quant_type", "blocksize", "dtype", "shape",
                                       "nested_blocksize", "nested_dtype", "nested_offset"};
  for (const auto& it : j.items()) {
    bool known = false;
    for (const char* k : kKnown) known = known || it.key() == k;
    if (!known) r.bad_state(fmt::format("unexpected key '{}'", it.key()));
  }
  auto field = [&](const char* k) -> const json& {
    if (!j.contains(k)) r.bad_state(fmt::format("'{}' is missing", k));
    return j.at(k);
  };
  QuantStateJson q;
  const json& qt = field("quant_type");
  if (!qt.is_string() || qt.get<std::string>() != "nf4")
    r.bad_state(fmt::format("quant_type is {}, expected \"nf4\" (ftune supports NF4 only)", qt.dump()));
  const json& bs = field("blocksize");
  if (!bs.is_number_integer() || !nf4_valid_blocksize(bs.get<int64_t>()))
    r.bad_state(fmt::format("blocksize is {}, expected one of 32, 64, ..., 4096", bs.dump()));
  q.blocksize = bs.get<int64_t>();
  const json& dt = field("dtype");
  if (!dt.is_string() || (dt != "bfloat16" && dt != "float16" && dt != "float32"))
    r.bad_state(fmt::format("dtype is {}, expected \"bfloat16\", \"float16\" or \"float32\"", dt.dump()));
  q.dtype = dt.get<std::string>();
  const json& sh = field("shape");
  if (!sh.is_array()) r.bad_state(fmt::format("shape is {}, expected a list of dimensions", sh.dump()));
  int64_t n = 1;
  for (const json& d : sh) {
    if (!d.is_number_integer() || d.get<int64_t>() < 0 || (d.get<int64_t>() > 0 && n > INT64_MAX / d.get<int64_t>()))
      r.bad_state(fmt::format("shape is {}, expected non-negative dimensions", sh.dump()));
    q.shape.push_back(d.get<int64_t>());
    n *= d.get<int64_t>();
  }
  q.nested = j.contains("nested_blocksize") || j.contains("nested_dtype") || j.contains("nested_offset");
  if (q.nested) {
    const json& nb = field("nested_blocksize");
    if (!nb.is_number_integer() || nb.get<int64_t>() != kNf4NestedBlocksize)
      r.bad_state(fmt::format("nested_blocksize is {}, expected 256", nb.dump()));
    const json& nd = field("nested_dtype");
    if (nd != "float32") r.bad_state(fmt::format("nested_dtype is {}, expected \"float32\"", nd.dump()));
    const json& off = field("nested_offset");
    if (!off.is_number() || !std::isfinite(off.get<double>()))
      r.bad_state(fmt::format("nested_offset is {}, expected a finite number", off.dump()));
    q.offset = off.get<double>();
  }
  return q;
}

}  // namespace

bool is_bnb_4bit(const SafetensorsFile& file, const std::string& prefix) {
  const std::string head = prefix + kQuantStateKey;
  for (const auto& t : file.tensors())
    if (t.name.compare(0, head.size(), head) == 0) return true;
  return false;
}

Nf4Tensor read_bnb_nf4(const SafetensorsFile& file, const std::string& prefix,
                       const std::vector<int64_t>& expected_shape) {
  const Reader r(file, prefix);
  // bitsandbytes requires exactly one quant_state key; name the fp4 case plainly.
  const std::string head = prefix + kQuantStateKey;
  std::vector<std::string> states;
  for (const auto& t : file.tensors())
    if (t.name.compare(0, head.size(), head) == 0) states.push_back(t.name);
  if (states.size() > 1) fail("{}: weight '{}' has {} quant_state keys, expected one", file.path(), prefix, states.size());
  if (states.size() == 1 && states[0] != head + "nf4")
    fail("{}: tensor '{}': the weight is quantized as '{}', but ftune reads NF4 only (bnb_4bit_quant_type=\"nf4\")",
         file.path(), states[0], states[0].substr(head.size()));
  const TensorInfo& qs = r.need(std::string(kQuantStateKey) + "nf4");
  if (qs.dtype != DType::U8 || qs.shape.size() != 1)
    fail("{}: tensor '{}' is {} {}, expected U8 [length] (JSON bytes)", file.path(), qs.name, dtype_name(qs.dtype),
         shape_text(qs.shape));
  const QuantStateJson q = parse_quant_state(r, file.bytes(qs));
  if (!expected_shape.empty() && q.shape != expected_shape)
    fail("{}: tensor '{}': quant_state shape is {}, expected {}", file.path(), qs.name, shape_text(q.shape),
         shape_text(expected_shape));

  Nf4Tensor t;
  t.shape = q.shape;
  t.numel = 1;
  for (int64_t d : q.shape) t.numel *= d;
  t.blocksize = q.blocksize;
  t.dtype = q.dtype;
  t.nested = q.nested;
  const int64_t n = t.numel, nb = t.nblocks();
  const std::string elems = fmt::format("{} elements of {} in blocks of {}", n, shape_text(q.shape), q.blocksize);

  const TensorInfo& packed = r.need("");
  const auto want_bytes = static_cast<size_t>((n + 1) / 2);
  const auto item = static_cast<int64_t>(dtype_size(packed.dtype));
  const bool packed_ok = packed.shape.size() == 2 && packed.shape[1] == 1 && packed.end - packed.begin == want_bytes &&
                         packed.shape[0] * item == static_cast<int64_t>(want_bytes);
  if (!packed_ok)
    fail("{}: tensor '{}' is {} {} ({} bytes), expected U8 [{}, 1] ({} packed 4-bit codes of {})", file.path(),
         packed.name, dtype_name(packed.dtype), shape_text(packed.shape), packed.end - packed.begin, want_bytes,
         want_bytes, elems);
  const auto pb = file.bytes(packed);
  t.packed.assign(pb.begin(), pb.end());

  const TensorInfo& absmax = r.need(".absmax");
  if (t.nested) {
    r.expect(absmax, DType::U8, {nb}, "quantized absmax of " + elems);
    const auto ab = file.bytes(absmax);
    t.absmax_q.assign(ab.begin(), ab.end());
  } else {
    r.expect(absmax, DType::F32, {nb}, "absmax of " + elems);
    t.absmax = read_floats(file, absmax);
  }

  const TensorInfo& qmap = r.need(".quant_map");
  r.expect(qmap, DType::F32, {16}, "the NF4 code table");
  const auto code = read_floats(file, qmap);
  for (size_t i = 0; i < 16; ++i)
    if (code[i] != nf4_code()[i])
      fail("{}: tensor '{}' entry {} is {}, expected the NF4 value {}", file.path(), qmap.name, i, code[i],
           nf4_code()[i]);

  if (t.nested) {
    const TensorInfo& a2 = r.need(".nested_absmax");
    r.expect(a2, DType::F32, {t.nblocks2()}, fmt::format("one scale per 256 of the {} absmax values", nb));
    t.absmax2 = read_floats(file, a2);
    const TensorInfo& m2 = r.need(".nested_quant_map");
    r.expect(m2, DType::F32, {256}, "the 8-bit dynamic map");
    const auto map = read_floats(file, m2);
    for (size_t i = 0; i < 256; ++i) {
      if (!std::isfinite(map[i]) || std::fabs(map[i]) > 1.0f)
        fail("{}: tensor '{}' entry {} is {}, expected a value in [-1, 1]", file.path(), m2.name, i, map[i]);
      t.code2[i] = map[i];
    }
    t.offset = static_cast<float>(q.offset);
  } else {
    for (const char* k : {".nested_absmax", ".nested_quant_map"})
      if (file.find(prefix + k))
        fail("{}: tensor '{}{}' is present but the quant_state has no nested_* fields", file.path(), prefix, k);
  }
  nf4_validate(t, file.path() + ": " + prefix);
  return t;
}

std::string bnb_quant_state_json(const Nf4Tensor& t) {
  std::string s = fmt::format(R"({{"quant_type": "nf4", "blocksize": {}, "dtype": "{}", "shape": [{}])", t.blocksize,
                              t.dtype, fmt::join(t.shape, ", "));
  if (t.nested)
    s += fmt::format(R"(, "nested_blocksize": {}, "nested_dtype": "float32", "nested_offset": {})", kNf4NestedBlocksize,
                     python_float(static_cast<double>(t.offset)));
  return s + "}";
}

void add_bnb_nf4(SafetensorsWriter& w, const std::string& prefix, const Nf4Tensor& t) {
  nf4_validate(t, prefix);
  const int64_t nb = t.nblocks();
  w.add(prefix, DType::U8, {static_cast<int64_t>(t.packed.size()), 1}, t.packed);
  if (t.nested) {
    w.add(prefix + ".absmax", DType::U8, {nb}, t.absmax_q);
    w.add(prefix + ".nested_absmax", DType::F32, {t.nblocks2()}, float_bytes(t.absmax2.data(), t.absmax2.size()));
    w.add(prefix + ".nested_quant_map", DType::F32, {256}, float_bytes(t.code2.data(), 256));
  } else {
    w.add(prefix + ".absmax", DType::F32, {nb}, float_bytes(t.absmax.data(), t.absmax.size()));
  }
  w.add(prefix + ".quant_map", DType::F32, {16}, float_bytes(nf4_code().data(), 16));
  const std::string js = bnb_quant_state_json(t);
  w.add(prefix + kQuantStateKey + "nf4", DType::U8, {static_cast<int64_t>(js.size())},
        std::vector<uint8_t>(js.begin(), js.end()));
}

}  // namespace ftune
