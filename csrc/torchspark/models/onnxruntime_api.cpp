#include "torchspark/models/onnxruntime_api.h"

#include <c10/util/Exception.h>
#include <dlfcn.h>

#include <cstdlib>
#include <cstring>

namespace torchspark::ort {
namespace {

// The API version whose table api() binds: the entries below all exist in it.
constexpr uint32_t kApiVersion = 13;

// Positions in the OrtApi table (onnxruntime_c_api.h, struct OrtApi: entries
// counted from 0 in declaration order; fixed since the version that added them).
enum Slot : int {
  kCreateStatus = 0,
  kGetErrorCode = 1,
  kGetErrorMessage = 2,
  kCreateEnv = 3,
  kCreateSession = 7,
  kCreateSessionOptions = 10,
  kSetSessionGraphOptimizationLevel = 23,
  kSetIntraOpNumThreads = 24,
  kSetInterOpNumThreads = 25,
  kSessionGetInputCount = 30,
  kSessionGetOutputCount = 31,
  kSessionGetInputTypeInfo = 33,
  kSessionGetInputName = 36,
  kSessionGetOutputName = 37,
  kCreateTensorWithDataAsOrtValue = 49,
  kGetTensorMutableData = 51,
  kCastTypeInfoToTensorInfo = 55,
  kGetTensorElementType = 60,
  kGetDimensionsCount = 61,
  kGetDimensions = 62,
  kGetTensorTypeAndShape = 65,
  kCreateMemoryInfo = 68,
  kCreateCpuMemoryInfo = 69,
  kAllocatorFree = 76,
  kGetAllocatorWithDefaultOptions = 78,
  kReleaseEnv = 92,
  kReleaseStatus = 93,
  kReleaseMemoryInfo = 94,
  kReleaseSession = 95,
  kReleaseValue = 96,
  kReleaseTypeInfo = 98,
  kReleaseTensorTypeAndShapeInfo = 99,
  kReleaseSessionOptions = 100,
  kSessionGetModelMetadata = 111,
  kModelMetadataLookupCustomMetadataMap = 116,
  kReleaseModelMetadata = 118,
  kAddSessionConfigEntry = 130,
  kRunWithBinding = 133,
  kCreateIoBinding = 134,
  kReleaseIoBinding = 135,
  kBindInput = 136,
  kBindOutputToDevice = 138,
  kGetBoundOutputValues = 140,
  kSessionOptionsAppendExecutionProvider_CUDA = 152,
};

// OrtApiBase: the struct OrtGetApiBase() returns.
struct ApiBase {
  const void* (*GetApi)(uint32_t version);
  const char* (*GetVersionString)();
};

constexpr const char* kInstall =
    "install ONNX Runtime with pip install 'torchspark[onnx]' (or onnxruntime-gpu for CUDA), or "
    "set TORCHSPARK_ONNXRUNTIME_LIBRARY to the path of a libonnxruntime.so";

template <typename Function>
void bind(const void* table, Slot slot, Function& function) {
  // The table holds function pointers; copy one out (no pointer cast between
  // object and function types).
  std::memcpy(&function, static_cast<const char*>(table) + sizeof(void*) * slot, sizeof(function));
  TORCH_CHECK(function != nullptr, "ONNX Runtime: the C API has no entry ", static_cast<int>(slot));
}

Api load() {
  const char* configured = std::getenv("TORCHSPARK_ONNXRUNTIME_LIBRARY");
  const std::string library =
      configured && *configured ? std::string(configured) : std::string("libonnxruntime.so.1");
  // Never closed: sessions, their threads and the environment live in it.
  void* handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* reason = dlerror();
    TORCH_CHECK_VALUE(false, "ONNX Runtime is not available: cannot load '", library, "' (",
                      reason ? reason : "unknown error", "); ", kInstall);
  }
  void* symbol = dlsym(handle, "OrtGetApiBase");
  TORCH_CHECK_VALUE(symbol != nullptr, "ONNX Runtime: '", library,
                    "' has no OrtGetApiBase: it is not an ONNX Runtime library; ", kInstall);
  const ApiBase* (*get_api_base)() = nullptr;
  std::memcpy(&get_api_base, &symbol, sizeof(symbol));
  const ApiBase* base = get_api_base();
  Api api;
  api.library = library;
  api.version = base->GetVersionString();
  const void* table = base->GetApi(kApiVersion);
  TORCH_CHECK_VALUE(table != nullptr, "ONNX Runtime ", api.version, " at '", library,
                    "' is too old: torchspark needs 1.13 or newer (C API version ", kApiVersion,
                    ")");

