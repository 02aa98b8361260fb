#include "torchspark/engine/batching.h"

#include <algorithm>
#include <numeric>

namespace torchspark {

std::vector<int64_t> windowed_sort(const int64_t* keys, int64_t rows, int64_t window) {
  std::vector<int64_t> order(static_cast<size_t>(std::max<int64_t>(rows, 0)));
  std::iota(order.begin(), order.end(), 0);
  const int64_t step = window > 0 ? window : rows;
  for (int64_t w = 0; w < rows; w += step) {
    const int64_t e = std::min(rows, w + step);
    std::stable_sort(order.begin() + w, order.begin() + e,
                     [&](int64_t a, int64_t b) { return keys[a] < keys[b]; });
  }
  return order;
}

int64_t BatchShape::group_width(const std::vector<int64_t>& input_widths) const {
  if (groups.empty()) {
    int64_t width = 0;
    for (const int64_t w : input_widths) width += w;
    return width;
  }
  std::vector<int64_t> widest;
  for (size_t p = 0; p < input_widths.size() && p < groups.size(); ++p) {
    const auto g = static_cast<size_t>(groups[p]);
    if (widest.size() <= g) widest.resize(g + 1, 0);
    widest[g] = std::max(widest[g], input_widths[p]);
  }
  int64_t width = 0;
  for (const int64_t w : widest) width += w;
  return width;
}

int64_t fit_rows(BatchShape& batch, const RowLengths& rows, int64_t begin, int64_t available,
                 int64_t batch_size, int64_t max_tokens) {
  const int64_t take = std::max<int64_t>(0, std::min(available, batch_size - batch.rows));
  const size_t inputs = rows.lengths.size();
  if (inputs == 0) {
    batch.rows += take;
    return take;
  }
  batch.widths.resize(inputs, 0);
  std::vector<int64_t> candidate(inputs);
  int64_t fit = 0;
  for (; fit < take; ++fit) {
    for (size_t p = 0; p < inputs; ++p) {
      candidate[p] = std::max(batch.widths[p], std::max<int64_t>(rows.at(p, begin + fit), 1));
    }
    const int64_t width = batch.group_width(candidate);
    const int64_t joined = batch.rows + fit;
    if (max_tokens > 0 && joined > 0 && (joined + 1) * width > max_tokens) break;
    batch.widths = candidate;
  }
  batch.rows += fit;
  return fit;
}

}  // namespace torchspark
