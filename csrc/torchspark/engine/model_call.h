// One model call of a staged batch, with the engine's policy around it.
//
// Autograd is off (not InferenceMode: outputs go to the caller as they are,
// and inference tensors could not be modified in place outside it). When the
// model reports an error as out of memory (Model::is_out_of_memory), the
// batch is split in halves, each run (recursively) and their outputs
// concatenated, which is the unsplit result, down to one row; a static batch
// cannot be split. Runs on the calling thread, on its current stream.
#pragma once

#include <functional>
#include <vector>

#include "torchspark/models/model.h"

namespace torchspark {

// `on_split` runs once per split (for stats); `batch_index` names the batch in messages.
ModelOutputs call_model(const Model& model, const std::vector<at::Tensor>& inputs,
                        const RunContext& context, bool splittable, int64_t batch_index,
                        const std::function<void()>& on_split);

// The message of an exception, without a C++ backtrace.
std::string describe_error(const std::exception_ptr& error);

}  // namespace torchspark
