// torchspark._C: the pybind11 module. Argument conversion (the Arrow PyCapsule
// protocol, dtypes, scalars), GIL policy (released around every conversion),
// and error mapping (one translator, below). No logic lives here.
#include <torch/csrc/utils/pybind.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "torchspark/arrow_export.h"
#include "torchspark/arrow_import.h"
#include "torchspark/arrow_owner.h"
#include "torchspark/engine/engine.h"
#include "torchspark/errors.h"
#include "torchspark/gather.h"
#include "torchspark/model.h"
#include "torchspark/pad.h"

namespace py = pybind11;

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

void translate(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const UnsupportedTypeError& e) {
    PyErr_SetString(g_unsupported_type_error, e.what_without_backtrace());
  } catch (const InvalidArrowError& e) {
    PyErr_SetString(g_invalid_arrow_error, e.what_without_backtrace());
  } catch (const NullValueError& e) {
    PyErr_SetString(g_null_value_error, e.what_without_backtrace());
  } catch (const ModelError& e) {
    PyErr_SetString(g_model_error, e.what_without_backtrace());
  } catch (const EngineClosedError& e) {
    PyErr_SetString(g_engine_closed_error, e.what_without_backtrace());
  } catch (const c10::TypeError& e) {
    PyErr_SetString(PyExc_TypeError, e.what_without_backtrace());
  } catch (const c10::ValueError& e) {
    PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
  } catch (const c10::IndexError& e) {
    PyErr_SetString(PyExc_IndexError, e.what_without_backtrace());
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
  }
}

template <typename T>
T* capsule_pointer(py::handle capsule, const char* name, const std::string& label) {
  void* ptr = PyCapsule_GetPointer(capsule.ptr(), name);
  if (ptr == nullptr) {
    PyErr_Clear();
    throw py::type_error(label + ": expected a PyCapsule named '" + name + "' from the Arrow " +
                         "PyCapsule interface, got " +
                         py::str(py::type::of(capsule)).cast<std::string>());
  }
  return static_cast<T*>(ptr);
}

// Takes whatever the object exports through the Arrow PyCapsule interface.
// The stream is preferred when an object has both: it is the protocol that
// covers chunked data (a multi-chunk nanoarrow Array refuses __arrow_c_array__).
// Runs with the GIL held (producers may be Python code).
ImportedTable import_arrow(py::handle obj, const std::string& label) {
  if (py::hasattr(obj, "__arrow_c_stream__")) {
    py::object capsule = obj.attr("__arrow_c_stream__")();
    auto* stream = capsule_pointer<ArrowArrayStream>(capsule, "arrow_array_stream", label);
    return ImportedTable(import_stream(stream, label), label);
  }
  if (py::hasattr(obj, "__arrow_c_array__")) {
    py::object result = obj.attr("__arrow_c_array__")();
    if (!py::isinstance<py::tuple>(result) || py::len(result) != 2) {
      throw py::type_error(label + ": __arrow_c_array__() must return a (schema, array) " +
                           "capsule pair");
    }
    py::tuple pair = result;
    auto* schema = capsule_pointer<ArrowSchema>(pair[0], "arrow_schema", label);
    auto* array = capsule_pointer<ArrowArray>(pair[1], "arrow_array", label);
    return ImportedTable(import_array(schema, array, label), label);
  }
  throw py::type_error(label + ": expected an Arrow array, chunked array, record batch or " +
                       "table (an object with __arrow_c_array__ or __arrow_c_stream__), got " +
                       py::str(py::type::of(obj)).cast<std::string>());
}

// torch's pybind caster cannot load a c10::Scalar; numbers are converted here.
c10::Scalar to_scalar(py::handle value, const char* name) {
  if (py::isinstance<py::bool_>(value)) {
    return c10::Scalar(value.cast<bool>());
  }
  if (py::isinstance<py::int_>(value)) {
    try {
      return c10::Scalar(value.cast<int64_t>());
    } catch (const py::cast_error&) {
      return c10::Scalar(value.cast<uint64_t>());
    }
  }
  if (py::isinstance<py::float_>(value)) {
    return c10::Scalar(value.cast<double>());
  }
  throw py::type_error(std::string(name) + ": expected a bool, int or float, got " +
                       py::str(py::type::of(value)).cast<std::string>());
}

