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

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "scratch_file.h"
#include "torchspark/models/model_registry.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = torchspark_fuzz::write_scratch_file("model-sniff", data, size);
  try {
    const std::string format = torchspark::detect_format(path);
    if (format.empty()) __builtin_trap();
  } catch (const c10::Error&) {
    // Not a model file any backend recognises: the intended outcome.
  }
  std::remove(path.c_str());
  return 0;
}
