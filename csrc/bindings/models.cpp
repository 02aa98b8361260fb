// Models: load_model, detect_format and the Model handle.
#include <torch/csrc/utils/pybind.h>

#include "bindings/common.h"
#include "torchspark/models/model_registry.h"

namespace torchspark {

void bind_models(py::module_& m) {
  py::class_<Model, std::shared_ptr<Model>>(m, "Model")
      .def_property_readonly("format", &Model::format)
      .def_property_readonly("path", &Model::path)
      .def_property_readonly("input_names", &Model::input_names)
      .def_property_readonly("supports_autocast",
                             [](const Model& model) { return model.capabilities().autocast; })
      // One model call outside an engine (export's verification): positional
      // inputs on the model's device; returns (names, tensors).
      .def(
          "forward",
          [](const Model& model, const std::vector<at::Tensor>& inputs) {
            RunContext context;
            if (!inputs.empty()) context.device = inputs.front().device();
            ModelOutputs out;
            {
              py::gil_scoped_release nogil;
              c10::InferenceMode inference;
              out = model.forward(inputs, context);
            }
            return py::make_tuple(out.names, out.tensors);
          },
          py::arg("inputs"))
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
  m.def("detect_format", &detect_format, py::arg("path"));
  m.def("model_formats", &model_formats);
}

}  // namespace torchspark