ToTensorOptions tensor_options(std::optional<at::ScalarType> dtype, const std::string& nulls,
                               py::handle fill, const std::string& dictionary,
                               std::optional<std::vector<int64_t>> shape) {
  ToTensorOptions options;
  options.dtype = dtype;
  options.nulls = parse_null_policy(nulls);
  options.fill = to_scalar(fill, "fill");
  options.dictionary = parse_dictionary_policy(dictionary);
  options.shape = std::move(shape);
  return options;
}

py::object tensor_result(ColumnTensor&& result) {
  if (result.mask.defined()) {
    return py::make_tuple(std::move(result.values), std::move(result.mask));
  }
  return py::cast(std::move(result.values));
}

py::object py_to_tensor(py::handle obj, std::optional<at::ScalarType> dtype,
                        const std::string& nulls, py::handle fill, const std::string& dictionary,
                        std::optional<std::vector<int64_t>> shape) {
  ToTensorOptions options = tensor_options(dtype, nulls, fill, dictionary, std::move(shape));
  ImportedTable table = import_arrow(obj, "array");
  Column column = table.as_column();
  ColumnTensor result;
  {
    py::gil_scoped_release nogil;
    result = to_tensor(column, options);
  }
  return tensor_result(std::move(result));
}

py::dict py_to_tensors(py::handle obj, std::optional<std::vector<std::string>> columns,
                       std::optional<at::ScalarType> dtype, const std::string& nulls,
                       py::handle fill, const std::string& dictionary,
                       std::optional<std::vector<int64_t>> shape) {
  ToTensorOptions options = tensor_options(dtype, nulls, fill, dictionary, std::move(shape));
  ImportedTable table = import_arrow(obj, "batch");
  const std::vector<std::string> names = columns ? *columns : table.column_names();
  std::vector<Column> selection = table.select(names, "to_tensors");
  std::vector<ColumnTensor> results(selection.size());
  {
    py::gil_scoped_release nogil;
    for (size_t i = 0; i < selection.size(); ++i) {
      results[i] = to_tensor(selection[i], options);
    }
  }
  py::dict out;
  for (size_t i = 0; i < selection.size(); ++i) {
    out[py::str(names[i])] = tensor_result(std::move(results[i]));
  }
  return out;
}

at::Tensor py_gather(py::handle obj, std::optional<std::vector<std::string>> columns,
                     at::ScalarType dtype, const std::string& nulls, py::handle fill,
                     std::optional<at::Tensor> out) {
  GatherOptions options;
  options.dtype = dtype;
  options.nulls = parse_null_policy(nulls);
  options.fill = to_scalar(fill, "fill");
  ImportedTable table = import_arrow(obj, "batch");
  std::vector<Column> selection = table.select(columns, "gather");
  py::gil_scoped_release nogil;
  return gather(selection, table.num_rows(), options, out);
}

py::tuple py_pad(py::handle obj, std::optional<int64_t> max_len, py::handle pad_value,
                 std::optional<at::ScalarType> dtype, const std::string& nulls) {
  PadOptions options;
  options.max_len = max_len;
  options.pad_value = to_scalar(pad_value, "pad_value");
  options.dtype = dtype;
  options.nulls = parse_null_policy(nulls);
  ImportedTable table = import_arrow(obj, "array");
  Column column = table.as_column();
  PadResult result;
  {
    py::gil_scoped_release nogil;
    result = pad(column, options);
  }
  return py::make_tuple(std::move(result.values), std::move(result.lengths));
}

// A tensor that exports itself through the Arrow PyCapsule interface. Each
// __arrow_c_array__ call produces a fresh (zero-copy) export.
class TensorExport {
 public:
  TensorExport(at::Tensor tensor, bool fixed_size_list)
      : tensor_(std::move(tensor)), options_{fixed_size_list} {}

