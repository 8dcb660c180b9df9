// Page (de)compression for the codecs pyarrow writes: SNAPPY (raw block format), GZIP, ZSTD.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "data/parquet/metadata.h"

namespace ftune::parquet {

// Decompresses exactly `expected` bytes; fails (naming `where`) if the stream is corrupt, yields
// another size, or declares another size up front (checked before allocating).
std::vector<uint8_t> decompress(Codec codec, const uint8_t* src, size_t n, size_t expected, const std::string& where);

// Compresses with the codec's library defaults (used to build test images).
std::vector<uint8_t> compress(Codec codec, const uint8_t* src, size_t n);

}  // namespace ftune::parquet
