// Checkpoint directories: atomic writes (temporary directory, fsync, rename), a manifest of CRC-32s
// (zlib's), verification before anything is loaded.
#include "train/run_checkpoint.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/json_limits.h"
#include "io/safetensors.h"

namespace ftune {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string step_name(int64_t step) { return fmt::format("step-{:08d}", step); }

uint32_t crc_of(const std::string& bytes) {
  uLong c = crc32(0L, Z_NULL, 0);
  size_t at = 0;
  while (at < bytes.size()) {  // zlib takes uInt lengths
    const uInt n = static_cast<uInt>(std::min<size_t>(bytes.size() - at, 1u << 30));
    c = crc32(c, reinterpret_cast<const Bytef*>(bytes.data() + at), n);
    at += n;
  }
  return static_cast<uint32_t>(c);
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) fail("{}: cannot be read", p.string());
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) fail("{}: read error", p.string());
  return ss.str();
}

// Writes `bytes` to `path` and fsyncs it: on return the file is on the disk.
void write_synced(const fs::path& path, const std::string& bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("{}: cannot write: {}", path.string(), std::strerror(errno));
  size_t at = 0;
  while (at < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + at, bytes.size() - at);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      ::close(fd);
      fail("{}: cannot write: {}", path.string(), std::strerror(e));
    }
    at += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) fail("{}: cannot write: {}", path.string(), std::strerror(errno));
}

void sync_dir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

std::string state_bytes(const BackendState& s) {
  SafetensorsWriter w;
  for (const auto& [name, v] : s.f32) {
    std::vector<uint8_t> b(v.size() * 4);
    if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
    w.add("f32." + name, DType::F32, {static_cast<int64_t>(v.size())}, std::move(b));
  }
  for (const auto& [name, v] : s.u8) w.add("u8." + name, DType::U8, {static_cast<int64_t>(v.size())}, v);
  std::map<std::string, std::string> meta;
  for (const auto& [name, v] : s.ints) meta["int." + name] = std::to_string(v);
  return w.to_bytes(meta);
}

BackendState parse_state(const std::string& bytes, const std::string& label) {
  const SafetensorsFile f =
      SafetensorsFile::from_bytes(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), label);
  BackendState s;
  for (const auto& t : f.tensors()) {
    const auto raw = f.bytes(t);
    if (t.name.starts_with("f32.") && t.dtype == DType::F32) {
      std::vector<float> v(raw.size() / 4);
      if (!v.empty()) std::memcpy(v.data(), raw.data(), v.size() * 4);
      s.f32[t.name.substr(4)] = std::move(v);
    } else if (t.name.starts_with("u8.") && t.dtype == DType::U8) {
      s.u8[t.name.substr(3)] = std::vector<uint8_t>(raw.begin(), raw.end());
    } else {
      fail("{}: unexpected tensor '{}'", label, t.name);
    }
  }
  for (const auto& [k, v] : f.metadata()) {
    if (!k.starts_with("int.")) continue;
    try {
      s.ints[k.substr(4)] = std::stoll(v);
    } catch (const std::exception&) {
      fail("{}: metadata '{}' is not an integer", label, k);
    }
  }
  return s;
}

}  // namespace

