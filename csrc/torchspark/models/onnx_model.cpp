// ONNX models (torch.onnx.export; torchspark.export(format="onnx")), run by
// ONNX Runtime through its C API (onnxruntime_api.h): the graph optimised at
// the highest level, intra-op threads as many as torch's pool (the engine's
// thread rule sizes both), the CUDA execution provider on a CUDA device.
// Inputs are bound in place (no copy: ORT reads the engine's staged
// tensors); outputs are allocated by ORT on the model's device and handed to
// the engine as tensors over ORT's memory (released with the tensor).
// Concurrent calls are fine: ORT's Run is thread-safe, each call has its own
// binding. The dtypes are compiled in (no autocast).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/ScalarType.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>
#include <string_view>

#include "torchspark/errors.h"
#include "torchspark/models/model_registry.h"
#include "torchspark/models/onnxruntime_api.h"

namespace torchspark {
namespace {

using ort::api;
using ort::check;

// ORT's enum values this file passes.
constexpr int kArenaAllocator = 1;       // OrtArenaAllocator
constexpr int kMemTypeDefault = 0;       // OrtMemTypeDefault
constexpr int kOptimizeEverything = 99;  // ORT_ENABLE_ALL

// What a failing call was doing, for ORT's message.
constexpr const char* kSettingUp = "setting up the session";
constexpr const char* kReading = "reading the graph's inputs and outputs";

std::optional<at::ScalarType> torch_type(int type) {
  switch (type) {
    case ort::kFloat: return at::kFloat;
    case ort::kDouble: return at::kDouble;
    case ort::kFloat16: return at::kHalf;
    case ort::kBFloat16: return at::kBFloat16;
    case ort::kInt8: return at::kChar;
    case ort::kInt16: return at::kShort;
    case ort::kInt32: return at::kInt;
    case ort::kInt64: return at::kLong;
    case ort::kUInt8: return at::kByte;
    case ort::kUInt16: return at::kUInt16;
    case ort::kUInt32: return at::kUInt32;
    case ort::kUInt64: return at::kUInt64;
    case ort::kBool: return at::kBool;
    default: return std::nullopt;
  }
}

int onnx_type(at::ScalarType type) {
  for (int t : {ort::kFloat, ort::kDouble, ort::kFloat16, ort::kBFloat16, ort::kInt8, ort::kInt16,
                ort::kInt32, ort::kInt64, ort::kUInt8, ort::kUInt16, ort::kUInt32, ort::kUInt64,
                ort::kBool}) {
    if (torch_type(t) == type) return t;
  }
  return ort::kUndefined;
}

// Whether `from` converts to `to` without losing a value: a wider integer
// from an integer, a wider float from a float.
bool widens(at::ScalarType from, at::ScalarType to) {
  if (from == to) return true;
  if (from == at::kBool || to == at::kBool) return false;
  const bool from_float = at::isFloatingType(from);
  if (from_float != at::isFloatingType(to)) return false;
  return c10::promoteTypes(from, to) == to;
}

// Unique owners of ORT objects: released by the API's entry `release`.
template <typename T, void (*ort::Api::*release)(T*)>
struct Release {
  void operator()(T* object) const { (api().*release)(object); }
};
template <typename T, void (*ort::Api::*release)(T*)>
using Owned = std::unique_ptr<T, Release<T, release>>;
using SessionPtr = Owned<ort::OrtSession, &ort::Api::ReleaseSession>;
using MemoryInfoPtr = Owned<ort::OrtMemoryInfo, &ort::Api::ReleaseMemoryInfo>;
using SessionOptionsPtr = Owned<ort::OrtSessionOptions, &ort::Api::ReleaseSessionOptions>;
using TypeInfoPtr = Owned<ort::OrtTypeInfo, &ort::Api::ReleaseTypeInfo>;
using ShapePtr = Owned<ort::OrtTensorTypeAndShapeInfo, &ort::Api::ReleaseTensorTypeAndShapeInfo>;
using ValuePtr = Owned<ort::OrtValue, &ort::Api::ReleaseValue>;
using IoBindingPtr = Owned<ort::OrtIoBinding, &ort::Api::ReleaseIoBinding>;
using MetadataPtr = Owned<ort::OrtModelMetadata, &ort::Api::ReleaseModelMetadata>;

// A string ORT allocated with the default allocator, copied and freed.
std::string take_string(char* value) {
  std::string copy = value ? value : "";
  if (value != nullptr) {
    ort::OrtAllocator* allocator = nullptr;
    check(api().GetAllocatorWithDefaultOptions(&allocator), "ONNX Runtime allocator");
    check(api().AllocatorFree(allocator, value), "ONNX Runtime allocator");
  }
  return copy;
}

// What the graph declares for one input: element type and dims (-1 where
// symbolic, e.g. the batch).
struct InputSpec {
  std::string name;
  at::ScalarType dtype = at::kFloat;
  std::vector<int64_t> dims;
};

std::string dims_text(const std::vector<int64_t>& dims) {
  std::string text = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    text += c10::str(i ? ", " : "", dims[i] < 0 ? std::string("?") : std::to_string(dims[i]));
  }
  return text + "]";
}

class OnnxModel final : public Model {
 public:
  OnnxModel(const std::string& path, const ModelOptions& options)
      : Model("ONNX", path), device_(options.device), runners_(options.num_runners) {
    const ort::Api& ort = api();
    TORCH_CHECK_VALUE(device_.is_cpu() || device_.is_cuda(),
                      "ONNX Runtime runs on CPU and CUDA devices here, got ", device_.str());
    ort::OrtSessionOptions* raw_options = nullptr;
    check(ort.CreateSessionOptions(&raw_options), kSettingUp);
    SessionOptionsPtr session_options(raw_options);
    check(ort.SetSessionGraphOptimizationLevel(raw_options, kOptimizeEverything), kSettingUp);
    // Torch's intra-op pool size, which the engine's thread rule set for this
    // process (workers x threads <= cores); graphs run their nodes in order.
    check(ort.SetIntraOpNumThreads(raw_options, std::max(1, at::get_num_threads())), kSettingUp);
    check(ort.SetInterOpNumThreads(raw_options, 1), kSettingUp);
    // Idle pool threads sleep instead of spinning: the engine's converters and
    // Spark's reader share these cores.
    check(ort.AddSessionConfigEntry(raw_options, "session.intra_op.allow_spinning", "0"),
          kSettingUp);
    if (device_.is_cuda()) {
      // Zeroed room beyond the struct: a newer ORT may read fields appended
      // after it, and zero is their default.
      alignas(std::max_align_t) unsigned char storage[1024] = {};
      auto* cuda = new (storage) ort::CudaOptions();
      cuda->device_id = device_.has_index() ? device_.index() : 0;
      check(ort.SessionOptionsAppendExecutionProvider_CUDA(raw_options, cuda),
            c10::str("the CUDA execution provider (onnxruntime-gpu, ", ort.library, ")"));
    }
    ort::OrtSession* raw_session = nullptr;
    check(ort.CreateSession(ort::environment(), path.c_str(), raw_options, &raw_session),
          c10::str("version ", ort.version, ", loading the file"));
    session_.reset(raw_session);

    ort::OrtMemoryInfo* memory = nullptr;
    if (device_.is_cuda()) {
      check(ort.CreateMemoryInfo("Cuda", kArenaAllocator, device_.has_index() ? device_.index() : 0,
                                 kMemTypeDefault, &memory),
            kSettingUp);
    } else {
      check(ort.CreateCpuMemoryInfo(kArenaAllocator, kMemTypeDefault, &memory), kSettingUp);
    }
    memory_.reset(memory);
    read_signature();
  }