  py::tuple arrow_c_array(py::object requested_schema) const {
    // A requested schema may be ignored (the consumer casts); we export our type.
    auto* schema = static_cast<ArrowSchema*>(std::calloc(1, sizeof(ArrowSchema)));
    auto* array = static_cast<ArrowArray*>(std::calloc(1, sizeof(ArrowArray)));
    if (schema == nullptr || array == nullptr) {
      std::free(schema);
      std::free(array);
      throw std::bad_alloc();
    }
    // Capsules own the structs from here on, including on the error path.
    py::capsule schema_capsule(schema, "arrow_schema", &destroy_schema);
    py::capsule array_capsule(array, "arrow_array", &destroy_array);
    {
      py::gil_scoped_release nogil;
      export_tensor(tensor_, options_, schema, array);
    }
    return py::make_tuple(schema_capsule, array_capsule);
  }

  const at::Tensor& tensor() const { return tensor_; }

 private:
  static void destroy_schema(PyObject* capsule) {
    auto* schema = static_cast<ArrowSchema*>(PyCapsule_GetPointer(capsule, "arrow_schema"));
    if (schema != nullptr && schema->release != nullptr) {
      schema->release(schema);
    }
    std::free(schema);
  }
  static void destroy_array(PyObject* capsule) {
    auto* array = static_cast<ArrowArray*>(PyCapsule_GetPointer(capsule, "arrow_array"));
    if (array != nullptr && array->release != nullptr) {
      array->release(array);
    }
    std::free(array);
  }

  at::Tensor tensor_;
  ExportOptions options_;
};

// ---- models and the engine ----

std::vector<std::string> string_list(py::handle value, const char* what) {
  if (py::isinstance<py::str>(value)) {
    return {value.cast<std::string>()};
  }
  try {
    return value.cast<std::vector<std::string>>();
  } catch (const py::cast_error&) {
    throw py::type_error(std::string(what) + ": expected a column name or a list of names");
  }
}

std::optional<at::ScalarType> optional_dtype(py::handle value) {
  if (value.is_none()) return std::nullopt;
  return value.cast<at::ScalarType>();
}

// One Input spec from the Python layer's dict (torchspark.engine.Input).
InputSpec parse_spec(py::handle item) {
  py::dict spec = py::reinterpret_borrow<py::dict>(item);
  InputSpec out;
  out.kind = parse_input_kind(spec["kind"].cast<std::string>());
  out.columns = string_list(spec["columns"], "Input.columns");
  // dtype, nulls and fill mean the same for every kind: parsed once, as to_tensor's.
  out.tensor = tensor_options(optional_dtype(spec["dtype"]), spec["nulls"].cast<std::string>(),
                              spec["fill"], "indices", std::nullopt);
  out.gather.dtype = out.tensor.dtype.value_or(at::kFloat);
  out.gather.nulls = out.tensor.nulls;
  out.gather.fill = out.tensor.fill;
  out.pad.dtype = out.tensor.dtype;
  out.pad.nulls = out.tensor.nulls;
  out.pad.pad_value = to_scalar(spec["pad_value"], "Input.pad_value");
  if (!spec["max_len"].is_none()) out.pad.max_len = spec["max_len"].cast<int64_t>();
  return out;
}

py::dict latency_dict(const LatencySummary& s) {
  py::dict d;
  d["count"] = s.count;
  d["mean_ms"] = s.mean_s * 1e3;
  d["p50_ms"] = s.p50_s * 1e3;
  d["p90_ms"] = s.p90_s * 1e3;
  d["p99_ms"] = s.p99_s * 1e3;
  d["max_ms"] = s.max_s * 1e3;
  return d;
}

py::tuple outputs_tuple(const ModelOutputs& outputs) {
  return py::make_tuple(outputs.names, outputs.tensors);
}

// The engine as Python sees it: every call that may hand back finished
// requests' Arrow data destroys it here, on the calling (GIL-holding) thread.
class PyEngine {
 public:
  PyEngine(std::shared_ptr<const Model> model, EngineOptions options, py::object specs)
      : engine_(std::make_shared<Engine>(std::move(model), std::move(options))) {
    if (!specs.is_none()) {
      for (py::handle item : specs) specs_.push_back(parse_spec(item));
    }
  }

