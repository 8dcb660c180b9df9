// Codec glue over libsnappy, zlib and libzstd. Each codec's own size declaration is compared with
// the page header before the output buffer is allocated, so a lying header cannot force a huge one.
#include "data/parquet/compression.h"

#include <snappy-c.h>
#include <zlib.h>
#include <zstd.h>

#include <memory>

#include "core/error.h"

namespace ftune::parquet {

namespace {

void size_mismatch(const std::string& where, size_t got, size_t expected) {
  fail("{}: page decompresses to {} bytes, its header says {}", where, got, expected);
}

std::vector<uint8_t> gunzip(const uint8_t* src, size_t n, size_t expected, const std::string& where) {
  std::vector<uint8_t> out(expected);
  z_stream zs{};
  if (inflateInit2(&zs, 15 + 32) != Z_OK) fail("{}: zlib init failed", where);
  const std::unique_ptr<z_stream, int (*)(z_stream*)> guard(&zs, inflateEnd);
  zs.next_in = const_cast<Bytef*>(src);
  zs.avail_in = static_cast<uInt>(n);
  zs.next_out = out.data();
  zs.avail_out = static_cast<uInt>(expected);
  for (;;) {
    const int rc = inflate(&zs, Z_FINISH);
    if (rc == Z_STREAM_END) {
      if (zs.avail_in == 0) break;
      // Another gzip member follows (some writers concatenate them).
      if (inflateReset(&zs) != Z_OK) fail("{}: corrupt GZIP data", where);
      continue;
    }
    if (rc == Z_BUF_ERROR && zs.avail_out == 0) size_mismatch(where, expected + 1, expected);
    fail("{}: corrupt GZIP data ({})", where, zs.msg ? zs.msg : "inflate failed");
  }
  if (zs.avail_out != 0) size_mismatch(where, expected - zs.avail_out, expected);
  return out;
}

}  // namespace

std::vector<uint8_t> decompress(Codec codec, const uint8_t* src, size_t n, size_t expected, const std::string& where) {
  switch (codec) {
    case Codec::kUncompressed: {
      if (n != expected) size_mismatch(where, n, expected);
      return std::vector<uint8_t>(src, src + n);
    }
    case Codec::kSnappy: {
      size_t len = 0;
      if (snappy_uncompressed_length(reinterpret_cast<const char*>(src), n, &len) != SNAPPY_OK)
        fail("{}: corrupt SNAPPY data", where);
      if (len != expected) size_mismatch(where, len, expected);
      std::vector<uint8_t> out(expected);
      size_t got = expected;
      if (snappy_uncompress(reinterpret_cast<const char*>(src), n, reinterpret_cast<char*>(out.data()), &got) != SNAPPY_OK)
        fail("{}: corrupt SNAPPY data", where);
      if (got != expected) size_mismatch(where, got, expected);
      return out;
    }
    case Codec::kGzip:
      if (expected > UINT32_MAX || n > UINT32_MAX) fail("{}: GZIP page too large", where);
      // Deflate cannot expand more than 1032:1, which bounds the buffer a lying header could ask for.
      if (expected > n * 1032 + 64) size_mismatch(where, n * 1032, expected);
      return gunzip(src, n, expected, where);
    case Codec::kZstd: {
      const unsigned long long declared = ZSTD_getFrameContentSize(src, n);
      if (declared == ZSTD_CONTENTSIZE_ERROR) fail("{}: corrupt ZSTD data", where);
      if (declared != ZSTD_CONTENTSIZE_UNKNOWN && declared != expected) size_mismatch(where, declared, expected);
      // Without a declared size, the densest block (a 4-byte RLE block of 128 KiB) bounds the output.
      if (declared == ZSTD_CONTENTSIZE_UNKNOWN && expected > (n + 1) * 32768) size_mismatch(where, (n + 1) * 32768, expected);
      std::vector<uint8_t> out(expected);
      const size_t got = ZSTD_decompress(out.data(), expected, src, n);
      if (ZSTD_isError(got)) fail("{}: corrupt ZSTD data ({})", where, ZSTD_getErrorName(got));
      if (got != expected) size_mismatch(where, got, expected);
      return out;
    }
    default:
      fail("{}: unsupported compression codec {} ({})", where, codec_name(codec), static_cast<int>(codec));
  }
}

std::vector<uint8_t> compress(Codec codec, const uint8_t* src, size_t n) {
  switch (codec) {
    case Codec::kUncompressed:
      return std::vector<uint8_t>(src, src + n);
    case Codec::kSnappy: {
      size_t len = snappy_max_compressed_length(n);
      std::vector<uint8_t> out(len);
      if (snappy_compress(reinterpret_cast<const char*>(src), n, reinterpret_cast<char*>(out.data()), &len) != SNAPPY_OK)
        fail("snappy compression failed");
      out.resize(len);
      return out;
    }
    case Codec::kGzip: {
      z_stream zs{};
      if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        fail("zlib init failed");
      const std::unique_ptr<z_stream, int (*)(z_stream*)> guard(&zs, deflateEnd);
      std::vector<uint8_t> out(deflateBound(&zs, static_cast<uLong>(n)) + 32);
      zs.next_in = const_cast<Bytef*>(src);
      zs.avail_in = static_cast<uInt>(n);
      zs.next_out = out.data();
      zs.avail_out = static_cast<uInt>(out.size());
      if (deflate(&zs, Z_FINISH) != Z_STREAM_END) fail("gzip compression failed");
      out.resize(zs.total_out);
      return out;
    }
    case Codec::kZstd: {
      std::vector<uint8_t> out(ZSTD_compressBound(n));
      const size_t got = ZSTD_compress(out.data(), out.size(), src, n, 3);
      if (ZSTD_isError(got)) fail("zstd compression failed: {}", ZSTD_getErrorName(got));
      out.resize(got);
      return out;
    }
    default:
      fail("unsupported compression codec {}", codec_name(codec));
  }
}

}  // namespace ftune::parquet
