// Model backends by format, and loading a file with the backend that knows it.
//
// Each backend file registers itself (static registration; the core is linked
// whole, see CMakeLists.txt): a name, a `sniff` that recognises its files from
// their first bytes and, for zip archives, their record names, and a `load`.
// Adding a format is one new file in models/. Registration happens before
// main(); lookups are thread-safe after that.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "torchspark/models/model.h"

namespace torchspark {

// What sniffing a file may look at, read once for all backends.
struct ModelFile {
  std::string path;
  std::string head;                  // the first bytes (up to 64)
  bool zip = false;                  // a zip archive (PyTorch's container format)
  std::vector<std::string> records;  // its record names, when zip
};

struct ModelBackend {
  std::string name;      // "TorchScript": Model::format() of what it loads
  std::string expected;  // for messages: "a TorchScript archive (torch.jit.save)"
  std::function<bool(const ModelFile&)> sniff;
  std::function<std::shared_ptr<const Model>(const ModelFile&, const ModelOptions&)> load;
};

// Registers `backend`; a second backend of the same name is a logic error.
void register_model_backend(ModelBackend backend);
// The registered backends' names, in registration order.
std::vector<std::string> model_formats();

// The format of the file at `path` (a backend's name). Throws ValueError
// naming the file, what each backend expects and what was found.
std::string detect_format(const std::string& path);

// Loads `path` with the backend that recognises it. Load failures are
// ValueError naming the file and the format.
std::shared_ptr<const Model> load_model(const std::string& path, const ModelOptions& options);

}  // namespace torchspark
