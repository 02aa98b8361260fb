#include "torchspark/model.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/script.h>

#include <algorithm>
#include <fstream>
#include <mutex>
#include <unordered_map>

#include "torchspark/errors.h"

namespace torchspark {

const char* format_name(ModelFormat format) {
  return format == ModelFormat::kTorchScript ? "TorchScript" : "AOTInductor";
}

Model::Model(ModelFormat format, std::string path)
    : format_(format),
      path_(std::move(path)),
      label_(c10::str("model '", path_, "' (", format_name(format_), ")")) {}

namespace {

void flatten(const c10::IValue& value, ModelOutputs& out, const std::string& label) {
  if (value.isTensor()) {
    out.tensors.push_back(value.toTensor());
    out.names.emplace_back();
  } else if (value.isTuple() || value.isList()) {
    const auto elements =
        value.isTuple() ? value.toTupleRef().elements().vec() : value.toList().vec();
    for (const c10::IValue& element : elements) {
      TS_CHECK_SUPPORTED(element.isTensor(), label,
                         ": a tuple/list output must hold tensors, got an element of type ",
                         element.tagKind());
      out.tensors.push_back(element.toTensor());
      out.names.emplace_back();
    }
  } else if (value.isGenericDict()) {
    for (const auto& item : value.toGenericDict()) {
      TS_CHECK_SUPPORTED(item.key().isString() && item.value().isTensor(), label,
                         ": a dict output must map str to tensors, got ", item.key().tagKind(),
                         " -> ", item.value().tagKind());
      out.names.push_back(item.key().toStringRef());
      out.tensors.push_back(item.value().toTensor());
    }
  } else {
    TS_CHECK_SUPPORTED(false, label,
                       ": expected the model to return a tensor, a tuple/list of tensors or a "
                       "dict of tensors, got ",
                       value.tagKind());
  }
}

class TorchScriptModel final : public Model {
 public:
  TorchScriptModel(const std::string& path, const ModelOptions& options)
      : Model(ModelFormat::kTorchScript, path),
        module_(torch::jit::load(path, options.device)),
        forward_(module_.get_method("forward")) {
    module_.eval();
    const auto& schema = forward_.function().getSchema();
    for (size_t i = 1; i < schema.arguments().size(); ++i) {  // 0 is self
      input_names_.push_back(schema.arguments()[i].name());
    }
  }

  ModelOutputs forward(const std::vector<at::Tensor>& inputs) const override {
    std::vector<c10::IValue> args(inputs.begin(), inputs.end());
    c10::IValue result = forward_(std::move(args));
    ModelOutputs out;
    flatten(result, out, label());
    return out;
  }

 private:
  torch::jit::Module module_;
  torch::jit::Method forward_;  // looked up once, not by name on every call
};

class AOTIModel final : public Model {
 public:
  AOTIModel(const std::string& path, const ModelOptions& options)
      : Model(ModelFormat::kAOTInductor, path),
        loader_(path, "model", /*run_single_threaded=*/false,
                static_cast<size_t>(std::max<int64_t>(1, options.num_runners)),
                options.device.has_index() ? options.device.index() : -1) {
    // torchspark.export records the argument and dict-output names (a package
    // compiled elsewhere has neither: its inputs and outputs are positional).
    const auto metadata = loader_.get_metadata();
    input_names_ = names_from(metadata, "torchspark.input_names");
    output_names_ = names_from(metadata, "torchspark.output_names");
  }

  ModelOutputs forward(const std::vector<at::Tensor>& inputs) const override {
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

 private:
  // Newline-separated names under `key`; empty when absent.
  static std::vector<std::string> names_from(
      const std::unordered_map<std::string, std::string>& metadata, const std::string& key) {
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

  mutable torch::inductor::AOTIModelPackageLoader loader_;
  std::vector<std::string> output_names_;
};

}  // namespace

ModelFormat detect_format(const std::string& path) {
  {
    std::ifstream file(path, std::ios::binary);
    TORCH_CHECK_VALUE(file.good(), "model '", path, "': cannot open the file");
    char magic[4] = {0, 0, 0, 0};
    file.read(magic, 4);
    TORCH_CHECK_VALUE(file.gcount() == 4 && magic[0] == 'P' && magic[1] == 'K', "model '", path,
                      "': expected a TorchScript archive or an AOTInductor package (.pt2), both "
                      "zip files; got a file that is not a zip archive");
  }
  std::vector<std::string> records;
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    records = reader.getAllRecords();
  } catch (const c10::Error& e) {
    TORCH_CHECK_VALUE(
        false, "model '", path,
        "': not a PyTorch archive (TorchScript or AOTInductor): ", e.what_without_backtrace());
  }
  const bool aoti = std::any_of(records.begin(), records.end(), [](const std::string& r) {
    return r.rfind("data/aotinductor/", 0) == 0;
  });
  const bool torchscript =
      std::find(records.begin(), records.end(), "constants.pkl") != records.end() &&
      std::any_of(records.begin(), records.end(),
                  [](const std::string& r) { return r.rfind("code/", 0) == 0; });
  if (aoti) return ModelFormat::kAOTInductor;
  if (torchscript) return ModelFormat::kTorchScript;
  std::string found;
  for (size_t i = 0; i < records.size() && i < 8; ++i) {
    found += (i ? ", " : "") + records[i];
  }
  const bool eager = std::find(records.begin(), records.end(), "data.pkl") != records.end();
  TORCH_CHECK_VALUE(false, "model '", path,
                    "': expected a TorchScript archive (torch.jit.save) or an AOTInductor "
                    "package (.pt2), found a zip with records [",
                    found, records.size() > 8 ? ", ..." : "", "]",
                    eager ? ": this looks like torch.save of eager weights; export the model "
                            "with torchspark.export"
                          : "");
  return ModelFormat::kTorchScript;
}

std::shared_ptr<const Model> load_model(const std::string& path, const ModelOptions& options) {
  const ModelFormat format = detect_format(path);
  try {
    if (format == ModelFormat::kTorchScript) {
      return std::make_shared<TorchScriptModel>(path, options);
    }
    return std::make_shared<AOTIModel>(path, options);
  } catch (const c10::Error& e) {
    TORCH_CHECK_VALUE(false, "model '", path, "' (", format_name(format),
                      "): failed to load: ", e.what_without_backtrace());
  }
  return nullptr;
}

}  // namespace torchspark