  ModelOutputs forward(const std::vector<at::Tensor>& inputs,
                       const RunContext& context) const override {
    const ort::Api& ort = api();
    TORCH_CHECK(inputs.size() == inputs_.size(), "the graph takes ", inputs_.size(),
                " inputs, got ", inputs.size());
    std::vector<at::Tensor> bound;  // alive until the run ends: ORT reads them in place
    bound.reserve(inputs.size());
    std::vector<ValuePtr> values;
    ort::OrtIoBinding* raw_binding = nullptr;
    check(ort.CreateIoBinding(session_.get(), &raw_binding), "binding");
    IoBindingPtr binding(raw_binding);
    for (size_t i = 0; i < inputs.size(); ++i) {
      bound.push_back(conform(inputs[i], inputs_[i]).contiguous());
      const at::Tensor& tensor = bound.back();
      ort::OrtValue* value = nullptr;
      check(ort.CreateTensorWithDataAsOrtValue(memory_.get(), tensor.data_ptr(), tensor.nbytes(),
                                               tensor.sizes().data(), tensor.sizes().size(),
                                               onnx_type(tensor.scalar_type()), &value),
            c10::str("input '", inputs_[i].name, "'"));
      values.emplace_back(value);
      check(ort.BindInput(binding.get(), inputs_[i].name.c_str(), value),
            c10::str("input '", inputs_[i].name, "'"));
    }
    for (const std::string& name : output_names_) {
      check(ort.BindOutputToDevice(binding.get(), name.c_str(), memory_.get()),
            c10::str("output '", name, "'"));
    }
    if (!context.device.is_cpu()) {
      // The engine staged the inputs on its current stream; ORT computes on
      // its own: the copies must have landed before it reads them.
      c10::impl::VirtualGuardImpl guard(context.device.type());
      guard.getStream(context.device).synchronize();
    }
    check(ort.RunWithBinding(session_.get(), nullptr, binding.get()), "run");
    return collect(binding.get());
  }

