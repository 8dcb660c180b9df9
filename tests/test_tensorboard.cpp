// TensorBoard's framing: CRC-32C against its published check value, the mask, and one record
// laid out as TFRecord defines it.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "test_util.h"
#include "train/tensorboard.h"

namespace ftune {
namespace {

TEST(TensorBoard, Crc32cCheckValues) {
  EXPECT_EQ(crc32c("123456789"), 0xE3069283u);  // the CRC-32C check value (RFC 3720, B.4)
  EXPECT_EQ(crc32c(std::string(32, '\0')), 0x8A9136AAu);  // RFC 3720 B.4: 32 bytes of zeros
  EXPECT_EQ(crc32c(std::string(32, '\xff')), 0x62A8AB43u);  // ... and of ones
  const uint32_t c = crc32c("abc");
  EXPECT_EQ(masked_crc32c("abc"), ((c >> 15) | (c << 17)) + 0xA282EAD8u);
}

TEST(TensorBoard, RecordsAreFramedAndChecksummed) {
  const testing::TempDir dir("tb");
  std::string path;
  {
    EventWriter w(dir.str());
    w.scalar("train/loss", 7, 2.5);
    path = w.path();
  }
  EXPECT_NE(std::filesystem::path(path).filename().string().find("events.out.tfevents."), std::string::npos);
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  const std::string b = ss.str();
  size_t at = 0;
  int records = 0;
  while (at < b.size()) {
    ASSERT_LE(at + 12, b.size());
    uint64_t len;
    uint32_t crc_len, crc_data;
    std::memcpy(&len, b.data() + at, 8);
    std::memcpy(&crc_len, b.data() + at + 8, 4);
    EXPECT_EQ(crc_len, masked_crc32c(b.substr(at, 8)));
    ASSERT_LE(at + 12 + len + 4, b.size());
    const std::string data = b.substr(at + 12, len);
    std::memcpy(&crc_data, b.data() + at + 12 + len, 4);
    EXPECT_EQ(crc_data, masked_crc32c(data));
    if (records == 0) EXPECT_NE(data.find("brain.Event:2"), std::string::npos);
    if (records == 1) {
      EXPECT_NE(data.find("train/loss"), std::string::npos);
      const float v = 2.5f;
      EXPECT_NE(data.find(std::string("\x15", 1) + std::string(reinterpret_cast<const char*>(&v), 4)), std::string::npos);
      EXPECT_NE(data.find(std::string("\x10\x07", 2)), std::string::npos);  // step = 7
    }
    at += 12 + len + 4;
    ++records;
  }
  EXPECT_EQ(records, 2);
}

}  // namespace
}  // namespace ftune
