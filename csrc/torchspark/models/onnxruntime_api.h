// ONNX Runtime's C API, loaded at run time from the libonnxruntime that the
// `onnxruntime` Python package (or a system install) provides.
//
// ONNX Runtime's C API is a table of function pointers (OrtApi) returned by
// the library's one exported symbol, OrtGetApiBase(). The table only grows
// between releases (entries are never moved or removed), so an entry's
// position is fixed for every release that has it. Its headers ship with the
// C/C++ release archives, not with the Python package, so this file declares
// the opaque handle types, the enum values it passes (ONNX's TensorProto data
// types, ORT's logging and allocator enums) and the positions of the entries
// the backend calls; api() binds them from the table of API version 13 (ORT
// 1.13), which has them all, and checks a few by calling them.
//
// The library is looked up once per process: $TORCHSPARK_ONNXRUNTIME_LIBRARY
// (import torchspark sets it to the onnxruntime package's library when that
// package is installed), else "libonnxruntime.so.1" on the loader's path.
// Nothing here touches Python.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace torchspark::ort {

struct OrtStatus;
struct OrtEnv;
struct OrtSession;
struct OrtSessionOptions;
struct OrtValue;
struct OrtMemoryInfo;
struct OrtIoBinding;
struct OrtTypeInfo;
struct OrtTensorTypeAndShapeInfo;
struct OrtAllocator;
struct OrtRunOptions;
struct OrtModelMetadata;

// ONNX TensorProto.DataType, which ORT's ONNXTensorElementDataType copies.
enum ElementType : int {
  kUndefined = 0,
  kFloat = 1,
  kUInt8 = 2,
  kInt8 = 3,
  kUInt16 = 4,
  kInt16 = 5,
  kInt32 = 6,
  kInt64 = 7,
  kString = 8,
  kBool = 9,
  kFloat16 = 10,
  kDouble = 11,
  kUInt32 = 12,
  kUInt64 = 13,
  kBFloat16 = 16,
};

// OrtCUDAProviderOptions as API version 13 lays it out. Later releases may
// append fields (zero means their default): pass it at the start of zeroed
// storage larger than itself (onnx_model.cpp does).
struct CudaOptions {
  int device_id = 0;
  int cudnn_conv_algo_search = 0;  // exhaustive
  size_t gpu_mem_limit = SIZE_MAX;
  int arena_extend_strategy = 0;
  int do_copy_in_default_stream = 1;
  int has_user_compute_stream = 0;
  void* user_compute_stream = nullptr;
  void* default_memory_arena_cfg = nullptr;
};

