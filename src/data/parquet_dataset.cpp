// Directory walking over Parquet shards; each file is streamed row group by row group.
#include "data/parquet_dataset.h"

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "data/parquet/reader.h"

namespace ftune {

namespace fs = std::filesystem;

std::vector<std::string> list_parquet_files(const std::string& path_or_dir) {
  std::error_code ec;
  const fs::file_status st = fs::status(path_or_dir, ec);
  if (ec || !fs::exists(st)) fail("{}: no such file or directory", path_or_dir);
  if (!fs::is_directory(st)) return {path_or_dir};
  std::vector<std::string> out;
  for (auto it = fs::recursive_directory_iterator(path_or_dir, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file(ec) && it->path().extension() == ".parquet") out.push_back(it->path().string());
  }
  if (ec) fail("{}: cannot list directory: {}", path_or_dir, ec.message());
  if (out.empty()) fail("{}: no *.parquet files in this directory", path_or_dir);
  std::sort(out.begin(), out.end());
  return out;
}

void for_each_parquet_row(const std::string& path_or_dir, const std::vector<std::string>& columns,
                          const std::function<void(int64_t row, const nlohmann::json& obj)>& f) {
  int64_t base = 0;
  for (const std::string& file : list_parquet_files(path_or_dir)) {
    const parquet::ParquetReader r = parquet::ParquetReader::open(file);
    r.for_each_row(columns, [&](int64_t row, const nlohmann::json& obj) { f(base + row, obj); });
    base += r.num_rows();
  }
}

}  // namespace ftune