  ModelCapabilities capabilities() const override { return {/*autocast=*/false, runners_}; }

  bool is_out_of_memory(const std::exception_ptr& error) const override {
    if (Model::is_out_of_memory(error)) return true;
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      // ORT's allocators: "Failed to allocate memory for requested buffer".
      return std::string_view(e.what()).find("Failed to allocate memory") != std::string_view::npos;
    } catch (...) {
      return false;
    }
  }

 private:
  void read_signature() {
    const ort::Api& ort = api();
    ort::OrtAllocator* allocator = nullptr;
    check(ort.GetAllocatorWithDefaultOptions(&allocator), kReading);
    size_t count = 0;
    check(ort.SessionGetInputCount(session_.get(), &count), kReading);
    for (size_t i = 0; i < count; ++i) {
      InputSpec spec;
      char* name = nullptr;
      check(ort.SessionGetInputName(session_.get(), i, allocator, &name), kReading);
      spec.name = take_string(name);
      ort::OrtTypeInfo* raw_info = nullptr;
      check(ort.SessionGetInputTypeInfo(session_.get(), i, &raw_info), kReading);
      TypeInfoPtr info(raw_info);
      const ort::OrtTensorTypeAndShapeInfo* tensor = nullptr;
      check(ort.CastTypeInfoToTensorInfo(raw_info, &tensor), kReading);
      TS_CHECK_SUPPORTED(tensor != nullptr, "input '", spec.name,
                         "' is not a tensor (a sequence, map or optional): torchspark feeds "
                         "tensors");
      int type = 0;
      check(ort.GetTensorElementType(tensor, &type), kReading);
      const auto dtype = torch_type(type);
      TS_CHECK_SUPPORTED(dtype.has_value(), "input '", spec.name, "' has ONNX element type ", type,
                         ", which torchspark does not feed");
      spec.dtype = *dtype;
      size_t rank = 0;
      check(ort.GetDimensionsCount(tensor, &rank), kReading);
      spec.dims.resize(rank);
      check(ort.GetDimensions(tensor, spec.dims.data(), rank), kReading);
      input_names_.push_back(spec.name);
      inputs_.push_back(std::move(spec));
    }
    check(ort.SessionGetOutputCount(session_.get(), &count), kReading);
    for (size_t i = 0; i < count; ++i) {
      char* name = nullptr;
      check(ort.SessionGetOutputName(session_.get(), i, allocator, &name), kReading);
      output_names_.push_back(take_string(name));
    }
    // torchspark.export records the keys of a dict output (one per line), or
    // "" for positional outputs. Any other ONNX file: its outputs are named,
    // a dict of them.
    ort::OrtModelMetadata* raw_metadata = nullptr;
    check(ort.SessionGetModelMetadata(session_.get(), &raw_metadata), "reading the metadata");
    MetadataPtr metadata(raw_metadata);
    char* recorded = nullptr;
    check(ort.ModelMetadataLookupCustomMetadataMap(raw_metadata, allocator,
                                                   "torchspark.output_names", &recorded),
          "reading the metadata");
    if (recorded == nullptr) {
      names_ = output_names_;
      return;
    }
    const std::string keys = take_string(recorded);
    if (keys.empty()) {
      names_.assign(output_names_.size(), std::string());
      return;
    }
    for (size_t begin = 0;;) {
      const size_t end = keys.find('\n', begin);
      names_.push_back(keys.substr(begin, end - begin));
      if (end == std::string::npos) break;
      begin = end + 1;
    }
    TORCH_CHECK_VALUE(names_.size() == output_names_.size(), "the metadata names ", names_.size(),
                      " outputs, the graph has ", output_names_.size());
  }

