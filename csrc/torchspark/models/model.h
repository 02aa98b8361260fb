// The model-backend interface: what the engine calls, whatever the file format.
//
// A backend (one file in models/, registered in model_registry.h) loads one
// format: TorchScript archives, AOTInductor packages, and next ONNX. Nothing
// outside models/ switches on a format: the engine asks a Model for its
// capabilities and calls forward().
//
// Contract: forward() is thread-safe (the engine calls it from every worker
// thread at once). The caller owns the thread's state that is not the
// model's: grad mode and the current stream (set before the call); forward()
// applies the context's precision itself where the backend can (autocast),
// and restores what it changed. Nothing here touches Python.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <exception>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace torchspark {

// The float precision a model call computes in.
enum class Precision { kFloat32, kBFloat16, kFloat16 };
// "fp32" | "bf16" | "fp16"; anything else raises ValueError listing those.
Precision parse_precision(std::string_view name);
const char* precision_name(Precision precision);

// What one forward() call runs under.
struct RunContext {
  // The device the inputs are on and the model runs on.
  c10::Device device = c10::Device(c10::kCPU);
  // Reduced precision, for backends that support it (capabilities().autocast).
  Precision precision = Precision::kFloat32;
};

// What a loaded model can do, for the engine's choices.
struct ModelCapabilities {
  // forward() honours RunContext::precision through autocast. A backend that
  // cannot (AOTInductor compiles its dtypes in) asks for the precision at export.
  bool autocast = false;
  // Concurrent forward() calls that run without queueing on each other.
  int64_t runners = 1;
};

struct ModelOptions {
  // Where parameters live and inputs must be (CPU, or an accelerator device).
  c10::Device device = c10::Device(c10::kCPU);
  // Concurrent callers to prepare for (the engine's worker threads).
  int64_t num_runners = 1;
};

// What a model returns, flattened: one tensor, a tuple/list of tensors, or a
// dict of named tensors (names empty for positional outputs).
struct ModelOutputs {
  std::vector<std::string> names;
  std::vector<at::Tensor> tensors;
};

class Model {
 public:
  virtual ~Model() = default;
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // Runs the model on positional inputs. Thread-safe.
  virtual ModelOutputs forward(const std::vector<at::Tensor>& inputs,
                               const RunContext& context) const = 0;
  virtual ModelCapabilities capabilities() const = 0;
  // Whether `error` (thrown by forward) means the device ran out of memory,
  // so that a smaller batch may succeed. The default recognises
  // c10::OutOfMemoryError, std::bad_alloc, and an error whose message reads
  // like an allocator's failure (how one reads once an interpreter has
  // rethrown it under another type).
  virtual bool is_out_of_memory(const std::exception_ptr& error) const;

  // The backend's name: "TorchScript", "AOTInductor".
  const std::string& format() const { return format_; }
  const std::string& path() const { return path_; }
  // The forward() argument names, when the format records them.
  const std::vector<std::string>& input_names() const { return input_names_; }
  // "model '<path>' (TorchScript)": for messages.
  const std::string& label() const { return label_; }

 protected:
  Model(std::string format, std::string path);
  std::vector<std::string> input_names_;

 private:
  std::string format_;
  std::string path_;
  std::string label_;  // made once: forward() passes it along for its messages
};

// Flattens a forward() result (a tensor, a tuple/list of tensors, a dict of
// str -> tensor) into `out`; UnsupportedTypeError naming `label` otherwise.
void flatten_outputs(const c10::IValue& value, ModelOutputs& out, const std::string& label);

}  // namespace torchspark
