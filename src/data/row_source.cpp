// Row readers: JSONL line by line, plain text by line/paragraph/document, Parquet by row group.
#include "data/row_source.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/json_limits.h"
#include "data/parquet/reader.h"

namespace ftune {

namespace fs = std::filesystem;
using nlohmann::json;

std::string RowRef::str() const {
  if (parquet) return fmt::format("{} row {}", file, row);
  if (element) return fmt::format("{}[{}]", file, row);
  return fmt::format("{}:{}", file, row);
}

namespace {

enum class Kind { Jsonl, Parquet, Text, Other };

Kind kind_of(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  if (ext == ".jsonl" || ext == ".json" || ext == ".ndjson") return Kind::Jsonl;
  if (ext == ".parquet") return Kind::Parquet;
  if (ext == ".txt" || ext == ".text" || ext == ".md") return Kind::Text;
  return Kind::Other;
}

bool blank(const std::string& s) { return s.find_first_not_of(" \t\r\n") == std::string::npos; }

// Valid UTF-8 (no overlongs, no surrogates, at most U+10FFFF); returns the offset of the first
// bad byte or npos.
size_t bad_utf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    size_t len;
    uint32_t cp;
    if (c < 0x80) { ++i; continue; }
    if ((c & 0xE0) == 0xC0) len = 2, cp = c & 0x1F;
    else if ((c & 0xF0) == 0xE0) len = 3, cp = c & 0x0F;
    else if ((c & 0xF8) == 0xF0) len = 4, cp = c & 0x07;
    else return i;
    if (i + len > n) return i;
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return i;
    i += len;
  }
  return std::string::npos;
}

void read_jsonl(const std::string& file, const std::function<void(const RowRef&, const json&)>& on_row,
                const std::function<void(const RowRef&, const std::string&)>& on_bad) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail("{}: cannot be read", file);
  std::string line;
  for (int64_t lineno = 1; std::getline(in, line); ++lineno) {
    if (lineno == 1 && line.starts_with("\xEF\xBB\xBF")) line.erase(0, 3);  // byte-order mark
    if (blank(line)) continue;
    const RowRef at{file, lineno};
    if (const size_t b = bad_utf8(line); b != std::string::npos) {
      on_bad(at, fmt::format("invalid UTF-8 at byte {}", b + 1));
      continue;
    }
    json row;
    try {
      row = parse_json_bounded(line);
    } catch (const JsonTooDeep& e) {
      on_bad(at, e.what());
      continue;
    } catch (const json::exception& e) {
      std::string why = e.what();
      const auto colon = why.find(": ", why.find("column "));
      if (colon != std::string::npos) why = why.substr(colon + 2);
      on_bad(at, fmt::format("invalid JSON: {}", why));
      continue;
    }
    if (!row.is_object()) {
      on_bad(at, fmt::format("row is not a JSON object (found {})", row.type_name()));
      continue;
    }
    on_row(at, row);
  }
  if (in.bad()) fail("{}: read error", file);
}

// True when a .json file holds one JSON array of rows (what Hugging Face `load_dataset("json")`
// also reads) rather than JSON lines: its first non-blank character is '['.
bool is_json_array(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  char c;
  while (in.get(c))
    if (!std::isspace(static_cast<unsigned char>(c)) && c != '\xEF' && c != '\xBB' && c != '\xBF') return c == '[';
  return false;
}

// One JSON array of rows, streamed: each element is handed on as soon as it is complete and then
// dropped from the array, so memory holds one row at a time (plus the parser's state). A file
// that is not one valid array is a file-level error; an element that is not an object is a bad row.
void read_json_array(const std::string& file, const std::function<void(const RowRef&, const json&)>& on_row,
                     const std::function<void(const RowRef&, const std::string&)>& on_bad) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail("{}: cannot be read", file);
  int64_t element = 0;
  auto cb = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (json_too_deep(depth, ev)) {
      RowRef at{file, element};
      at.element = true;
      fail("{}: {}", at.str(), JsonTooDeep().what());
    }
    const bool done = (depth == 1 && (ev == json::parse_event_t::object_end || ev == json::parse_event_t::array_end ||
                                      ev == json::parse_event_t::value));
    if (!done) return true;
    RowRef at{file, element++};
    at.element = true;
    if (parsed.is_object()) on_row(at, parsed);
    else on_bad(at, fmt::format("row is not a JSON object (found {})", parsed.type_name()));
    return false;  // the row is handed on; the array keeps nothing
  };
  json top;
  try {
    top = json::parse(in, cb);
  } catch (const json::exception& e) {
    fail("{}: not a valid JSON array of rows: {}", file, json_reason(e));
  }
  if (!top.is_array()) fail("{}: expected a JSON array of rows, found {}", file, top.type_name());
}

