// A Hugging Face model directory's weights: model.safetensors, or shards listed by
// model.safetensors.index.json. Looks tensors up by name across shards.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace ftune {

class CheckpointReader {
 public:
  // Opens every shard of the directory `dir` (validating each). Errors name the file: no
  // weights file, an index whose weight_map names a missing shard, or a tensor the index
  // places in a shard that does not hold it.
  explicit CheckpointReader(const std::string& dir);

  bool has(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // throws naming dir and tensor
  // fp32 copy of a tensor; throws "<dir>: tensor 'X' is missing" when absent.
  Tensor read_f32(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  const std::vector<std::string>& shard_files() const { return shard_files_; }
  const std::string& dir() const { return dir_; }
  // File that holds `name`, and its open reader.
  const std::string& file_of(const std::string& name) const;
  const SafetensorsFile& shard_of(const std::string& name) const;

 private:
  std::string dir_;
  std::vector<std::string> shard_files_;
  std::vector<SafetensorsFile> shards_;
  std::map<std::string, size_t> where_;  // tensor name -> shard index
};

}  // namespace ftune
