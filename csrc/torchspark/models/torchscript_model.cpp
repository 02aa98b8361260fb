// TorchScript archives (torch.jit.save): loaded by LibTorch without a
// compiler; run concurrently from every worker thread (inference only, no
// state mutation); reduced precision through autocast.
#include <ATen/autocast_mode.h>
#include <torch/script.h>

#include <algorithm>

#include "torchspark/models/model_registry.h"

namespace torchspark {
namespace {

// Autocast for one call on this thread (the state is thread-local); restores
// what was set before.
class AutocastScope {
 public:
  AutocastScope(c10::DeviceType device, Precision precision)
      : device_(device), enabled_(precision != Precision::kFloat32) {
    if (!enabled_) return;
    was_enabled_ = at::autocast::is_autocast_enabled(device_);
    was_dtype_ = at::autocast::get_autocast_dtype(device_);
    at::autocast::set_autocast_enabled(device_, true);
    at::autocast::set_autocast_dtype(device_,
                                     precision == Precision::kBFloat16 ? at::kBFloat16 : at::kHalf);
  }
  ~AutocastScope() {
    if (!enabled_) return;
    at::autocast::set_autocast_enabled(device_, was_enabled_);
    at::autocast::set_autocast_dtype(device_, was_dtype_);
    at::autocast::clear_cache();
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  c10::DeviceType device_;
  bool enabled_;
  bool was_enabled_ = false;
  c10::ScalarType was_dtype_ = at::kFloat;
};

class TorchScriptModel final : public Model {
 public:
  TorchScriptModel(const std::string& path, const ModelOptions& options)
      : Model("TorchScript", path),
        // Without the debug records (debug_pkl: source ranges of the original
        // Python, read only to format a TorchScript error): LibTorch's
        // unpickler trusts their declared lengths, and one corrupt record made
        // formatting a parse error allocate 2.1 GB from a 2 KB file
        // (model_load_fuzzer, RELIABILITY.md). Errors still quote the
        // archive's own code.
        module_(torch::jit::load(path, options.device, /*load_debug_files=*/false)),
        forward_(module_.get_method("forward")),
        runners_(options.num_runners) {
    module_.eval();
    const auto& schema = forward_.function().getSchema();
    for (size_t i = 1; i < schema.arguments().size(); ++i) {  // 0 is self
      input_names_.push_back(schema.arguments()[i].name());
    }
  }

  ModelOutputs forward(const std::vector<at::Tensor>& inputs,
                       const RunContext& context) const override {
    AutocastScope autocast(context.device.type(), context.precision);
    std::vector<c10::IValue> args(inputs.begin(), inputs.end());
    c10::IValue result = forward_(std::move(args));
    ModelOutputs out;
    flatten_outputs(result, out, label());
    return out;
  }

  ModelCapabilities capabilities() const override { return {/*autocast=*/true, runners_}; }

 private:
  torch::jit::Module module_;
  torch::jit::Method forward_;  // looked up once, not by name on every call
  int64_t runners_;             // any number of threads may call forward_
};

bool is_torchscript(const ModelFile& file) {
  // An AOTInductor package may hold TorchScript-like records too: it is not one.
  const auto& r = file.records;
  const bool aoti = std::any_of(r.begin(), r.end(), [](const std::string& s) {
    return s.rfind("data/aotinductor/", 0) == 0;
  });
  return !aoti && std::find(r.begin(), r.end(), "constants.pkl") != r.end() &&
         std::any_of(r.begin(), r.end(),
                     [](const std::string& s) { return s.rfind("code/", 0) == 0; });
}

const bool registered =
    (register_model_backend({"TorchScript", "a TorchScript archive (torch.jit.save)",
                             is_torchscript,
                             [](const ModelFile& file, const ModelOptions& options) {
                               return std::make_shared<TorchScriptModel>(file.path, options);
                             }}),
     true);

}  // namespace
}  // namespace torchspark