  // One submission of tensors or of an Arrow batch: with `try_inline`, run
  // inline and returned as (names, tensors) when Engine::try_run_inline
  // takes it; else queued and returned as its Request.
  py::object run_tensors(std::vector<at::Tensor> tensors, bool try_inline, bool partial) {
    collect_garbage();
    Inputs inputs;
    for (at::Tensor& t : tensors) {
      InputSource source;
      // The engine never records autograd history.
      source.tensor = t.requires_grad() ? t.detach() : std::move(t);
      inputs.sources.push_back(std::move(source));
    }
    return run_or_submit(std::move(inputs), nullptr, try_inline, partial);
  }

  py::object run_arrow(py::handle obj, bool try_inline, bool partial) {
    collect_garbage();
    if (specs_.empty()) {
      throw py::value_error(engine_->model().label() +
                            ": Arrow input needs inputs=[Input(...), ...] on the Engine");
    }
    auto table = std::make_shared<ImportedTable>(import_arrow(obj, "batch"));
    Inputs inputs;
    {
      py::gil_scoped_release nogil;
      inputs = make_inputs(*table, specs_);
    }
    // The table (the Arrow data) is the keepalive: destroyed here, never on a worker.
    return run_or_submit(std::move(inputs), std::static_pointer_cast<void>(table), try_inline,
                         partial);
  }

  bool inline_possible() const { return engine_->inline_possible(); }

  void flush() { engine_->flush(); }

  void close(bool drain) {
    {
      py::gil_scoped_release nogil;
      engine_->close(drain);
    }
    collect_garbage();
  }

  bool closed() const { return engine_->closed(); }

  py::dict stats() {
    collect_garbage();
    EngineStats s = engine_->stats();
    py::dict d;
    d["requests"] = s.requests;
    d["rows"] = s.rows;
    d["batches"] = s.batches;
    d["mean_batch_rows"] = s.mean_batch_rows;
    d["padding_ratio"] = s.padding_ratio;
    d["errors"] = s.errors;
    d["retries"] = s.retries;
    d["inline_batches"] = s.inline_batches;
    d["queue"] = latency_dict(s.queue);
    d["stage"] = latency_dict(s.stage);
    d["compute"] = latency_dict(s.compute);
    d["end_to_end"] = latency_dict(s.end_to_end);
    return d;
  }

  void collect_garbage() { engine_->take_garbage(); }

 private:
  py::object run_or_submit(Inputs inputs, std::shared_ptr<void> keepalive, bool try_inline,
                           bool partial) {
    std::optional<ModelOutputs> outputs;
    if (try_inline) {
      py::gil_scoped_release nogil;
      outputs = engine_->try_run_inline(inputs, partial);
    }
    // Inputs, keepalive and outputs of an inline run end here, with the GIL.
    if (outputs) return outputs_tuple(*outputs);
    std::shared_ptr<Request> request;
    {
      py::gil_scoped_release nogil;
      request = engine_->submit(std::move(inputs), std::move(keepalive));
    }
    return py::cast(std::move(request));
  }

  std::shared_ptr<Engine> engine_;
  std::vector<InputSpec> specs_;
};

py::tuple request_result(Request& request) {
  ModelOutputs outputs;
  {
    py::gil_scoped_release nogil;
    outputs = request.take_result();
  }
  return outputs_tuple(outputs);
}

