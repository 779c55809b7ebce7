// The evaluation path of the descriptor's embedding net (network.py, EmbeddingNet.along_first):
// y = N(x) and its derivative along the first input column, dy = ∂y/∂x₀, in one op.
//
// Forces need the embedding only through that column (σ = s(r)): the other columns
// are type embeddings. So the derivative is carried forward (one tangent per row, beside the
// values) instead of back-propagated: the backward is then one row dot product, ∂E/∂σ = ⟨∂E/∂y, dy⟩,
// and nothing of the layers is kept for it.
//
// Why C++: as PyTorch ops, each layer is ~8 passes over (rows, width) tensors (the bias copied
// into the product's output, tanh, the skip, their backward), and a 32-centre block's tensors do
// not fit in a core's L2. Here rows go `tile` at a time through every layer, and each layer is
// two products (values, tangents) and one fused pass over rows that sit in L2. The products are
// ATen's (MKL BLAS).
//
// Layer l: y = φ(h·W + b)·idt + skip(h), skip = h (out = in), [h, h] (out = 2·in) or 0
// (docs/design.md, "Dense layers"); its tangent: dy = φ'·(dh·W)·idt + skip(dh), with dh₀ = e₀.
// φ is tanh (φ' = 1 − φ², from the values) or another activation of activation.h (φ' comes in).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <torch/library.h>

#include "ops.h"

#include <algorithm>
#include <vector>

namespace {

using at::Tensor;

// One row of a layer: t = φ(h·W + b), φ' (dv; null for tanh: 1 − t²) and ta (dh·W, or W's first
// row) in, y and dy out.
template <typename T>
void layer_row(const T* t, const T* dv, const T* ta, const T* idt, const T* h, const T* th, int64_t in,
               int64_t out, int skip, T* y, T* dy) {
  if (dv) {
#pragma omp simd
    for (int64_t j = 0; j < out; ++j) {
      const T s = idt ? idt[j] : T(1);
      y[j] = t[j] * s;
      dy[j] = dv[j] * ta[j] * s;
    }
  } else if (idt) {
#pragma omp simd
    for (int64_t j = 0; j < out; ++j) {
      y[j] = t[j] * idt[j];
      dy[j] = (T(1) - t[j] * t[j]) * ta[j] * idt[j];
    }
  } else {
#pragma omp simd
    for (int64_t j = 0; j < out; ++j) {
      y[j] = t[j];
      dy[j] = (T(1) - t[j] * t[j]) * ta[j];
    }
  }
  for (int64_t half = 0; half < skip; ++half) {  // [h, h]: the input added to each half
    T* yh = y + half * in;
    T* dyh = dy + half * in;
#pragma omp simd
    for (int64_t k = 0; k < in; ++k) {
      yh[k] += h[k];
      dyh[k] += th[k];
    }
  }
}

template <typename T>
std::vector<Tensor> forward_impl(const Tensor& x, at::TensorList weights, at::TensorList biases,
                                 at::TensorList idts, at::IntArrayRef skips, int64_t tile, const dpa1::Activation& act) {
  const int64_t rows = x.size(0), in0 = x.size(1);
  const int64_t nl = static_cast<int64_t>(weights.size());
  int64_t widest = in0;
  for (const auto& w : weights) widest = std::max(widest, w.size(1));
  const int64_t out = weights[nl - 1].size(1);
  const auto opt = x.options();
  Tensor y = at::empty({rows, out}, opt);
  Tensor dy = at::empty({rows, out}, opt);
  tile = std::max<int64_t>(1, std::min(tile, rows));
  const int64_t ntiles = (rows + tile - 1) / tile;
  // Tiles are independent: side by side on the intra-op threads (inline on one thread).
  at::parallel_for(0, ntiles, 1, [&](int64_t tb, int64_t te) {
    at::NoGradGuard no_grad;  // a worker thread's own grad mode: the parameters may require grad
    // Ping-pong buffers for the values and tangents between layers, and the products.
    Tensor buf = at::empty({6, tile, widest}, opt);
    Tensor e0 = at::zeros({tile, in0}, opt);  // the tangent of the input: the first column
    e0.select(1, 0).fill_(1);
    T* bp = buf.data_ptr<T>();
    const int64_t slab = tile * widest;
    for (int64_t r0 = tb * tile; r0 < std::min(rows, te * tile); r0 += tile) {
      const int64_t tr = std::min(tile, rows - r0);
      Tensor h = x.narrow(0, r0, tr);
      const T* hp = h.data_ptr<T>();
      const T* thp = e0.data_ptr<T>();
      int64_t in = in0;
      for (int64_t l = 0; l < nl; ++l) {
        const Tensor& w = weights[l];
        const int64_t wo = w.size(1);
        const bool last = l == nl - 1;
        T* a = bp + 4 * slab;
        T* ta = bp + 5 * slab;
        Tensor a_t = at::from_blob(a, {tr, wo}, opt);
        // ATen's tanh (MKL's vector math where it has it) is ~5x faster than at::vec's
        if (biases[l].defined() && biases[l].numel()) {
          at::addmm_out(a_t, biases[l], h, w);
        } else {
          at::mm_out(a_t, h, w);
        }
        const Tensor d_t = act.apply_(a_t);  // tanh: undefined (1 − t² from the values)
        const T* dvp = d_t.defined() ? d_t.data_ptr<T>() : nullptr;
        const bool first = l == 0;
        if (!first) {
          Tensor ta_t = at::from_blob(ta, {tr, wo}, opt);
          at::mm_out(ta_t, at::from_blob(const_cast<T*>(thp), {tr, in}, opt), w);
        }
        T* yo = last ? y.data_ptr<T>() + r0 * out : bp + (l % 2) * 2 * slab;
        T* dyo = last ? dy.data_ptr<T>() + r0 * out : bp + (l % 2) * 2 * slab + slab;
        const T* s = idts[l].defined() && idts[l].numel() ? idts[l].data_ptr<T>() : nullptr;
        const T* w0 = w.data_ptr<T>();  // dh₀ = e₀: the first layer's tangent product is W's first row
        for (int64_t r = 0; r < tr; ++r) {
          layer_row<T>(a + r * wo, dvp ? dvp + r * wo : nullptr, first ? w0 : ta + r * wo, s, hp + r * in,
                       thp + r * in, in, wo, static_cast<int>(skips[l]), yo + r * wo, dyo + r * wo);
        }
        hp = yo;
        thp = dyo;
        in = wo;
        h = at::from_blob(const_cast<T*>(hp), {tr, in}, opt);
      }
    }
  });
  return {y, dy};
}

}  // namespace

