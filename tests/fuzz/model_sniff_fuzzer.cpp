// libFuzzer target: model-file format detection (models/model_registry):
// reading a file's head, recognising a zip archive and listing its records
// (caffe2's PyTorchStreamReader over miniz), and every registered backend's
// sniff (TorchScript, AOTInductor, ONNX) deciding from the head and the
// records. Only detection: loading a model runs LibTorch's or ONNX Runtime's
// own parsers, and a crash inside those is theirs, not ours (RELIABILITY.md).
//
// detect_format takes a path, as the product does: each input is written to
// one file per process (under $TMPDIR) and detected from there.
#include <c10/util/Exception.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "torchspark/models/model_registry.h"

namespace {

std::string& scratch_path() {
  static std::string path = [] {
    const char* dir = std::getenv("TMPDIR");
    return std::string(dir && *dir ? dir : "/tmp") + "/torchspark-model-sniff-" +
           std::to_string(getpid()) + ".bin";
  }();
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = scratch_path();
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) std::abort();
  if (size > 0 && std::fwrite(data, 1, size, file) != size) std::abort();
  std::fclose(file);
  try {
    const std::string format = torchspark::detect_format(path);
    if (format.empty()) __builtin_trap();
  } catch (const c10::Error&) {
    // Not a model file any backend recognises: the intended outcome.
  }
  std::remove(path.c_str());
  return 0;
}
