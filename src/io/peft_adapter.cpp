// PEFT adapter reading and writing.
#include "io/peft_adapter.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/json_limits.h"
#include "io/safetensors.h"

namespace ftune {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

int proj_index(const std::string& name) {
  for (int p = 0; p < kNumProj; ++p)
    if (name == proj_name(static_cast<Proj>(p))) return p;
  return -1;
}

void write_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    f << text;
    if (!f) fail("{}: cannot write", tmp);
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) fail("{}: cannot rename into place: {}", path, ec.message());
}

}  // namespace

// Only the keys peft's LoraConfig has had since its early releases, and no null that a default
// covers: older peft versions refuse keys they do not know, and every peft fills in the rest.
// use_rslora (peft 0.7+) is written only when it is on, since an adapter that needs it cannot be
// read correctly by a peft without it anyway.
std::string peft_config_json(const LoraSpec& spec, const std::string& base_model) {
  json j;  // std::map-backed: keys come out sorted, as peft writes them
  const bool int_alpha = std::floor(spec.alpha) == spec.alpha;
  j["base_model_name_or_path"] = base_model;
  j["bias"] = "none";
  j["fan_in_fan_out"] = false;
  j["inference_mode"] = true;
  j["init_lora_weights"] = true;
  j["lora_alpha"] = int_alpha ? json(static_cast<int64_t>(spec.alpha)) : json(spec.alpha);
  j["lora_dropout"] = spec.dropout;
  j["peft_type"] = "LORA";
  j["r"] = spec.r;
  j["target_modules"] = spec.target_names();
  j["task_type"] = "CAUSAL_LM";
  if (spec.use_rslora) j["use_rslora"] = true;
  return j.dump(2);
}

LoraSpec load_peft_config(const std::string& dir) {
  const std::string path = (fs::path(dir) / "adapter_config.json").string();
  std::ifstream f(path);
  if (!f) fail("{}: not found (is '{}' a PEFT adapter directory?)", path, dir);
  std::stringstream ss;
  ss << f.rdbuf();
  json j;
  try {
    j = parse_json_bounded(ss.str());
  } catch (const JsonTooDeep& e) {
    fail("{}: {}", path, e.what());
  } catch (const json::parse_error& e) {
    fail("{}: invalid JSON at byte {}", path, e.byte);
  }
  if (!j.is_object()) fail("{}: expected a JSON object", path);
  auto get = [&](const char* key) -> const json* {
    auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  };
  auto require_number = [&](const char* key) -> double {
    const json* v = get(key);
    if (!v || !v->is_number()) fail("{}: key '{}' must be a number", path, key);
    return v->get<double>();
  };
  if (const json* t = get("peft_type"); t && (!t->is_string() || t->get<std::string>() != "LORA"))
    fail("{}: peft_type {} is not supported (only LORA)", path, t->dump());
  if (const json* t = get("use_dora"); t && t->is_boolean() && t->get<bool>()) fail("{}: use_dora=true is not supported", path);
  for (const char* key : {"rank_pattern", "alpha_pattern"})
    if (const json* t = get(key); t && !(t->is_object() && t->empty()))
      fail("{}: key '{}' is not supported yet (must be empty)", path, key);
  if (get("layers_to_transform")) fail("{}: key 'layers_to_transform' is not supported yet (must be null)", path);
  if (const json* t = get("bias"); t && t->is_string() && t->get<std::string>() != "none")
    fail("{}: bias '{}' is not supported (only 'none')", path, t->get<std::string>());
  if (const json* t = get("fan_in_fan_out"); t && t->is_boolean() && t->get<bool>())
    fail("{}: fan_in_fan_out=true does not apply to Llama", path);

  LoraSpec spec;
  const double r = require_number("r");
  if (r < 1 || std::floor(r) != r) fail("{}: key 'r' must be a positive integer, found {}", path, r);
  spec.r = static_cast<int64_t>(r);
  spec.alpha = require_number("lora_alpha");
  if (const json* d = get("lora_dropout")) spec.dropout = d->is_number() ? d->get<double>() : 0.0;
  if (const json* u = get("use_rslora")) spec.use_rslora = u->is_boolean() && u->get<bool>();
  const json* tm = get("target_modules");
  if (!tm) fail("{}: key 'target_modules' is missing", path);
  std::vector<std::string> names;
  if (tm->is_string()) {
    fail("{}: target_modules as a regular expression ('{}') is not supported; list the module names", path,
         tm->get<std::string>());
  } else if (tm->is_array()) {
    for (const auto& x : *tm) {
      if (!x.is_string()) fail("{}: target_modules must hold strings", path);
      names.push_back(x.get<std::string>());
    }
  } else {
    fail("{}: target_modules must be a list of module names", path);
  }
  for (const auto& n : names) {
    const int p = proj_index(n);
    if (p < 0)
      fail("{}: target module '{}' is not a Llama projection (q_proj k_proj v_proj o_proj gate_proj up_proj down_proj)",
           path, n);
    spec.targets[p] = true;
  }
  return spec;
}

LoraParams load_peft_adapter(const std::string& dir, const LlamaConfig& cfg) {
  const LoraSpec spec = load_peft_config(dir);
  std::string path = (fs::path(dir) / "adapter_model.safetensors").string();
  if (!fs::exists(path)) fail("{}: not found (adapter_model.bin is not read; save with safetensors)", path);
  SafetensorsFile file = SafetensorsFile::open(path);
  LoraParams lp = LoraParams::zeros(cfg, spec);
  std::set<std::string> expected;
  lp.for_each([&](const std::string& key, Tensor& t) {
    expected.insert(key);
    const TensorInfo* info = file.find(key);
    if (!info) fail("{}: tensor '{}' is missing (adapter_config.json targets it)", path, key);
    if (info->shape != t.shape)
      fail("{}: tensor '{}' has shape {} but r={} and config.json imply {}", path, key, shape_str(info->shape), spec.r,
           shape_str(t.shape));
    t = file.read_f32(key);
    for (size_t i = 0; i < t.data.size(); ++i)
      if (!std::isfinite(t.data[i]))
        fail("{}: tensor '{}' holds {} at element {}", path, key, std::isnan(t.data[i]) ? "NaN" : "infinity", i);
  });
  for (const auto& info : file.tensors())
    if (!expected.count(info.name))
      fail("{}: unexpected tensor '{}' (not a LoRA weight of the targeted modules in {} layers)", path, info.name,
           cfg.num_hidden_layers);
  return lp;
}

void save_peft_adapter(const std::string& dir, const LoraParams& lora, const std::string& base_model) {
  SafetensorsWriter w;
  lora.for_each([&](const std::string& key, const Tensor& t) { w.add_f32(key, t, DType::F32); });
  w.write((fs::path(dir) / "adapter_model.safetensors").string(), {{"format", "pt"}});
  write_atomic((fs::path(dir) / "adapter_config.json").string(), peft_config_json(lora.spec, base_model));
}

}  // namespace ftune
