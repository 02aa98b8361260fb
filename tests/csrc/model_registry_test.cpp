// csrc/torchspark/models/model_registry.h: the registered formats, and
// detect_format on files no backend knows: each error names the file, what
// each format expects and what the file is.
#include "torchspark/models/model_registry.h"

#include <caffe2/serialize/inline_container.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "arrow_builders.h"

namespace torchspark {
namespace {

namespace fs = std::filesystem;

// A directory of its own per test, removed at the end.
class ModelRegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("torchspark_" + std::string(info->name()) + "_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& bytes) const {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }

  fs::path dir_;
};

uint32_t crc32(const std::string& data) {
  uint32_t crc = 0xFFFFFFFFu;
  for (const unsigned char c : data) {
    crc ^= c;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

void put16(std::string& out, uint32_t v) {
  out.push_back(static_cast<char>(v & 0xFF));
  out.push_back(static_cast<char>((v >> 8) & 0xFF));
}
void put32(std::string& out, uint32_t v) {
  put16(out, v & 0xFFFF);
  put16(out, v >> 16);
}

// A zip archive (stored, no compression) of one file `name` at its root: what
// `zip` makes of a plain file, and not PyTorch's container (whose records all
// sit under one top-level directory).
std::string plain_zip(const std::string& name, const std::string& data) {
  const uint32_t crc = crc32(data);
  const auto size = static_cast<uint32_t>(data.size());
  std::string zip;
  put32(zip, 0x04034b50);  // local file header
  put16(zip, 20);          // version needed
  put16(zip, 0);           // flags
  put16(zip, 0);           // stored
  put32(zip, 0);           // time, date
  put32(zip, crc);
  put32(zip, size);
  put32(zip, size);
  put16(zip, static_cast<uint32_t>(name.size()));
  put16(zip, 0);
  zip += name + data;
  const auto central = static_cast<uint32_t>(zip.size());
  put32(zip, 0x02014b50);  // central directory header
  put16(zip, 20);          // version made by
  put16(zip, 20);
  put16(zip, 0);
  put16(zip, 0);
  put32(zip, 0);
  put32(zip, crc);
  put32(zip, size);
  put32(zip, size);
  put16(zip, static_cast<uint32_t>(name.size()));
  put16(zip, 0);  // extra
  put16(zip, 0);  // comment
  put16(zip, 0);  // disk
  put16(zip, 0);  // internal attributes
  put32(zip, 0);  // external attributes
  put32(zip, 0);  // local header offset
  zip += name;
  const auto central_size = static_cast<uint32_t>(zip.size()) - central;
  put32(zip, 0x06054b50);  // end of central directory
  put16(zip, 0);
  put16(zip, 0);
  put16(zip, 1);
  put16(zip, 1);
  put32(zip, central_size);
  put32(zip, central);
  put16(zip, 0);
  return zip;
}

const char* const kExpected[] = {"a TorchScript archive (torch.jit.save)",
                                 "an AOTInductor package (.pt2)",
                                 "an ONNX model (torch.onnx.export)"};

TEST(ModelFormats, AreTorchScriptAOTInductorAndONNX) {
  EXPECT_EQ(model_formats(), (std::vector<std::string>{"TorchScript", "AOTInductor", "ONNX"}));
}

// The first bytes of an ONNX ModelProto: ir_version 8, then producer_name.
const std::string kOnnxHead = std::string(
    "\x08\x08\x12\x07pytorch\x1a\x05"
    "2.13",
    16);

TEST_F(ModelRegistryTest, OnnxIsRecognisedByContentNotByName) {
  EXPECT_EQ(detect_format(write("model.bin", kOnnxHead + "rest of the graph")), "ONNX");
  // ir_version then a field no ModelProto starts its second field with.
  EXPECT_THROW_WITH(detect_format(write("other.onnx", std::string("\x08\x08\xff\x01", 4))),
                    c10::ValueError, kExpected[2], "a file that is not a zip archive");
  // A varint ir_version of more than one byte is not an ONNX writer's.
  EXPECT_THROW(detect_format(write("long.onnx", std::string("\x08\x88\x01\x12", 4))),
               c10::ValueError);
}

TEST_F(ModelRegistryTest, OnnxWithoutTheRuntimeSaysHowToInstallIt) {
  // No ONNX Runtime is loaded in this process yet, and a failed load is
  // retried on the next: this path cannot be loaded.
  const std::string missing = (dir_ / "libonnxruntime.so.1").string();
  ASSERT_EQ(::setenv("TORCHSPARK_ONNXRUNTIME_LIBRARY", missing.c_str(), 1), 0);
  const std::string path = write("model.onnx", kOnnxHead + "rest of the graph");
  EXPECT_THROW_WITH(
      load_model(path, ModelOptions{}), c10::ValueError, "model '" + path + "'",
      "(ONNX): failed to load: ONNX Runtime is not available: cannot load '" + missing + "'",
      "pip install 'torchspark[onnx]'");
  ::unsetenv("TORCHSPARK_ONNXRUNTIME_LIBRARY");
}

TEST_F(ModelRegistryTest, AFileThatIsNotAZipNamesTheFileAndTheFormats) {
  const std::string path = write("weights.bin", "not a model, just some bytes");
  EXPECT_THROW_WITH(detect_format(path), c10::ValueError, "model '" + path + "'", kExpected[0],
                    kExpected[1], kExpected[2], "a file that is not a zip archive");
}

TEST_F(ModelRegistryTest, AnEmptyFileIsNotAZip) {
  const std::string path = write("empty.pt", "");
  EXPECT_THROW_WITH(detect_format(path), c10::ValueError, path, "a file that is not a zip archive");
}

TEST_F(ModelRegistryTest, AZipThatIsNotAPyTorchArchive) {
  const std::string path = write("model.zip", plain_zip("readme.txt", "hello"));
  EXPECT_THROW_WITH(detect_format(path), c10::ValueError, "model '" + path + "'", kExpected[0],
                    kExpected[1], "a zip archive that is not a PyTorch archive");
}

TEST_F(ModelRegistryTest, APyTorchArchiveOfEagerWeightsPointsAtExport) {
  const std::string path = (dir_ / "weights.pt").string();
  {
    caffe2::serialize::PyTorchStreamWriter writer(path);
    const std::string pickle = "not really a pickle";
    writer.writeRecord("data.pkl", pickle.data(), pickle.size());
    writer.writeEndOfFile();
  }
  EXPECT_THROW_WITH(detect_format(path), c10::ValueError, "model '" + path + "'", kExpected[0],
                    "a zip archive with records [", "data.pkl", "torch.save", "torchspark.export");
}

TEST_F(ModelRegistryTest, ADirectoryIsNotAModelFile) {
  const std::string path = (dir_ / "unpacked.pt2").string();
  fs::create_directory(path);
  EXPECT_THROW_WITH(detect_format(path), c10::ValueError, "model '" + path + "'",
                    "expected a model file, got a directory");
  EXPECT_THROW_WITH(load_model(path, ModelOptions{}), c10::ValueError, "got a directory");
}

TEST_F(ModelRegistryTest, AMissingFileCannotBeOpened) {
  const std::string path = (dir_ / "missing.pt").string();
  EXPECT_THROW_WITH(detect_format(path), c10::ValueError, path, "cannot open");
}

}  // namespace
}  // namespace torchspark
