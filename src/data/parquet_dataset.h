// Rows of a Parquet data set (one file, or a directory tree of *.parquet shards as the Hugging Face
// Hub lays them out) as JSON objects holding the requested top-level columns.
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace ftune {

// The *.parquet files under `path_or_dir` (recursively, sorted by path), or the file itself.
std::vector<std::string> list_parquet_files(const std::string& path_or_dir);

// Calls f for every row, in file order then row order; `row` counts from 0 across all files.
// `columns` empty means every top-level column. Fails (ftune::Error) on a missing column, an
// unreadable or corrupt file, or a directory without *.parquet files.
void for_each_parquet_row(const std::string& path_or_dir, const std::vector<std::string>& columns,
                          const std::function<void(int64_t row, const nlohmann::json& obj)>& f);

}  // namespace ftune