void read_text(const std::string& file, const RowSourceOptions& opt,
               const std::function<void(const RowRef&, const json&)>& on_row,
               const std::function<void(const RowRef&, const std::string&)>& on_bad) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail("{}: cannot be read", file);
  auto emit = [&](int64_t line, std::string text) {
    if (blank(text)) return;
    if (const size_t b = bad_utf8(text); b != std::string::npos) {
      on_bad({file, line}, fmt::format("invalid UTF-8 at byte {}", b + 1));
      return;
    }
    on_row({file, line}, json{{opt.text_field, std::move(text)}});
  };
  if (opt.text_sample_by == "document") {
    std::stringstream ss;
    ss << in.rdbuf();
    emit(1, ss.str());
    return;
  }
  std::string line, para;
  int64_t para_start = 1, lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (opt.text_sample_by == "line") {
      emit(lineno, line);
      continue;
    }
    if (blank(line)) {
      emit(para_start, para);
      para.clear();
      para_start = lineno + 1;
    } else {
      para += para.empty() ? line : "\n" + line;
    }
  }
  if (opt.text_sample_by == "paragraph") emit(para_start, para);
}

}  // namespace

std::vector<std::string> dataset_files(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) fail("{}: not found", path);
  if (!fs::is_directory(path, ec)) {
    // A FIFO, socket or device would block or never end; only regular files are datasets.
    if (!fs::is_regular_file(path, ec)) fail("{}: not a regular file or directory", path);
    return {path};
  }
  std::vector<std::string> files;
  for (auto it = fs::recursive_directory_iterator(path, ec); it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) fail("{}: cannot list: {}", path, ec.message());
    const auto name = it->path().filename().string();
    if (name.starts_with(".")) {  // hidden files and caches (.cache, .git)
      if (it->is_directory()) it.disable_recursion_pending();
      continue;
    }
    if (it->is_regular_file() && kind_of(it->path()) != Kind::Other) files.push_back(it->path().string());
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) fail("{}: no .jsonl, .parquet or .txt files in this directory", path);
  return files;
}

int64_t read_rows(const std::string& path, const RowSourceOptions& opt,
                  const std::function<void(const RowRef&, const json&)>& on_row,
                  const std::function<void(const RowRef&, const std::string&)>& on_bad) {
  const auto files = dataset_files(path);
  for (const auto& f : files) {
    switch (kind_of(f)) {
      case Kind::Jsonl:
        if (fs::path(f).extension() == ".json" && is_json_array(f)) read_json_array(f, on_row, on_bad);
        else read_jsonl(f, on_row, on_bad);
        break;
      case Kind::Text: read_text(f, opt, on_row, on_bad); break;
      case Kind::Parquet: {
        const auto reader = parquet::ParquetReader::open(f);
        // Only the wanted columns that this file has are decoded; the others are never read.
        std::vector<std::string> cols;
        if (!opt.columns.empty()) {
          const auto have = reader.columns();
          for (const auto& c : opt.columns)
            if (std::find(have.begin(), have.end(), c) != have.end()) cols.push_back(c);
          if (cols.empty()) cols.push_back(have.empty() ? std::string() : have.front());  // rows still count
        }
        reader.for_each_row(cols, [&](int64_t row, const json& obj) {
          RowRef at{f, row};
          at.parquet = true;
          on_row(at, obj);
        });
        break;
      }
      case Kind::Other:
        fail("{}: not a dataset file (expected .jsonl, .json, .parquet or .txt)", f);
    }
  }
  return static_cast<int64_t>(files.size());
}

}  // namespace ftune