void bind_engine(py::module_& m) {
  py::class_<Model, std::shared_ptr<Model>>(m, "Model")
      .def_property_readonly("format",
                             [](const Model& model) { return format_name(model.format()); })
      .def_property_readonly("path", &Model::path)
      .def_property_readonly("input_names", &Model::input_names)
      .def("__repr__", [](const Model& model) { return "<torchspark " + model.label() + ">"; });

  m.def(
      "load_model",
      [](const std::string& path, const at::Device& device, int64_t num_runners) {
        ModelOptions options;
        options.device = device;
        options.num_runners = num_runners;
        py::gil_scoped_release nogil;
        return std::const_pointer_cast<Model>(load_model(path, options));
      },
      py::arg("path"), py::arg("device"), py::arg("num_runners") = 1);
  m.def("detect_format", [](const std::string& path) { return format_name(detect_format(path)); });

  py::class_<Request, std::shared_ptr<Request>>(m, "Request")
      .def_property_readonly("id", &Request::id)
      .def_property_readonly("rows", &Request::rows)
      .def("done", &Request::done)
      .def(
          "wait",
          [](const Request& request, double timeout) {
            py::gil_scoped_release nogil;
            return request.wait(timeout);
          },
          py::arg("timeout") = -1.0)
      .def("result", &request_result);

  py::class_<PyEngine>(m, "Engine")
      .def(py::init([](std::shared_ptr<Model> model, const at::Device& device, int64_t batch_size,
                       int64_t max_tokens, double max_delay_ms, const std::string& precision,
                       int64_t threads, int64_t inflight, bool static_batch, int64_t sort_window,
                       double inline_below_us, bool per_token_all,
                       std::vector<int64_t> per_token_indices,
                       std::vector<std::string> per_token_names, py::object specs) {
             EngineOptions options;
             options.device = device;
             options.batch_size = batch_size;
             options.max_tokens = max_tokens;
             options.max_delay_ms = max_delay_ms;
             options.precision = parse_precision(precision);
             options.threads = threads;
             options.inflight = inflight;
             options.static_batch = static_batch;
             options.sort_window = sort_window;
             options.inline_below_seconds = inline_below_us * 1e-6;
             options.per_token.all = per_token_all;
             options.per_token.indices = std::move(per_token_indices);
             options.per_token.names = std::move(per_token_names);
             return std::make_unique<PyEngine>(std::move(model), std::move(options),
                                               std::move(specs));
           }),
           py::arg("model"), py::arg("device"), py::arg("batch_size"), py::arg("max_tokens"),
           py::arg("max_delay_ms"), py::arg("precision"), py::arg("threads"), py::arg("inflight"),
           py::arg("static_batch"), py::arg("sort_window"), py::arg("inline_below_us"),
           py::arg("per_token_all"), py::arg("per_token_indices"), py::arg("per_token_names"),
           py::arg("specs"))
      .def("run_tensors", &PyEngine::run_tensors, py::arg("tensors"), py::arg("try_inline"),
           py::arg("partial"))
      .def("run_arrow", &PyEngine::run_arrow, py::arg("batch"), py::arg("try_inline"),
           py::arg("partial"))
      .def_property_readonly("inline_possible", &PyEngine::inline_possible)
      .def("flush", &PyEngine::flush)
      .def("close", &PyEngine::close, py::arg("drain") = true)
      .def_property_readonly("closed", &PyEngine::closed)
      .def("stats", &PyEngine::stats)
      .def("collect_garbage", &PyEngine::collect_garbage);
}

}  // namespace
}  // namespace torchspark

PYBIND11_MODULE(_C, m) {
  using namespace torchspark;
  m.doc() = "torchspark native core (private: use the torchspark package)";
  m.attr("TORCH_VERSION") = TORCHSPARK_TORCH_VERSION;
  py::register_local_exception_translator(&translate);

  m.def("_set_error_types", &set_error_types, py::arg("unsupported_type"), py::arg("invalid_arrow"),
        py::arg("null_value"), py::arg("model"), py::arg("engine_closed"));
  bind_engine(m);
  m.def("to_tensor", &py_to_tensor, py::arg("obj"), py::arg("dtype") = py::none(),
        py::arg("nulls") = "error", py::arg("fill") = 0, py::arg("dictionary") = "indices",
        py::arg("shape") = py::none());
  m.def("to_tensors", &py_to_tensors, py::arg("obj"), py::arg("columns") = py::none(),
        py::arg("dtype") = py::none(), py::arg("nulls") = "error", py::arg("fill") = 0,
        py::arg("dictionary") = "indices", py::arg("shape") = py::none());
  m.def("gather", &py_gather, py::arg("obj"), py::arg("columns") = py::none(),
        py::arg("dtype") = at::kFloat, py::arg("nulls") = "error", py::arg("fill") = 0,
        py::arg("out") = py::none());
  m.def("pad", &py_pad, py::arg("obj"), py::arg("max_len") = py::none(), py::arg("pad_value") = 0,
        py::arg("dtype") = py::none(), py::arg("nulls") = "error");

  py::class_<TensorExport>(m, "TensorExport")
      .def(py::init<at::Tensor, bool>(), py::arg("tensor"), py::arg("fixed_size_list") = false)
      .def("__arrow_c_array__", &TensorExport::arrow_c_array,
           py::arg("requested_schema") = py::none())
      .def_property_readonly("tensor", &TensorExport::tensor);
}
