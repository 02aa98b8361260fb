// Error mapping: every torchspark error type to its Python class
// (torchspark/errors.py), through one translator.
#include <torch/csrc/utils/pybind.h>

#include <cstring>

#include "bindings/common.h"
#include "torchspark/errors.h"

namespace torchspark {
namespace {

// The Python classes of torchspark.errors, handed over once at import. Held
// as leaked references: they must outlive every call, including at exit.
PyObject* g_unsupported_type_error = PyExc_TypeError;
PyObject* g_invalid_arrow_error = PyExc_ValueError;
PyObject* g_null_value_error = PyExc_ValueError;
PyObject* g_model_error = PyExc_RuntimeError;
PyObject* g_engine_closed_error = PyExc_RuntimeError;

void set_error_types(py::object unsupported, py::object invalid, py::object null_value,
                     py::object model, py::object engine_closed) {
  g_unsupported_type_error = unsupported.release().ptr();
  g_invalid_arrow_error = invalid.release().ptr();
  g_null_value_error = null_value.release().ptr();
  g_model_error = model.release().ptr();
  g_engine_closed_error = engine_closed.release().ptr();
}

// Messages may quote bytes of the input (a corrupt model's code, a column
// name): invalid UTF-8 is escaped (\xNN) rather than turning the error into a
// UnicodeDecodeError that loses the message (found by model_load_fuzzer).
void set_error(PyObject* type, const char* message) {
  PyObject* text = PyUnicode_DecodeUTF8(message, static_cast<Py_ssize_t>(std::strlen(message)),
                                        "backslashreplace");
  if (text == nullptr) return;  // out of memory: that error stays set
  PyErr_SetObject(type, text);
  Py_DECREF(text);
}

void translate(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const UnsupportedTypeError& e) {
    set_error(g_unsupported_type_error, e.what_without_backtrace());
  } catch (const InvalidArrowError& e) {
    set_error(g_invalid_arrow_error, e.what_without_backtrace());
  } catch (const NullValueError& e) {
    set_error(g_null_value_error, e.what_without_backtrace());
  } catch (const ModelError& e) {
    set_error(g_model_error, e.what_without_backtrace());
  } catch (const EngineClosedError& e) {
    set_error(g_engine_closed_error, e.what_without_backtrace());
  } catch (const c10::TypeError& e) {
    set_error(PyExc_TypeError, e.what_without_backtrace());
  } catch (const c10::ValueError& e) {
    set_error(PyExc_ValueError, e.what_without_backtrace());
  } catch (const c10::IndexError& e) {
    set_error(PyExc_IndexError, e.what_without_backtrace());
  } catch (const c10::Error& e) {
    set_error(PyExc_RuntimeError, e.what_without_backtrace());
  }
}

}  // namespace

void bind_errors(py::module_& m) {
  py::register_local_exception_translator(&translate);
  m.def("_set_error_types", &set_error_types, py::arg("unsupported_type"), py::arg("invalid_arrow"),
        py::arg("null_value"), py::arg("model"), py::arg("engine_closed"));
}

}  // namespace torchspark