  OrtStatus* (*create_status)(int, const char*) = nullptr;
  bind(table, kCreateStatus, create_status);
  bind(table, kGetErrorCode, api.GetErrorCode);
  bind(table, kGetErrorMessage, api.GetErrorMessage);
  bind(table, kCreateEnv, api.CreateEnv);
  bind(table, kCreateSession, api.CreateSession);
  bind(table, kCreateSessionOptions, api.CreateSessionOptions);
  bind(table, kSetSessionGraphOptimizationLevel, api.SetSessionGraphOptimizationLevel);
  bind(table, kSetIntraOpNumThreads, api.SetIntraOpNumThreads);
  bind(table, kSetInterOpNumThreads, api.SetInterOpNumThreads);
  bind(table, kSessionGetInputCount, api.SessionGetInputCount);
  bind(table, kSessionGetOutputCount, api.SessionGetOutputCount);
  bind(table, kSessionGetInputTypeInfo, api.SessionGetInputTypeInfo);
  bind(table, kSessionGetInputName, api.SessionGetInputName);
  bind(table, kSessionGetOutputName, api.SessionGetOutputName);
  bind(table, kCreateTensorWithDataAsOrtValue, api.CreateTensorWithDataAsOrtValue);
  bind(table, kGetTensorMutableData, api.GetTensorMutableData);
  bind(table, kCastTypeInfoToTensorInfo, api.CastTypeInfoToTensorInfo);
  bind(table, kGetTensorElementType, api.GetTensorElementType);
  bind(table, kGetDimensionsCount, api.GetDimensionsCount);
  bind(table, kGetDimensions, api.GetDimensions);
  bind(table, kGetTensorTypeAndShape, api.GetTensorTypeAndShape);
  bind(table, kCreateMemoryInfo, api.CreateMemoryInfo);
  bind(table, kCreateCpuMemoryInfo, api.CreateCpuMemoryInfo);
  bind(table, kAllocatorFree, api.AllocatorFree);
  bind(table, kGetAllocatorWithDefaultOptions, api.GetAllocatorWithDefaultOptions);
  bind(table, kReleaseEnv, api.ReleaseEnv);
  bind(table, kReleaseStatus, api.ReleaseStatus);
  bind(table, kReleaseMemoryInfo, api.ReleaseMemoryInfo);
  bind(table, kReleaseSession, api.ReleaseSession);
  bind(table, kReleaseValue, api.ReleaseValue);
  bind(table, kReleaseTypeInfo, api.ReleaseTypeInfo);
  bind(table, kReleaseTensorTypeAndShapeInfo, api.ReleaseTensorTypeAndShapeInfo);
  bind(table, kReleaseSessionOptions, api.ReleaseSessionOptions);
  bind(table, kSessionGetModelMetadata, api.SessionGetModelMetadata);
  bind(table, kModelMetadataLookupCustomMetadataMap, api.ModelMetadataLookupCustomMetadataMap);
  bind(table, kReleaseModelMetadata, api.ReleaseModelMetadata);
  bind(table, kAddSessionConfigEntry, api.AddSessionConfigEntry);
  bind(table, kRunWithBinding, api.RunWithBinding);
  bind(table, kCreateIoBinding, api.CreateIoBinding);
  bind(table, kReleaseIoBinding, api.ReleaseIoBinding);
  bind(table, kBindInput, api.BindInput);
  bind(table, kBindOutputToDevice, api.BindOutputToDevice);
  bind(table, kGetBoundOutputValues, api.GetBoundOutputValues);
  bind(table, kSessionOptionsAppendExecutionProvider_CUDA,
       api.SessionOptionsAppendExecutionProvider_CUDA);

  // The positions are checked where a call can show them: a status made by
  // CreateStatus reads back its code and message (entries 0-2 and 93).
  OrtStatus* probe = create_status(2, "torchspark");
  const bool consistent = probe != nullptr && api.GetErrorCode(probe) == 2 &&
                          std::strcmp(api.GetErrorMessage(probe), "torchspark") == 0;
  if (probe != nullptr) api.ReleaseStatus(probe);
  TORCH_CHECK(consistent, "ONNX Runtime ", api.version, " at '", library,
              "': its C API does not answer as version ", kApiVersion, " lays it out");
  return api;
}

}  // namespace

const Api& api() {
  // A load that throws leaves the static unset: the next call tries again.
  static const Api loaded = load();
  return loaded;
}

OrtEnv* environment() {
  static OrtEnv* env = [] {
    OrtEnv* created = nullptr;
    // 4: ORT_LOGGING_LEVEL_FATAL. ORT would print each error (and warning) on
    // stderr; torchspark raises them, with the model and the batch named.
    check(api().CreateEnv(4, "torchspark", &created), "creating its environment");
    return created;
  }();
  return env;
}

void check(OrtStatus* status, const std::string& context) {
  if (status == nullptr) return;
  const Api& ort = api();
  std::string message = ort.GetErrorMessage(status);
  ort.ReleaseStatus(status);
  TORCH_CHECK(false, "ONNX Runtime (", context, "): ", message);
}

}  // namespace torchspark::ort