// The entries the backend calls, typed. Each returns an OrtStatus* (null on
// success) unless its type says otherwise.
struct Api {
  int (*GetErrorCode)(const OrtStatus*);
  const char* (*GetErrorMessage)(const OrtStatus*);
  OrtStatus* (*CreateEnv)(int log_level, const char* log_id, OrtEnv** out);
  OrtStatus* (*CreateSession)(const OrtEnv*, const char* path, const OrtSessionOptions*,
                              OrtSession** out);
  OrtStatus* (*CreateSessionOptions)(OrtSessionOptions** out);
  OrtStatus* (*SetSessionGraphOptimizationLevel)(OrtSessionOptions*, int level);
  OrtStatus* (*SetIntraOpNumThreads)(OrtSessionOptions*, int threads);
  OrtStatus* (*SetInterOpNumThreads)(OrtSessionOptions*, int threads);
  OrtStatus* (*SessionGetInputCount)(const OrtSession*, size_t* out);
  OrtStatus* (*SessionGetOutputCount)(const OrtSession*, size_t* out);
  OrtStatus* (*SessionGetInputTypeInfo)(const OrtSession*, size_t index, OrtTypeInfo** out);
  OrtStatus* (*SessionGetInputName)(const OrtSession*, size_t index, OrtAllocator*, char** out);
  OrtStatus* (*SessionGetOutputName)(const OrtSession*, size_t index, OrtAllocator*, char** out);
  OrtStatus* (*CreateTensorWithDataAsOrtValue)(const OrtMemoryInfo*, void* data, size_t bytes,
                                               const int64_t* shape, size_t rank, int type,
                                               OrtValue** out);
  OrtStatus* (*GetTensorMutableData)(OrtValue*, void** out);
  OrtStatus* (*CastTypeInfoToTensorInfo)(const OrtTypeInfo*, const OrtTensorTypeAndShapeInfo** out);
  OrtStatus* (*GetTensorElementType)(const OrtTensorTypeAndShapeInfo*, int* out);
  OrtStatus* (*GetDimensionsCount)(const OrtTensorTypeAndShapeInfo*, size_t* out);
  OrtStatus* (*GetDimensions)(const OrtTensorTypeAndShapeInfo*, int64_t* out, size_t count);
  OrtStatus* (*GetTensorTypeAndShape)(const OrtValue*, OrtTensorTypeAndShapeInfo** out);
  OrtStatus* (*CreateMemoryInfo)(const char* name, int allocator_type, int device_id, int mem_type,
                                 OrtMemoryInfo** out);
  OrtStatus* (*CreateCpuMemoryInfo)(int allocator_type, int mem_type, OrtMemoryInfo** out);
  OrtStatus* (*AllocatorFree)(OrtAllocator*, void* pointer);
  OrtStatus* (*GetAllocatorWithDefaultOptions)(OrtAllocator** out);
  void (*ReleaseEnv)(OrtEnv*);
  void (*ReleaseStatus)(OrtStatus*);
  void (*ReleaseMemoryInfo)(OrtMemoryInfo*);
  void (*ReleaseSession)(OrtSession*);
  void (*ReleaseValue)(OrtValue*);
  void (*ReleaseTypeInfo)(OrtTypeInfo*);
  void (*ReleaseTensorTypeAndShapeInfo)(OrtTensorTypeAndShapeInfo*);
  void (*ReleaseSessionOptions)(OrtSessionOptions*);
  OrtStatus* (*SessionGetModelMetadata)(const OrtSession*, OrtModelMetadata** out);
  // *out: allocated with `allocator`, null when the key is absent.
  OrtStatus* (*ModelMetadataLookupCustomMetadataMap)(const OrtModelMetadata*, OrtAllocator*,
                                                     const char* key, char** out);
  void (*ReleaseModelMetadata)(OrtModelMetadata*);
  OrtStatus* (*AddSessionConfigEntry)(OrtSessionOptions*, const char* key, const char* value);
  OrtStatus* (*RunWithBinding)(OrtSession*, const OrtRunOptions*, const OrtIoBinding*);
  OrtStatus* (*CreateIoBinding)(OrtSession*, OrtIoBinding** out);
  void (*ReleaseIoBinding)(OrtIoBinding*);
  OrtStatus* (*BindInput)(OrtIoBinding*, const char* name, const OrtValue*);
  OrtStatus* (*BindOutputToDevice)(OrtIoBinding*, const char* name, const OrtMemoryInfo*);
  OrtStatus* (*GetBoundOutputValues)(const OrtIoBinding*, OrtAllocator*, OrtValue*** out,
                                     size_t* count);
  OrtStatus* (*SessionOptionsAppendExecutionProvider_CUDA)(OrtSessionOptions*, const CudaOptions*);

  // The library's version ("1.32.0") and where it was loaded from.
  std::string version;
  std::string library;
};

// The process's ORT C API, loaded on first use. ValueError saying what was
// tried and how to install ONNX Runtime when the library cannot be loaded.
const Api& api();

// The process's ORT environment (created once, kept for the process's life:
// sessions may outlive any one owner).
OrtEnv* environment();

// Throws c10::Error "ONNX Runtime (<context>): <ORT's message>" when `status`
// is an error (and releases it); does nothing on success (null).
void check(OrtStatus* status, const std::string& context);

}  // namespace torchspark::ort
