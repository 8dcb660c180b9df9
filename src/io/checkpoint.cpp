// Hugging Face weight directories: one model.safetensors, or shards named by
// model.safetensors.index.json; every shard is validated and tensors are found by name.
#include "io/checkpoint.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/json_limits.h"

namespace ftune {

namespace fs = std::filesystem;

namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// File text goes into one-line errors: no control characters, bounded length.
std::string printable(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (out.size() >= 160) return out + "...";
    out += (c < 0x20 || c == 0x7f) ? '?' : static_cast<char>(c);
  }
  return out;
}

// The index's weight_map (tensor -> shard file name). Duplicate keys are refused: the JSON
// library would keep only the last, hiding a broken index.
std::map<std::string, std::string> read_weight_map(const std::string& index) {
  std::ifstream in(index, std::ios::binary);
  if (!in) fail("{}: cannot read", index);
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) fail("{}: cannot read", index);

  using json = nlohmann::json;
  std::vector<std::pair<std::string, std::set<std::string>>> open;  // (key owning the object, its keys)
  std::string last_key;
  auto cb = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (json_too_deep(depth, ev)) fail("{}: {}", index, JsonTooDeep().what());
    if (ev == json::parse_event_t::object_start) {
      open.emplace_back(last_key, std::set<std::string>{});
    } else if (ev == json::parse_event_t::object_end) {
      if (!open.empty()) open.pop_back();
    } else if (ev == json::parse_event_t::key) {
      last_key = parsed.get<std::string>();
      if (!open.empty() && !open.back().second.insert(last_key).second) {
        if (open.size() == 2 && open.back().first == "weight_map")
          fail("{}: weight_map lists tensor '{}' twice", index, printable(last_key));
        fail("{}: the key '{}' appears twice", index, printable(last_key));
      }
    }
    return true;
  };
  json j;
  try {
    j = json::parse(text.str(), cb);
  } catch (const json::exception& e) {
    std::string_view what = e.what();
    if (const size_t close = what.find("] "); close != std::string_view::npos) what.remove_prefix(close + 2);
    fail("{}: invalid JSON ({})", index, printable(what));
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    fail("{}: expected an object with a 'weight_map' object (tensor name -> shard file)", index);
  std::map<std::string, std::string> placed;
  for (const auto& [tensor, file] : j["weight_map"].items()) {
    if (!file.is_string())
      fail("{}: weight_map entry for tensor '{}' is not a file name string", index, printable(tensor));
    const std::string name = file.get<std::string>();
    // Shards live beside the index; a path could make the reader open files anywhere.
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
        name.find('\0') != std::string::npos)
      fail("{}: weight_map places tensor '{}' in '{}', which is not a file name of this directory", index,
           printable(tensor), printable(name));
    placed[tensor] = name;
  }
  if (placed.empty()) fail("{}: weight_map is empty", index);
  return placed;
}

}  // namespace

CheckpointReader::CheckpointReader(const std::string& dir) : dir_(dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail("{}: not a directory (expected a model directory with {})", dir, kSingleFile);
  const fs::path single = fs::path(dir) / kSingleFile;
  const fs::path index = fs::path(dir) / kIndexFile;
  std::map<std::string, std::string> placed;  // from the index: tensor -> shard file name
  std::vector<std::string> files;
  // transformers also takes model.safetensors first when both are present.
  if (is_file(single)) {
    files.push_back(kSingleFile);
  } else if (is_file(index)) {
    placed = read_weight_map(index.string());
    std::map<std::string, size_t> per_file;
    for (const auto& [tensor, file] : placed) ++per_file[file];
    for (const auto& [file, count] : per_file) {
      const fs::path p = fs::path(dir) / file;
      if (!is_file(p))
        fail("{}: missing, but {} places {} tensor(s) in it (incomplete download?)", p.string(), kIndexFile, count);
      files.push_back(file);
    }
  } else {
    fail("{}: no {} or {}", dir, kSingleFile, kIndexFile);
  }

  for (const auto& file : files) {
    shard_files_.push_back((fs::path(dir) / file).string());
    shards_.push_back(SafetensorsFile::open(shard_files_.back()));
    const size_t s = shards_.size() - 1;
    for (const auto& t : shards_.back().tensors()) {
      auto [it, fresh] = where_.emplace(t.name, s);
      if (!fresh)
        fail("{}: tensor '{}' is in both {} and {}", dir, printable(t.name), files[it->second], file);
    }
  }
  for (const auto& [tensor, file] : placed) {
    auto it = where_.find(tensor);
    if (it == where_.end())
      fail("{}: weight_map places tensor '{}' in {}, which does not hold it (no shard does)", index.string(),
           printable(tensor), file);
    if (files[it->second] != file)
      fail("{}: weight_map places tensor '{}' in {}, which does not hold it (it is in {})", index.string(),
           printable(tensor), file, files[it->second]);
  }
}

bool CheckpointReader::has(const std::string& name) const { return where_.count(name) > 0; }

const TensorInfo& CheckpointReader::info(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail("{}: tensor '{}' is missing from the checkpoint", dir_, printable(name));
  return *shards_[it->second].find(name);
}

Tensor CheckpointReader::read_f32(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail("{}: tensor '{}' is missing from the checkpoint", dir_, printable(name));
  return shards_[it->second].read_f32(name);
}

std::vector<std::string> CheckpointReader::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [n, _] : where_) out.push_back(n);
  return out;
}

const std::string& CheckpointReader::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail("{}: tensor '{}' is missing from the checkpoint", dir_, printable(name));
  return shard_files_[it->second];
}

const SafetensorsFile& CheckpointReader::shard_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail("{}: tensor '{}' is missing from the checkpoint", dir_, printable(name));
  return shards_[it->second];
}

}  // namespace ftune