std::vector<Tensor> dpa1::embedding_tangent(const Tensor& x, at::TensorList weights, at::TensorList biases,
                                            at::TensorList idts, at::IntArrayRef skips, int64_t tile,
                                            const dpa1::Activation& act) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "dpa1::embedding_tangent: x must be a contiguous (rows, in) tensor");
  const size_t nl = weights.size();
  TORCH_CHECK(nl > 0 && biases.size() == nl && idts.size() == nl && skips.size() == nl,
              "dpa1::embedding_tangent: one weight, bias, idt and skip per layer");
  int64_t in = x.size(1);
  for (size_t l = 0; l < nl; ++l) {
    const Tensor& w = weights[l];
    TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.size(0) == in && w.scalar_type() == x.scalar_type(),
                "dpa1::embedding_tangent: layer ", l, "'s weight must be a contiguous (", in,
                ", out) tensor of x's dtype");
    const int64_t out = w.size(1);
    for (const Tensor* t : {&biases[l], &idts[l]}) {
      TORCH_CHECK(!t->defined() || t->numel() == 0 || (t->is_contiguous() && t->numel() == out &&
                                                        t->scalar_type() == x.scalar_type()),
                  "dpa1::embedding_tangent: layer ", l, "'s bias/idt must be empty or (", out, ",)");
    }
    const int64_t skip = skips[l];
    TORCH_CHECK(skip == 0 || out == skip * in, "dpa1::embedding_tangent: layer ", l, "'s skip ", skip,
                " does not fit its widths");
    in = out;
  }
  std::vector<Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "embedding_tangent", [&] {
    result = forward_impl<scalar_t>(x, weights, biases, idts, skips, tile, act);
  });
  return result;
}

namespace {

std::vector<Tensor> embedding_tangent_op(const Tensor& x, at::TensorList weights, at::TensorList biases,
                                         at::TensorList idts, at::IntArrayRef skips, int64_t tile,
                                         c10::string_view activation) {
  return dpa1::embedding_tangent(x, weights, biases, idts, skips, tile,
                                 dpa1::Activation::parse(std::string(activation)));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dpa1, m) {
  m.def("embedding_tangent(Tensor x, Tensor[] weights, Tensor[] biases, Tensor[] idts, int[] skips, int tile, "
        "str activation) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(dpa1, CPU, m) { m.impl("embedding_tangent", &embedding_tangent_op); }
