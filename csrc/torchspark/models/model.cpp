#include "torchspark/models/model.h"

#include <ATen/core/ivalue.h>
#include <c10/util/Exception.h>

#include <new>

#include "torchspark/errors.h"

namespace torchspark {

Precision parse_precision(std::string_view name) {
  if (name == "fp32") return Precision::kFloat32;
  if (name == "bf16") return Precision::kBFloat16;
  if (name == "fp16") return Precision::kFloat16;
  TORCH_CHECK_VALUE(false, "precision: expected one of 'fp32', 'bf16', 'fp16', got '", name, "'");
  return Precision::kFloat32;
}

const char* precision_name(Precision precision) {
  switch (precision) {
    case Precision::kBFloat16: return "bf16";
    case Precision::kFloat16: return "fp16";
    case Precision::kFloat32: break;
  }
  return "fp32";
}

Model::Model(std::string format, std::string path)
    : format_(std::move(format)),
      path_(std::move(path)),
      label_(c10::str("model '", path_, "' (", format_, ")")) {}

bool Model::is_out_of_memory(const std::exception_ptr& error) const {
  try {
    std::rethrow_exception(error);
  } catch (const c10::OutOfMemoryError&) {
    return true;
  } catch (const std::bad_alloc&) {
    return true;
  } catch (const std::exception& e) {
    // TorchScript's interpreter rethrows what an op raised as a
    // std::runtime_error holding the message (torch/csrc/jit/runtime/
    // interpreter.cpp, handleError; tests/test_engine.py's out-of-memory
    // tests check it), so allocators are also recognised by their wording:
    // "CUDA out of memory" (MPS, XPU alike), the CPU allocator's "can't
    // allocate memory", std::bad_alloc's what().
    const std::string_view what = e.what();
    for (std::string_view marker : {"out of memory", "can't allocate memory", "std::bad_alloc"}) {
      if (what.find(marker) != std::string_view::npos) return true;
    }
    return false;
  } catch (...) {
    return false;
  }
}

void flatten_outputs(const c10::IValue& value, ModelOutputs& out, const std::string& label) {
  if (value.isTensor()) {
    out.tensors.push_back(value.toTensor());
    out.names.emplace_back();
  } else if (value.isTuple() || value.isList()) {
    const auto elements =
        value.isTuple() ? value.toTupleRef().elements().vec() : value.toList().vec();
    for (const c10::IValue& element : elements) {
      TS_CHECK_SUPPORTED(element.isTensor(), label,
                         ": a tuple/list output must hold tensors, got an element of type ",
                         element.tagKind());
      out.tensors.push_back(element.toTensor());
      out.names.emplace_back();
    }
  } else if (value.isGenericDict()) {
    for (const auto& item : value.toGenericDict()) {
      TS_CHECK_SUPPORTED(item.key().isString() && item.value().isTensor(), label,
                         ": a dict output must map str to tensors, got ", item.key().tagKind(),
                         " -> ", item.value().tagKind());
      out.names.push_back(item.key().toStringRef());
      out.tensors.push_back(item.value().toTensor());
    }
  } else {
    TS_CHECK_SUPPORTED(false, label,
                       ": expected the model to return a tensor, a tuple/list of tensors or a "
                       "dict of tensors, got ",
                       value.tagKind());
  }
}

}  // namespace torchspark
