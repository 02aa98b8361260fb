#include "torchspark/models/model_registry.h"

#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>
#include <caffe2/serialize/inline_container.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <new>
#include <optional>
#include <tuple>

#include "torchspark/models/archive_limits.h"

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
    // Before LibTorch's reader, which allocates declared sizes (archive_limits.h).
    check_archive_sizes(path, c10::str("model '", path, "'"));
    std::optional<caffe2::serialize::PyTorchStreamReader> reader;
    try {
      reader.emplace(path);
      file.records = reader->getAllRecords();
    } catch (const c10::Error&) {
      // A zip that is not PyTorch's container: backends see no records.
      return file;
    }
    // The pickles LibTorch unpickles when it loads (not the debug records,
    // which torchscript_model.cpp does not load), before it does.
    for (const std::string& name : file.records) {
      if (name.size() < 4 || name.compare(name.size() - 4, 4, ".pkl") != 0) continue;
      std::tuple<at::DataPtr, size_t> record;
      try {
        record = reader->getRecord(name);
      } catch (const c10::Error&) {
        continue;  // unreadable: the backend's loader refuses it
      }
      check_pickle_lengths(static_cast<const uint8_t*>(std::get<0>(record).get()),
                           std::get<1>(record),
                           c10::str("model '", path, "': record '", name, "'"));
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
  std::string error;
  try {
    return backend.load(file, options);
  } catch (const c10::Error& e) {
    error = e.what_without_backtrace();
  } catch (const std::bad_alloc&) {
    throw;  // out of memory is not a fault of the file
  } catch (const std::exception& e) {
    // LibTorch's TorchScript lexer and parser throw std::runtime_error on a
    // corrupt code record (found by model_load_fuzzer, RELIABILITY.md).
    error = e.what();
  }
  TORCH_CHECK_VALUE(false, "model '", path, "' (", backend.name, "): failed to load: ", error);
  return nullptr;
}

}  // namespace torchspark
