// Loaded models: TorchScript archives and AOTInductor packages, behind one
// interface the engine calls from its worker threads.
//
// Contract: `forward` is thread-safe. TorchScript modules are run concurrently
// from several threads (inference only, no state mutation); an AOTInductor
// package is loaded with `num_runners` runner slots, one per worker thread, so
// concurrent calls do not queue. `forward` does not set InferenceMode,
// autocast or streams: the caller (the engine) owns that per-thread state.
// Nothing here touches Python.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <memory>
#include <string>
#include <vector>

namespace torchspark {

enum class ModelFormat { kTorchScript, kAOTInductor };
const char* format_name(ModelFormat format);

struct ModelOptions {
  // Where parameters live and inputs must be (CPU, or an accelerator device).
  c10::Device device = c10::Device(c10::kCPU);
  // AOTInductor: concurrent runners (match the engine's worker threads).
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
  // Runs the model on positional inputs. Thread-safe.
  virtual ModelOutputs forward(const std::vector<at::Tensor>& inputs) const = 0;

  ModelFormat format() const { return format_; }
  const std::string& path() const { return path_; }
  // The forward() argument names, when the format records them (TorchScript).
  const std::vector<std::string>& input_names() const { return input_names_; }
  // "model '<path>' (TorchScript)": for messages.
  const std::string& label() const { return label_; }

 protected:
  Model(ModelFormat format, std::string path);
  ModelFormat format_;
  std::string path_;
  std::string label_;  // made once: every forward() passes it along for its messages
  std::vector<std::string> input_names_;
};

// Detects the format from the archive's records (both are zip archives).
// Throws ValueError naming the file and what it found for anything else.
ModelFormat detect_format(const std::string& path);

// Loads a TorchScript archive or an AOTInductor package (.pt2).
std::shared_ptr<const Model> load_model(const std::string& path, const ModelOptions& options);

}  // namespace torchspark
