// The error types the core throws. Every message names the column (or model,
// or batch) and says what was expected and what was found. The Python binding
// maps each type to one Python exception class (python/torchspark/errors.py);
// nothing else crosses the boundary except c10's own TypeError/ValueError/Error.
#pragma once

#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

namespace torchspark {

// An Arrow type (or tensor dtype) that torchspark cannot convert. Python: TypeError.
class UnsupportedTypeError : public c10::TypeError {
 public:
  using c10::TypeError::TypeError;
};

// A structurally invalid Arrow array (bad lengths, offsets, buffers, a released
// struct). Raised before any value is read. Python: ValueError.
class InvalidArrowError : public c10::ValueError {
 public:
  using c10::ValueError::ValueError;
};

// A null where the null policy is "error". Python: ValueError.
class NullValueError : public c10::ValueError {
 public:
  using c10::ValueError::ValueError;
};

// A model call failed (it raised, or returned outputs of the wrong shape). The
// message names the model, the batch and its rows. Python: RuntimeError.
class ModelError : public c10::Error {
 public:
  using c10::Error::Error;
};

// A request still queued when its engine was closed without draining.
// Python: RuntimeError.
class EngineClosedError : public c10::Error {
 public:
  using c10::Error::Error;
};

}  // namespace torchspark

// Like TORCH_CHECK, but throws one of the torchspark error types above.
#define TS_CHECK_WITH(error_type, cond, ...)                                                \
  do {                                                                                      \
    if (C10_UNLIKELY(!(cond))) {                                                            \
      throw ::torchspark::error_type({__func__, __FILE__, static_cast<uint32_t>(__LINE__)}, \
                                     ::c10::str(__VA_ARGS__));                              \
    }                                                                                       \
  } while (false)

#define TS_CHECK_ARROW(cond, ...) TS_CHECK_WITH(InvalidArrowError, cond, __VA_ARGS__)
#define TS_CHECK_SUPPORTED(cond, ...) TS_CHECK_WITH(UnsupportedTypeError, cond, __VA_ARGS__)
#define TS_CHECK_NOT_NULL(cond, ...) TS_CHECK_WITH(NullValueError, cond, __VA_ARGS__)