  // `tensor` as the graph's input `spec` takes it: rank and fixed dims
  // checked, the dtype widened where no value changes (int32 ids for an
  // int64 input); anything else is an error naming the input.
  at::Tensor conform(const at::Tensor& tensor, const InputSpec& spec) const {
    TORCH_CHECK_VALUE(tensor.dim() == static_cast<int64_t>(spec.dims.size()), "input '", spec.name,
                      "' expects rank ", spec.dims.size(), " ", dims_text(spec.dims),
                      ", got a tensor of shape ", tensor.sizes());
    for (size_t d = 0; d < spec.dims.size(); ++d) {
      TORCH_CHECK_VALUE(spec.dims[d] < 0 || spec.dims[d] == tensor.size(static_cast<int64_t>(d)),
                        "input '", spec.name, "' expects shape ", dims_text(spec.dims), ", got ",
                        tensor.sizes(), " (dim ", d, ")");
    }
    if (tensor.scalar_type() == spec.dtype) return tensor;
    TS_CHECK_SUPPORTED(widens(tensor.scalar_type(), spec.dtype), "input '", spec.name, "' expects ",
                       spec.dtype, ", got ", tensor.scalar_type(),
                       " (which does not convert to it without loss); export the model with "
                       "inputs of the dtype it will be fed, or set the input's dtype");
    return tensor.to(spec.dtype);
  }

  ModelOutputs collect(ort::OrtIoBinding* binding) const {
    const ort::Api& ort = api();
    ort::OrtAllocator* allocator = nullptr;
    check(ort.GetAllocatorWithDefaultOptions(&allocator), "outputs");
    ort::OrtValue** raw_values = nullptr;
    size_t count = 0;
    check(ort.GetBoundOutputValues(binding, allocator, &raw_values, &count), "outputs");
    // Own every value at once, so that an error below releases them all.
    std::vector<ValuePtr> values;
    for (size_t i = 0; i < count; ++i) values.emplace_back(raw_values[i]);
    if (raw_values != nullptr) check(ort.AllocatorFree(allocator, raw_values), "outputs");
    TORCH_CHECK(count == output_names_.size(), "ONNX Runtime returned ", count,
                " outputs, the graph declares ", output_names_.size());
    ModelOutputs out;
    for (size_t i = 0; i < count; ++i) {
      ort::OrtTensorTypeAndShapeInfo* raw_shape = nullptr;
      check(ort.GetTensorTypeAndShape(values[i].get(), &raw_shape), "outputs");
      ShapePtr shape(raw_shape);
      int type = 0;
      check(ort.GetTensorElementType(raw_shape, &type), "outputs");
      const auto dtype = torch_type(type);
      TS_CHECK_SUPPORTED(dtype.has_value(), "output '", output_names_[i],
                         "' has ONNX element type ", type, ", which torchspark does not convert");
      size_t rank = 0;
      check(ort.GetDimensionsCount(raw_shape, &rank), "outputs");
      std::vector<int64_t> sizes(rank);
      check(ort.GetDimensions(raw_shape, sizes.data(), rank), "outputs");
      void* data = nullptr;
      check(ort.GetTensorMutableData(values[i].get(), &data), "outputs");
      ort::OrtValue* owner = values[i].release();
      out.tensors.push_back(at::for_blob(data, sizes)
                                .deleter([owner](void*) { api().ReleaseValue(owner); })
                                .options(at::TensorOptions().dtype(*dtype).device(device_))
                                .make_tensor());
      out.names.push_back(names_[i]);
    }
    return out;
  }

  c10::Device device_;
  int64_t runners_;
  SessionPtr session_;
  MemoryInfoPtr memory_;
  std::vector<InputSpec> inputs_;
  std::vector<std::string> output_names_;  // the graph's (what ORT binds)
  std::vector<std::string> names_;         // what the engine gets: "" when positional
};

// An ONNX ModelProto as every writer serialises it: field 1 (ir_version, a
// small varint) first, then another ModelProto field (producer name or
// version, domain, model version, doc string, graph, opset import, metadata).
bool is_onnx(const ModelFile& file) {
  const std::string& h = file.head;
  if (file.zip || h.size() < 3) return false;
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(h[i]); };
  if (byte(0) != 0x08 || byte(1) == 0 || byte(1) > 0x7f) return false;
  for (unsigned char tag : {0x12, 0x1a, 0x22, 0x28, 0x32, 0x3a, 0x42, 0x72}) {
    if (byte(2) == tag) return true;
  }
  return false;
}

const bool registered =
    (register_model_backend({"ONNX", "an ONNX model (torch.onnx.export)", is_onnx,
                             [](const ModelFile& file, const ModelOptions& options) {
                               return std::make_shared<OnnxModel>(file.path, options);
                             }}),
     true);

}  // namespace
}  // namespace torchspark
