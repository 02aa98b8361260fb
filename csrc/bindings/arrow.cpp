// The Arrow <-> tensor functions: to_tensor, to_tensors, gather, pad, and
// TensorExport (a tensor exporting itself through the Arrow PyCapsule
// interface). The GIL is released around every conversion.
#include <torch/csrc/utils/pybind.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "bindings/common.h"
#include "torchspark/arrow/arrow_batch.h"
#include "torchspark/arrow/arrow_export.h"
#include "torchspark/arrow/arrow_owner.h"
#include "torchspark/kernels/gather.h"
#include "torchspark/kernels/pad.h"

namespace torchspark {
namespace {

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
}  // namespace

ImportedTable import_arrow(py::handle obj, const std::string& label, bool prefer_array) {
  if (py::hasattr(obj, "__arrow_c_stream__") &&
      !(prefer_array && py::hasattr(obj, "__arrow_c_array__"))) {
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

namespace {

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

// Capsule destructors: release the struct unless a consumer moved it out, then free it.
void destroy_schema(PyObject* capsule) {
  auto* schema = static_cast<ArrowSchema*>(PyCapsule_GetPointer(capsule, "arrow_schema"));
  if (schema != nullptr && schema->release != nullptr) {
    schema->release(schema);
  }
  std::free(schema);
}
void destroy_array(PyObject* capsule) {
  auto* array = static_cast<ArrowArray*>(PyCapsule_GetPointer(capsule, "arrow_array"));
  if (array != nullptr && array->release != nullptr) {
    array->release(array);
  }
  std::free(array);
}

// The (schema, array) capsule pair of the Arrow PyCapsule interface, filled
// by `fill(schema, array)` with the GIL released. The capsules own the structs
// from the start, including on the error path.
template <typename Fill>
py::tuple export_capsules(const Fill& fill) {
  auto* schema = static_cast<ArrowSchema*>(std::calloc(1, sizeof(ArrowSchema)));
  auto* array = static_cast<ArrowArray*>(std::calloc(1, sizeof(ArrowArray)));
  if (schema == nullptr || array == nullptr) {
    std::free(schema);
    std::free(array);
    throw std::bad_alloc();
  }
  py::capsule schema_capsule(schema, "arrow_schema", &destroy_schema);
  py::capsule array_capsule(array, "arrow_array", &destroy_array);
  {
    py::gil_scoped_release nogil;
    fill(schema, array);
  }
  return py::make_tuple(schema_capsule, array_capsule);
}

// A tensor that exports itself through the Arrow PyCapsule interface. Each
// __arrow_c_array__ call produces a fresh (zero-copy) export.
class TensorExport {
 public:
  TensorExport(at::Tensor tensor, bool fixed_size_list)
      : tensor_(std::move(tensor)), options_{fixed_size_list} {}

  py::tuple arrow_c_array(py::object requested_schema) const {
    // A requested schema may be ignored (the consumer casts); we export our type.
    return export_capsules([&](ArrowSchema* schema, ArrowArray* array) {
      export_tensor(tensor_, options_, schema, array);
    });
  }

  const at::Tensor& tensor() const { return tensor_; }

 private:
  at::Tensor tensor_;
  ExportOptions options_;
};

// An output batch: the passed-through columns of an imported input beside
// tensors, exporting itself through the Arrow PyCapsule interface (each call
// a fresh zero-copy export; see arrow_batch.h).
class BatchExport {
 public:
  BatchExport(py::handle input, const std::vector<std::string>& keep,
              std::vector<std::string> names, std::vector<at::Tensor> tensors) {
    TORCH_CHECK_VALUE(names.size() == tensors.size(), "record_batch: ", names.size(), " names for ",
                      tensors.size(), " tensors");
    if (!input.is_none()) {
      // One batch as one chunk, even with zero rows (a stream may yield none).
      table_ = std::make_shared<ImportedTable>(import_arrow(input, "batch", /*prefer_array=*/true));
      kept_ = table_->select(keep, "record_batch");
      rows_ = table_->num_rows();
    } else {
      TORCH_CHECK_VALUE(keep.empty(), "record_batch: columns to keep need an input batch");
      rows_ = tensors.empty() ? 0 : (tensors[0].dim() >= 1 ? tensors[0].size(0) : -1);
    }
    for (size_t i = 0; i < kept_.size(); ++i) columns_.push_back({keep[i], &kept_[i], {}});
    for (size_t i = 0; i < tensors.size(); ++i) {
      columns_.push_back({std::move(names[i]), nullptr, std::move(tensors[i])});
    }
  }

  py::tuple arrow_c_array(py::object requested_schema) const {
    return export_capsules([&](ArrowSchema* schema, ArrowArray* array) {
      export_record_batch(columns_, rows_, schema, array);
    });
  }

  int64_t rows() const { return rows_; }

 private:
  std::shared_ptr<ImportedTable> table_;
  std::vector<Column> kept_;
  std::vector<OutputColumn> columns_;
  int64_t rows_ = 0;
};

}  // namespace

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

void bind_arrow(py::module_& m) {
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

  py::class_<BatchExport>(m, "BatchExport")
      .def(py::init<py::handle, const std::vector<std::string>&, std::vector<std::string>,
                    std::vector<at::Tensor>>(),
           py::arg("batch"), py::arg("keep"), py::arg("names"), py::arg("tensors"))
      .def("__arrow_c_array__", &BatchExport::arrow_c_array,
           py::arg("requested_schema") = py::none())
      .def_property_readonly("num_rows", &BatchExport::rows);
  py::class_<TensorExport>(m, "TensorExport")
      .def(py::init<at::Tensor, bool>(), py::arg("tensor"), py::arg("fixed_size_list") = false)
      .def("__arrow_c_array__", &TensorExport::arrow_c_array,
           py::arg("requested_schema") = py::none())
      .def_property_readonly("tensor", &TensorExport::tensor);
}

}  // namespace torchspark
