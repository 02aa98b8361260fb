// Argument conversion shared by the binding files: Arrow PyCapsule import,
// Python numbers to c10::Scalar, column lists. Binding code only: no logic.
#pragma once

#include <torch/csrc/utils/pybind.h>

#include <string>
#include <vector>

#include "torchspark/arrow/arrow_import.h"

namespace torchspark {
namespace py = pybind11;

// Takes whatever the object exports through the Arrow PyCapsule interface:
// the stream when it has both (it covers chunked data), unless
// `prefer_array`. Runs with the GIL held (producers may be Python code).
// `label` names the argument in messages.
ImportedTable import_arrow(py::handle obj, const std::string& label, bool prefer_array = false);

// A Python bool, int or float as a c10::Scalar (torch's caster cannot load
// one); TypeError naming `name` otherwise.
c10::Scalar to_scalar(py::handle value, const char* name);

// A column name or a list of names.
std::vector<std::string> string_list(py::handle value, const char* what);

void bind_errors(py::module_& m);
void bind_arrow(py::module_& m);
void bind_models(py::module_& m);
void bind_engine(py::module_& m);

}  // namespace torchspark