std::string write_checkpoint(const std::string& root, const TrainProgress& p, const BackendState& state,
                             const std::string& config_yaml, const std::string& metrics, int64_t keep_last) {
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) fail("{}: cannot create: {}", root, ec.message());
  const fs::path final_dir = fs::path(root) / step_name(p.step);
  const fs::path tmp = fs::path(root) / (".tmp-" + step_name(p.step));
  fs::remove_all(tmp, ec);
  fs::create_directory(tmp, ec);
  if (ec) fail("{}: cannot create: {}", tmp.string(), ec.message());
  const json trainer = {{"step", p.step},
                        {"epoch", p.batcher.epoch},
                        {"cursor", p.batcher.cursor},
                        {"skipped_steps", p.skipped_steps}};
  const std::vector<std::pair<std::string, std::string>> files = {{"state.safetensors", state_bytes(state)},
                                                                  {"trainer.json", trainer.dump(2) + "\n"},
                                                                  {"config.yaml", config_yaml},
                                                                  {"metrics.jsonl", metrics}};
  json manifest = {{"step", p.step}, {"files", json::object()}};
  try {
    for (const auto& [name, bytes] : files) {
      write_synced(tmp / name, bytes);
      manifest["files"][name] = {{"bytes", bytes.size()}, {"crc32", fmt::format("{:08x}", crc_of(bytes))}};
    }
    write_synced(tmp / "manifest.json", manifest.dump(2) + "\n");
  } catch (const Error& e) {
    // A full disk (or any failed write): the partial files go, so they take no space and are never
    // read; the checkpoints already complete are untouched.
    fs::remove_all(tmp, ec);
    const auto kept = list_checkpoints(root);
    fail("checkpoint of step {} not written ({}); {}", p.step, e.what(),
         kept.empty() ? std::string("there is no earlier checkpoint")
                      : fmt::format("the previous checkpoint {} is intact", kept.front()));
  }
  sync_dir(tmp);
  fs::remove_all(final_dir, ec);  // a checkpoint of the same step from an earlier attempt
  fs::rename(tmp, final_dir, ec);
  if (ec) fail("{}: cannot move into place: {}", final_dir.string(), ec.message());
  sync_dir(root);
  if (keep_last > 0) {
    const auto all = list_checkpoints(root);
    for (size_t i = static_cast<size_t>(keep_last); i < all.size(); ++i) fs::remove_all(all[i], ec);
  }
  return final_dir.string();
}

std::vector<std::string> list_checkpoints(const std::string& root) {
  std::vector<std::string> out;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.starts_with("step-") && n.size() == 13 &&
        n.find_first_not_of("0123456789", 5) == std::string::npos)
      out.push_back(e.path().string());
  }
  std::sort(out.rbegin(), out.rend());  // zero-padded step numbers: newest first
  return out;
}

Checkpoint read_checkpoint(const std::string& dir) {
  const fs::path d(dir);
  const fs::path mpath = d / "manifest.json";
  if (!fs::is_regular_file(mpath)) fail("{}: no manifest.json (not a complete checkpoint)", dir);
  json manifest;
  try {
    manifest = parse_json_bounded(slurp(mpath));
  } catch (const std::exception& e) {
    fail("{}: invalid JSON ({})", mpath.string(), json_reason(e));
  }
  if (!manifest.is_object() || !manifest.contains("files") || !manifest["files"].is_object())
    fail("{}: expected an object with 'files'", mpath.string());
  std::map<std::string, std::string> got;
  for (const char* name : {"state.safetensors", "trainer.json", "config.yaml", "metrics.jsonl"}) {
    const auto it = manifest["files"].find(name);
    if (it == manifest["files"].end() || !it->is_object() || !it->contains("bytes") || !it->contains("crc32"))
      fail("{}: lists no {}", mpath.string(), name);
    const fs::path p = d / name;
    if (!fs::is_regular_file(p)) fail("{}: missing", p.string());
    std::string bytes = slurp(p);
    if (!(*it)["bytes"].is_number_unsigned() || bytes.size() != (*it)["bytes"].get<uint64_t>())
      fail("{}: {} bytes, the manifest says {} (truncated?)", p.string(), bytes.size(), (*it)["bytes"].dump());
    if (!(*it)["crc32"].is_string() || fmt::format("{:08x}", crc_of(bytes)) != (*it)["crc32"].get<std::string>())
      fail("{}: checksum {:08x} does not match the manifest's {} (the file is damaged)", p.string(), crc_of(bytes),
           (*it)["crc32"].dump());
    got[name] = std::move(bytes);
  }
  Checkpoint c;
  c.dir = dir;
  json t;
  try {
    t = parse_json_bounded(got["trainer.json"]);
    c.progress.step = t.at("step").get<int64_t>();
    c.progress.batcher.epoch = t.at("epoch").get<int64_t>();
    c.progress.batcher.cursor = t.at("cursor").get<uint64_t>();
    c.progress.skipped_steps = t.at("skipped_steps").get<int64_t>();
  } catch (const std::exception& e) {
    fail("{}/trainer.json: {}", dir, json_reason(e));
  }
  c.state = parse_state(got["state.safetensors"], (d / "state.safetensors").string());
  c.config_yaml = std::move(got["config.yaml"]);
  c.metrics = std::move(got["metrics.jsonl"]);
  return c;
}

}  // namespace ftune
