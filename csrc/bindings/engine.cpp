// The engine: EngineOptions (by field name), input specs, Engine and Request.
// Every call that may hand back finished requests' Arrow data destroys it
// here, on the calling (GIL-holding) thread.
#include <torch/csrc/utils/pybind.h>

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <vector>

#include "bindings/common.h"
#include "torchspark/engine/engine.h"
#include "torchspark/inputs/input_spec.h"

namespace torchspark {
namespace {

// An input option's Python value (None, bool, int, float, str, torch.dtype,
// or a list of numbers or of strings).
OptionValue to_option(py::handle value, const std::string& key) {
  if (value.is_none()) return std::monostate{};
  if (py::isinstance<py::bool_>(value)) return value.cast<bool>();
  if (py::isinstance<py::int_>(value)) return value.cast<int64_t>();
  if (py::isinstance<py::float_>(value)) return value.cast<double>();
  if (py::isinstance<py::str>(value)) return value.cast<std::string>();
  if (THPDtype_Check(value.ptr())) return value.cast<at::ScalarType>();
  if (py::isinstance<py::list>(value) || py::isinstance<py::tuple>(value)) {
    py::sequence items = py::reinterpret_borrow<py::sequence>(value);
    if (py::len(items) > 0 && py::isinstance<py::str>(items[0])) {
      return items.cast<std::vector<std::string>>();
    }
    return items.cast<std::vector<double>>();
  }
  throw py::type_error("input option '" + key +
                       "': expected None, a bool, int, float, str, torch.dtype or a list, got " +
                       py::str(py::type::of(value)).cast<std::string>());
}

// One input spec from the Python layer: {"kind", "columns", "options"}.
InputSpec parse_spec(py::handle item) {
  py::dict spec = py::reinterpret_borrow<py::dict>(item);
  InputSpec out;
  out.kind = spec["kind"].cast<std::string>();
  out.columns = string_list(spec["columns"], "Input.columns");
  for (auto option : py::reinterpret_borrow<py::dict>(spec["options"])) {
    const std::string key = option.first.cast<std::string>();
    out.options.emplace(key, to_option(option.second, key));
  }
  check_spec(out);
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

py::dict histogram_dict(const HistogramSnapshot& h) {
  py::dict d;
  d["bounds"] = h.bounds;
  d["counts"] = h.counts;
  d["sum"] = h.sum;
  return d;
}

py::tuple outputs_tuple(const ModelOutputs& outputs) {
  return py::make_tuple(outputs.names, outputs.tensors);
}

class PyEngine {
 public:
  PyEngine(std::shared_ptr<const Model> model, const EngineOptions& options, py::object specs)
      : engine_(std::make_shared<Engine>(std::move(model), options)) {
    if (!specs.is_none()) {
      for (py::handle item : specs) specs_.push_back(parse_spec(item));
    }
  }

  // One submission of tensors: with `try_inline`, run inline and returned as
  // (names, tensors) when Engine::run_inline takes it; else queued and
  // returned as its Request.
  py::object run_tensors(std::vector<at::Tensor> tensors, bool try_inline) {
    collect_garbage();
    Inputs inputs;
    for (at::Tensor& t : tensors) {
      // The engine never records autograd history.
      inputs.sources.push_back(tensor_source(t.requires_grad() ? t.detach() : std::move(t)));
    }
    return run_or_submit(std::move(inputs), nullptr, try_inline);
  }

  py::object run_arrow(py::handle obj, bool try_inline) {
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
    return run_or_submit(std::move(inputs), std::static_pointer_cast<void>(table), try_inline);
  }

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
    d["token_budget"] = s.token_budget;
    d["token_budget_tuning"] = s.token_budget_tuning;
    py::list trials;
    for (const TokenBudget::Trial& t : s.token_budget_trials) {
      py::dict trial;
      trial["max_tokens"] = t.budget;
      trial["batches"] = t.batches;
      trial["tokens_per_s"] = t.tokens_per_second();
      trials.append(trial);
    }
    d["token_budget_trials"] = trials;
    d["errors"] = s.errors;
    d["retries"] = s.retries;
    d["inline_batches"] = s.inline_batches;
    d["queue"] = latency_dict(s.queue);
    d["stage"] = latency_dict(s.stage);
    d["compute"] = latency_dict(s.compute);
    d["end_to_end"] = latency_dict(s.end_to_end);
    return d;
  }

  py::dict histograms() const {
    const EngineHistograms h = engine_->histograms();
    py::dict d;
    d["queue"] = histogram_dict(h.queue);
    d["stage"] = histogram_dict(h.stage);
    d["compute"] = histogram_dict(h.compute);
    d["end_to_end"] = histogram_dict(h.end_to_end);
    d["batch_rows"] = histogram_dict(h.batch_rows);
    return d;
  }

  void collect_garbage() { engine_->take_garbage(); }

 private:
  py::object run_or_submit(Inputs inputs, std::shared_ptr<void> keepalive, bool try_inline) {
    std::optional<ModelOutputs> outputs;
    if (try_inline) {
      py::gil_scoped_release nogil;
      outputs = engine_->run_inline(inputs);
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

// The tensors `specs` make of an Arrow batch, as the model would receive
// them in one batch (padded inputs at their longest row): the engine's own
// conversion, for callers that need the tensors themselves (an export's
// example inputs).
std::vector<at::Tensor> input_tensors(py::handle obj, py::object specs) {
  std::vector<InputSpec> parsed;
  for (py::handle item : specs) parsed.push_back(parse_spec(item));
  ImportedTable table = import_arrow(obj, "batch");
  std::vector<at::Tensor> tensors;
  {
    py::gil_scoped_release nogil;
    Inputs inputs = make_inputs(table, parsed);
    for (const InputSourcePtr& source : inputs.sources) {
      if (source->tensor().defined()) {
        tensors.push_back(source->tensor().clone());  // not a view of the Arrow batch
        continue;
      }
      std::vector<int64_t> sizes{source->rows()};
      const std::vector<int64_t> row = source->row_shape();
      sizes.insert(sizes.end(), row.begin(), row.end());
      at::Tensor dst = at::empty(
          sizes, at::TensorOptions().dtype(source->dtype()).memory_format(source->memory_format()));
      source->stage_into(0, source->rows(), at::Tensor(), dst);
      tensors.push_back(std::move(dst));
    }
  }
  return tensors;
}

py::tuple request_result(Request& request) {
  ModelOutputs outputs;
  {
    py::gil_scoped_release nogil;
    outputs = request.take_result();
  }
  return outputs_tuple(outputs);
}

// EngineOptions(**fields): each keyword sets the field of that name; an
// unknown name or a value of the wrong type is a TypeError naming the field.
EngineOptions options_from_kwargs(py::object self, const py::kwargs& fields) {
  for (auto item : fields) {
    const std::string name = item.first.cast<std::string>();
    if (!py::hasattr(self, name.c_str())) {
      py::list known;
      for (py::handle attr : py::module_::import("builtins").attr("dir")(self)) {
        const std::string a = attr.cast<std::string>();
        if (a.rfind("_", 0) != 0 && a != "validate") known.append(attr);
      }
      throw py::type_error("EngineOptions: unknown option '" + name + "'; expected some of " +
                           py::str(known).cast<std::string>());
    }
    try {
      self.attr(name.c_str()) = item.second;
    } catch (py::error_already_set& e) {
      if (!e.matches(PyExc_TypeError)) throw;  // a value out of range keeps its own message
      throw py::type_error("EngineOptions." + name + ": cannot take " +
                           py::repr(item.second).cast<std::string>() + " (" +
                           py::str(py::type::of(item.second)).cast<std::string>() + ")");
    }
  }
  return self.cast<EngineOptions>();
}

}  // namespace

void bind_engine(py::module_& m) {
  py::class_<EngineOptions>(m, "EngineOptions")
      .def(py::init<>())
      .def(py::init([](const py::kwargs& fields) {
        py::object self = py::cast(EngineOptions());
        return options_from_kwargs(self, fields);
      }))
      .def_readwrite("device", &EngineOptions::device)
      .def_readwrite("batch_size", &EngineOptions::batch_size)
      .def_readwrite("max_tokens", &EngineOptions::max_tokens)
      .def_readwrite("max_delay_ms", &EngineOptions::max_delay_ms)
      .def_property(
          "precision",
          [](const EngineOptions& o) { return std::string(precision_name(o.precision)); },
          [](EngineOptions& o, const std::string& name) { o.precision = parse_precision(name); })
      .def_readwrite("threads", &EngineOptions::threads)
      .def_readwrite("inflight", &EngineOptions::inflight)
      .def_readwrite("static_batch", &EngineOptions::static_batch)
      .def_readwrite("sort_window", &EngineOptions::sort_window)
      .def_readwrite("per_token_all", &EngineOptions::per_token_all)
      .def_readwrite("per_token_indices", &EngineOptions::per_token_indices)
      .def_readwrite("per_token_names", &EngineOptions::per_token_names)
      .def_readwrite("inline_below_ms", &EngineOptions::inline_below_ms)
      .def("validate", &validate_options);

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
      .def(py::init<std::shared_ptr<Model>, const EngineOptions&, py::object>(), py::arg("model"),
           py::arg("options"), py::arg("specs") = py::none())
      .def("run_tensors", &PyEngine::run_tensors, py::arg("tensors"), py::arg("try_inline"))
      .def("run_arrow", &PyEngine::run_arrow, py::arg("batch"), py::arg("try_inline"))
      .def("flush", &PyEngine::flush)
      .def("close", &PyEngine::close, py::arg("drain") = true)
      .def_property_readonly("closed", &PyEngine::closed)
      .def("stats", &PyEngine::stats)
      .def("histograms", &PyEngine::histograms)
      .def("collect_garbage", &PyEngine::collect_garbage);
  m.def("input_kinds", &input_kinds);
  m.def("input_tensors", &input_tensors, py::arg("batch"), py::arg("specs"));
}

}  // namespace torchspark
