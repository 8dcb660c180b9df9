// `ftune inspect PATH`: what a model directory, adapter directory or safetensors file holds.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>
#include <map>

#include "cli/commands.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "io/peft_adapter.h"
#include "io/safetensors.h"
#include "model/llama_config.h"

namespace ftune {

namespace fs = std::filesystem;

namespace {

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  return fmt::format("{:.1f} {}", b, units[u]);
}

// Tensor count, element count and bytes per dtype.
void print_dtypes(const std::vector<const TensorInfo*>& infos) {
  std::map<std::string, std::array<int64_t, 3>> by;
  for (const auto* t : infos) {
    auto& e = by[dtype_name(t->dtype)];
    e[0] += 1;
    e[1] += Tensor::count(t->shape);
    e[2] += static_cast<int64_t>(t->end - t->begin);
  }
  for (const auto& [name, e] : by)
    fmt::print("  {:<5} {:>6} tensors  {:>14} elements  {}\n", name, e[0], e[1], human_bytes(static_cast<double>(e[2])));
}

void inspect_model(const std::string& dir) {
  const LlamaConfig c = load_llama_config(dir);
  fmt::print("model: {}\n", dir);
  fmt::print("  architecture  LlamaForCausalLM\n");
  fmt::print("  layers {}  hidden {}  intermediate {}  heads {}  kv_heads {}  head_dim {}\n", c.num_hidden_layers,
             c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim);
  fmt::print("  vocab {}  max_position {}  rope_theta {}  rope_scaling {}  rms_eps {}  tied embeddings {}\n",
             c.vocab_size, c.max_position_embeddings, c.rope_theta, c.rope_scaling.type, c.rms_norm_eps,
             c.tie_word_embeddings ? "yes" : "no");
  fmt::print("  parameters {} ({:.3f} B), config dtype {}\n", c.num_parameters(),
             static_cast<double>(c.num_parameters()) / 1e9, c.torch_dtype);
  const CheckpointReader ck(dir);
  std::vector<const TensorInfo*> infos;
  int64_t numel = 0;
  for (const auto& n : ck.names()) {
    infos.push_back(&ck.info(n));
    numel += Tensor::count(ck.info(n).shape);
  }
  fmt::print("  shards {}:\n", ck.shard_files().size());
  for (const auto& f : ck.shard_files())
    fmt::print("    {}  {}\n", fs::path(f).filename().string(), human_bytes(static_cast<double>(fs::file_size(f))));
  fmt::print("  tensors {} ({} elements{}):\n", infos.size(), numel,
             numel == c.num_parameters() ? ", matches config.json" : ", DOES NOT match config.json");
  print_dtypes(infos);
  std::vector<std::string> tok;
  for (const char* f : {"tokenizer.model", "tokenizer.json", "tokenizer_config.json"})
    if (fs::exists(fs::path(dir) / f)) tok.emplace_back(f);
  fmt::print("  tokenizer files: {}\n", tok.empty() ? std::string("none") : fmt::format("{}", fmt::join(tok, ", ")));
}

void inspect_adapter(const std::string& dir) {
  const LoraSpec s = load_peft_config(dir);
  fmt::print("adapter: {} (PEFT LoRA)\n", dir);
  fmt::print("  r {}  lora_alpha {}  scaling {:.4g}{}  dropout {}\n", s.r, s.alpha, s.scaling(),
             s.use_rslora ? " (rsLoRA)" : "", s.dropout);
  fmt::print("  target modules: {}\n", fmt::join(s.target_names(), ", "));
  const std::string path = (fs::path(dir) / "adapter_model.safetensors").string();
  const SafetensorsFile f = SafetensorsFile::open(path);
  std::vector<const TensorInfo*> infos;
  int64_t numel = 0, max_layer = -1;
  for (const auto& t : f.tensors()) {
    infos.push_back(&t);
    numel += Tensor::count(t.shape);
    const auto p = t.name.find("layers.");
    if (p != std::string::npos) max_layer = std::max<int64_t>(max_layer, std::atoll(t.name.c_str() + p + 7));
  }
  fmt::print("  tensors {} ({} parameters) over {} layers\n", infos.size(), numel, max_layer + 1);
  print_dtypes(infos);
}

void inspect_file(const std::string& path) {
  const SafetensorsFile f = SafetensorsFile::open(path);
  fmt::print("safetensors: {} ({} tensors)\n", path, f.tensors().size());
  for (const auto& [k, v] : f.metadata()) fmt::print("  metadata {} = {}\n", k, v);
  for (const auto& t : f.tensors()) fmt::print("  {:<60} {:<5} {}\n", t.name, dtype_name(t.dtype), shape_str(t.shape));
}

}  // namespace

void add_inspect_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("inspect", "Show what a model or adapter directory (or a .safetensors file) holds");
  auto path = std::make_shared<std::string>();
  cmd->add_option("path", *path, "Directory or .safetensors file")->required();
  cmd->callback([path] {
    const std::string& p = *path;
    if (!fs::exists(p)) fail("{}: no such file or directory", p);
    if (fs::is_regular_file(p)) return inspect_file(p);
    if (fs::exists(fs::path(p) / "adapter_config.json")) return inspect_adapter(p);
    if (fs::exists(fs::path(p) / "config.json")) return inspect_model(p);
    fail("{}: neither a model (config.json) nor a PEFT adapter (adapter_config.json) directory", p);
  });
}

}  // namespace ftune
