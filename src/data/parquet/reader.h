// ParquetReader: validates a Parquet file's framing and footer, then streams rows of the chosen
// top-level columns one row group at a time, assembled from repetition/definition levels into JSON.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/parquet/metadata.h"

namespace ftune::parquet {

class MappedFile;

class ParquetReader {
 public:
  // Maps the file read-only; the OS pages in only the column chunks that are read.
  static ParquetReader open(const std::string& path);
  // Reads from caller-owned memory that must outlive the reader; `label` names it in errors.
  static ParquetReader from_bytes(const uint8_t* data, size_t size, std::string label);

  ParquetReader(ParquetReader&&) noexcept;
  ParquetReader& operator=(ParquetReader&&) noexcept;
  ~ParquetReader();

  const FileMetaData& metadata() const { return meta_; }
  const Schema& schema() const { return schema_; }
  int64_t num_rows() const { return meta_.num_rows; }
  size_t num_row_groups() const { return meta_.row_groups.size(); }
  // Names of the top-level columns, in file order.
  std::vector<std::string> columns() const;

  using RowFn = std::function<void(int64_t row, const nlohmann::json& obj)>;
  // Calls f for every row of row group `g` with an object holding the `columns` (all when empty);
  // `first_row` numbers the group's first row.
  void read_row_group(size_t g, const std::vector<std::string>& columns, int64_t first_row, const RowFn& f) const;
  // Every row of the file, row group by row group.
  void for_each_row(const std::vector<std::string>& columns, const RowFn& f) const;

 private:
  ParquetReader() = default;
  void init();
  std::vector<int> select(const std::vector<std::string>& columns) const;

  std::unique_ptr<MappedFile> map_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  size_t footer_start_ = 0;  // column chunks must end before the footer
  std::string label_;
  FileMetaData meta_;
  Schema schema_;
};

}  // namespace ftune::parquet
