// libFuzzer target: model-file loading (models/): load_model on arbitrary
// bytes, which reads the head, refuses decompression bombs from the zip
// central directory (archive_limits), lists the records, picks the backend
// and loads: TorchScript archives through torch::jit::load (zip, pickle, the
// TorchScript compiler), ONNX files through ONNX Runtime when its library is
// found ($TORCHSPARK_ONNXRUNTIME_LIBRARY; .ci/fuzz sets it from the
// onnxruntime package when one is installed). A model that loads is called
// once on a float [2, 3] tensor.
//
// AOTInductor packages are sniffed and size-checked but not loaded: their
// loader extracts the package's shared object and dlopens it (compiling the
// package's C++ first when it holds no .so), so a package is machine code by
// design, and loading a mutated one would run mutated code (model files are
// trusted code: README, Security). Their checks stop before that.
//
// Checked beyond "no sanitizer report": load_model fails only with a
// ValueError (c10::ValueError, naming the file); anything else escapes and is
// a crash. No allocation over the -malloc_limit_mb that .ci/fuzz sets (a
// decompression bomb must be refused before it inflates).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "fuzz_checks.h"
#include "scratch_file.h"
#include "torchspark/models/model_registry.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = torchspark_fuzz::write_scratch_file("model-load", data, size);
  std::shared_ptr<const torchspark::Model> model;
  try {
    if (torchspark::detect_format(path) != "AOTInductor") {
      model = torchspark::load_model(path, torchspark::ModelOptions{});
      if (model == nullptr) torchspark_fuzz::fail("load_model returned no model");
    }
  } catch (const c10::ValueError&) {
    // Not a model file a backend loads: the intended outcome.
  }
  if (model) {
    try {
      const torchspark::ModelOutputs out = model->forward({at::ones({2, 3})}, {});
      for (const at::Tensor& t : out.tensors) torchspark_fuzz::touch(t);
    } catch (const std::exception&) {
      // The model's own error on this input (the engine reports it as the batch's).
    }
  }
  std::remove(path.c_str());
  return 0;
}
