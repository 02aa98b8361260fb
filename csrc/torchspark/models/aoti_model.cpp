// AOTInductor packages (.pt2 from torch._inductor.aoti_compile_and_package):
// compiled ahead of time, loaded with one runner slot per engine worker so
// concurrent calls do not queue. The dtypes are compiled in (no autocast):
// reduced precision is chosen at export.
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <algorithm>
#include <unordered_map>

#include "torchspark/models/model_registry.h"

namespace torchspark {
namespace {

// Newline-separated names under `key`; empty when absent.
std::vector<std::string> names_from(const std::unordered_map<std::string, std::string>& metadata,
                                    const std::string& key) {
  std::vector<std::string> names;
  auto it = metadata.find(key);
  if (it == metadata.end() || it->second.empty()) return names;
  size_t begin = 0;
  for (;;) {
    const size_t end = it->second.find('\n', begin);
    names.push_back(it->second.substr(begin, end - begin));
    if (end == std::string::npos) break;
    begin = end + 1;
  }
  return names;
}

class AOTIModel final : public Model {
 public:
  AOTIModel(const std::string& path, const ModelOptions& options)
      : Model("AOTInductor", path),
        runners_(std::max<int64_t>(1, options.num_runners)),
        loader_(path, "model", /*run_single_threaded=*/false, static_cast<size_t>(runners_),
                options.device.has_index() ? options.device.index() : -1) {
    // torchspark.export records the argument and dict-output names (a package
    // compiled elsewhere has neither: its inputs and outputs are positional).
    const auto metadata = loader_.get_metadata();
    input_names_ = names_from(metadata, "torchspark.input_names");
    output_names_ = names_from(metadata, "torchspark.output_names");
  }

  ModelOutputs forward(const std::vector<at::Tensor>& inputs,
                       const RunContext& context) const override {
    ModelOutputs out;
    out.tensors = loader_.run(inputs);
    if (!output_names_.empty()) {
      TORCH_CHECK(out.tensors.size() == output_names_.size(), label(), ": returned ",
                  out.tensors.size(), " outputs but the package names ", output_names_.size());
      out.names = output_names_;
    } else {
      out.names.assign(out.tensors.size(), std::string());
    }
    return out;
  }

  ModelCapabilities capabilities() const override { return {/*autocast=*/false, runners_}; }

 private:
  int64_t runners_;
  mutable torch::inductor::AOTIModelPackageLoader loader_;
  std::vector<std::string> output_names_;
};

bool is_aoti(const ModelFile& file) {
  return std::any_of(file.records.begin(), file.records.end(),
                     [](const std::string& r) { return r.rfind("data/aotinductor/", 0) == 0; });
}

const bool registered =
    (register_model_backend({"AOTInductor", "an AOTInductor package (.pt2)", is_aoti,
                             [](const ModelFile& file, const ModelOptions& options) {
                               return std::make_shared<AOTIModel>(file.path, options);
                             }}),
     true);

}  // namespace
}  // namespace torchspark
