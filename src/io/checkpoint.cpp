// Hugging Face weight directories: one model.safetensors, or shards named by an index file.
#include "io/checkpoint.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "core/error.h"

namespace ftune {

namespace fs = std::filesystem;

CheckpointReader::CheckpointReader(const std::string& dir) : dir_(dir) {
  const fs::path single = fs::path(dir) / "model.safetensors";
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  std::vector<std::string> files;
  std::map<std::string, std::string> placed;  // tensor -> shard file name, from the index
  if (fs::exists(index)) {
    std::ifstream f(index);
    std::stringstream ss;
    ss << f.rdbuf();
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(ss.str());
    } catch (const nlohmann::json::parse_error& e) {
      fail("{}: invalid JSON at byte {}", index.string(), e.byte);
    }
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      fail("{}: no 'weight_map' object", index.string());
    std::set<std::string> names;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string()) fail("{}: weight_map entry '{}' is not a file name", index.string(), it.key());
      const std::string file = it.value().get<std::string>();
      if (file.find('/') != std::string::npos || file == "." || file == "..")
        fail("{}: weight_map entry '{}' names '{}', which is not a file of this directory", index.string(), it.key(), file);
      placed[it.key()] = file;
      names.insert(file);
    }
    if (names.empty()) fail("{}: weight_map is empty", index.string());
    files.assign(names.begin(), names.end());
  } else if (fs::exists(single)) {
    files.push_back("model.safetensors");
  } else {
    fail("{}: no model.safetensors or model.safetensors.index.json", dir);
  }
  for (const auto& name : files) {
    const fs::path p = fs::path(dir) / name;
    if (!fs::exists(p)) fail("{}: shard '{}' named by model.safetensors.index.json is missing", dir, name);
    shard_files_.push_back(p.string());
    shards_.push_back(SafetensorsFile::open(p.string()));
    const size_t s = shards_.size() - 1;
    for (const auto& t : shards_.back().tensors()) {
      auto [it, fresh] = where_.emplace(t.name, s);
      if (!fresh) fail("{}: tensor '{}' is in both {} and {}", dir, t.name, files[it->second], name);
    }
  }
  for (const auto& [tensor, file] : placed) {
    auto it = where_.find(tensor);
    if (it == where_.end() || fs::path(shard_files_[it->second]).filename() != file)
      fail("{}: the index places tensor '{}' in {}, which does not hold it", dir, tensor, file);
  }
}

bool CheckpointReader::has(const std::string& name) const { return where_.count(name) > 0; }

const TensorInfo& CheckpointReader::info(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail("{}: tensor '{}' is missing from the checkpoint", dir_, name);
  return *shards_[it->second].find(name);
}

Tensor CheckpointReader::read_f32(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail("{}: tensor '{}' is missing from the checkpoint", dir_, name);
  return shards_[it->second].read_f32(name);
}

std::vector<std::string> CheckpointReader::names() const {
  std::vector<std::string> out;
  for (const auto& [n, _] : where_) out.push_back(n);
  return out;
}

const std::string& CheckpointReader::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail("{}: tensor '{}' is missing from the checkpoint", dir_, name);
  return shard_files_[it->second];
}

}  // namespace ftune
