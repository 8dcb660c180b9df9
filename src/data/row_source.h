// Rows of a dataset as JSON objects, whatever the files are: JSONL, Parquet (one file, a
// directory, or a Hugging Face datasets layout of shards), or plain text.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ftune {

struct RowRef {
  std::string file;
  int64_t row = 0;  // 1-based line for JSONL and text, 0-based index for Parquet rows and JSON array elements
  std::string str() const;  // "file:row" (JSONL/text), "file row N" (Parquet) or "file[N]" (JSON array)
  bool parquet = false;
  bool element = false;  // an element of a .json file holding one array of rows
};

struct RowSourceOptions {
  std::vector<std::string> columns;  // Parquet: decode only those of these that a file has (empty = all)
  std::string text_sample_by = "document";  // plain text: "line", "paragraph" or "document"
  std::string text_field = "text";   // the field plain-text rows are put in
};

// A .json file is either JSON lines or one JSON array of row objects (as `load_dataset("json")`
// reads both). Calls on_row for each row, in file order (files of a directory sorted by path). A row that
// cannot be read as an object (invalid JSON, invalid UTF-8, not an object) goes to on_bad with a
// one-line reason. File-level problems (missing, unreadable, not a dataset file, truncated or
// corrupt Parquet) throw ftune::Error naming the file. Returns the number of files read.
int64_t read_rows(const std::string& path, const RowSourceOptions& opt,
                  const std::function<void(const RowRef&, const nlohmann::json&)>& on_row,
                  const std::function<void(const RowRef&, const std::string& reason)>& on_bad);

// The files `path` stands for: itself, or the dataset files under a directory, sorted.
std::vector<std::string> dataset_files(const std::string& path);

}  // namespace ftune
