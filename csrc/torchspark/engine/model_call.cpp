#include "torchspark/engine/model_call.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>

namespace torchspark {

std::string describe_error(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown error";
  }
}

ModelOutputs call_model(const Model& model, const std::vector<at::Tensor>& inputs,
                        const RunContext& context, bool splittable, int64_t batch_index,
                        const std::function<void()>& on_split) {
  const int64_t rows = inputs.empty() ? 0 : inputs[0].size(0);
  try {
    c10::AutoGradMode no_grad(false);
    return model.forward(inputs, context);
  } catch (...) {
    std::exception_ptr error = std::current_exception();
    const bool oom = model.is_out_of_memory(error);
    if (!oom || rows <= 1 || !splittable) {
      TORCH_CHECK(!oom, model.label(), ": out of memory on ",
                  splittable ? "a single row " : "a static batch (static_batch cannot split) ",
                  "of batch ", batch_index, ": ", describe_error(error));
      std::rethrow_exception(error);
    }
  }
  // Out of memory: what the failed attempt held is released (its stack is
  // gone); run the halves and join them.
  on_split();
  const int64_t half = rows / 2;
  std::vector<at::Tensor> low, high;
  for (const at::Tensor& input : inputs) {
    low.push_back(input.narrow(0, 0, half));
    high.push_back(input.narrow(0, half, rows - half));
  }
  ModelOutputs first = call_model(model, low, context, splittable, batch_index, on_split);
  ModelOutputs second = call_model(model, high, context, splittable, batch_index, on_split);
  TORCH_CHECK(first.tensors.size() == second.tensors.size(), model.label(),
              ": the halves of split batch ", batch_index, " returned ", first.tensors.size(),
              " and ", second.tensors.size(), " outputs");
  for (size_t j = 0; j < first.tensors.size(); ++j) {
    first.tensors[j] = at::cat({first.tensors[j], second.tensors[j]}, 0);
  }
  return first;
}

}  // namespace torchspark
