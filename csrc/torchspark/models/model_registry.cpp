#include "torchspark/models/model_registry.h"

#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>
#include <caffe2/serialize/inline_container.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

namespace torchspark {

namespace {

std::vector<ModelBackend>& backends() {
  static std::vector<ModelBackend> registered;
  return registered;
}

ModelFile read_model_file(const std::string& path) {
  ModelFile file;
  file.path = path;
  std::error_code error;
  TORCH_CHECK_VALUE(!std::filesystem::is_directory(path, error), "model '", path,
                    "': expected a model file, got a directory (an AOTInductor package is "
                    "the .pt2 file itself, not a folder it was unpacked into)");
  {
    std::ifstream in(path, std::ios::binary);
    TORCH_CHECK_VALUE(in.good(), "model '", path, "': cannot open the file");
    char head[64];
    in.read(head, sizeof(head));
    file.head.assign(head, static_cast<size_t>(in.gcount()));
  }
  file.zip = file.head.size() >= 4 && file.head[0] == 'P' && file.head[1] == 'K';
  if (file.zip) {
    try {
      caffe2::serialize::PyTorchStreamReader reader(path);
      file.records = reader.getAllRecords();
    } catch (const c10::Error&) {
      // A zip that is not PyTorch's container: backends see no records.
    }
  }
  return file;
}

const ModelBackend& backend_for(const ModelFile& file) {
  std::string expected;
  for (const ModelBackend& backend : backends()) {
    if (backend.sniff(file)) return backend;
    expected += c10::str(expected.empty() ? "" : " or ", backend.expected);
  }
  std::string found = file.zip ? "a zip archive" : "a file that is not a zip archive";
  if (file.zip) {
    found += file.records.empty() ? " that is not a PyTorch archive" : " with records [";
    for (size_t i = 0; i < file.records.size() && i < 8; ++i) {
      found += c10::str(i ? ", " : "", file.records[i]);
    }
    if (!file.records.empty()) found += file.records.size() > 8 ? ", ...]" : "]";
  }
  const bool eager =
      std::find(file.records.begin(), file.records.end(), "data.pkl") != file.records.end();
  TORCH_CHECK_VALUE(false, "model '", file.path, "': expected ", expected, ", found ", found,
                    eager ? ": this looks like torch.save of eager weights; export the model "
                            "with torchspark.export"
                          : "");
  return backends().front();
}

}  // namespace

void register_model_backend(ModelBackend backend) {
  for (const ModelBackend& existing : backends()) {
    TORCH_CHECK(existing.name != backend.name, "model backend '", backend.name,
                "' is registered twice");
  }
  backends().push_back(std::move(backend));
}

std::vector<std::string> model_formats() {
  std::vector<std::string> names;
  for (const ModelBackend& backend : backends()) names.push_back(backend.name);
  return names;
}

std::string detect_format(const std::string& path) {
  return backend_for(read_model_file(path)).name;
}

std::shared_ptr<const Model> load_model(const std::string& path, const ModelOptions& options) {
  const ModelFile file = read_model_file(path);
  const ModelBackend& backend = backend_for(file);
  try {
    return backend.load(file, options);
  } catch (const c10::Error& e) {
    TORCH_CHECK_VALUE(false, "model '", path, "' (", backend.name,
                      "): failed to load: ", e.what_without_backtrace());
  }
  return nullptr;
}

}  // namespace torchspark
