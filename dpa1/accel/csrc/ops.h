// The ops of one source file that another calls directly (C++ to C++, without the dispatcher):
// energy_block.cpp runs a whole block of centres through the attention and embedding ops.
#pragma once

#include <ATen/ATen.h>

#include "activation.h"

#include <vector>

namespace dpa1 {

// attention_stack.cpp: [out, saved...] and [dg, dw, du]; per layer, params are
// [w_in, b_in, w_out, b_out, ln_w, ln_b] and the forward saves 9 tensors for the backward
constexpr size_t kAttentionParamsPerLayer = 6;
constexpr size_t kAttentionSavedPerLayer = 9;
std::vector<at::Tensor> attention_stack(const at::Tensor& g, const at::Tensor& w, const at::Tensor& u,
                                        const at::Tensor& lw, at::TensorList params, double scaling,
                                        bool normalize, bool smooth, bool do_mask, double ln_eps, int64_t group);
std::vector<at::Tensor> attention_stack_backward(const at::Tensor& grad, const at::Tensor& w, const at::Tensor& u,
                                                 const at::Tensor& lw, at::TensorList params,
                                                 at::TensorList saved_list, double scaling, bool normalize,
                                                 bool smooth, bool do_mask, int64_t group);

// embedding_net.cpp: [y, dy/dx₀]
std::vector<at::Tensor> embedding_tangent(const at::Tensor& x, at::TensorList weights, at::TensorList biases,
                                          at::TensorList idts, at::IntArrayRef skips, int64_t tile,
                                          const Activation& act);

}  // namespace dpa1
