// The evaluation path of the neighbour gated self-attention (attention.py), all layers in one
// op: the forward, and the backward of the inputs' gradients (g, the slot weights, the directions).
//
// Why C++ (measured on 192-atom water, 2 cores; docs/benchmarks.md):
// - A 32-centre block runs ~500 small ops in Python, and the threads that evaluate blocks side
//   by side (block_pool.py) wait for each other's GIL between them. An op called through
//   torch.ops runs without the GIL.
// - The elementwise work between the products (row normalisations, softmax, LayerNorm and
//   their backward) is ~half of the attention's time as separate ATen ops, each one pass
//   over memory. Here each is one pass over rows that sit in L1.
// - Centres are independent in the attention, so the op takes `group` of them at a time
//   through every layer: a group's intermediates stay in the core's L2 from op to op.
// The products stay ATen's (MKL/oneDNN BLAS).
//
// Shapes: nb centres, n slots, E = embed width (ng), H = hidden width (attn).
// Per layer, params are [w_in (E, 3H), b_in (3H), w_out (H, E), b_out (E), ln_w (E), ln_b (E)].
// The math is GatedAttentionLayer.forward's (docs/design.md, "Gated attention"). Its (n, n) tables scale/shift/gate, the
// same in every layer, are built here per group from what they are made of (build_tables): the
// slot weights w (smooth: the switches ŝ, else the mask), the directions u (dotr) and the keys'
// log-multiplicities. Their gradients are summed back to w and u (table_grads). As (nb, n, n)
// tensors they were read from memory by every layer, and their gradients written back.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "ops.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

using at::Tensor;

constexpr size_t kParamsPerLayer = dpa1::kAttentionParamsPerLayer;
constexpr size_t kSavedPerLayer = dpa1::kAttentionSavedPerLayer;  // the members of Saved
constexpr double kNormEps = 1e-12;  // F.normalize's floor on the norm

struct Layer {
  Tensor w_in, b_in, w_out, b_out, ln_w, ln_b;
};

std::vector<Layer> unpack(at::TensorList params) {
  TORCH_CHECK(params.size() % kParamsPerLayer == 0, "dpa1::attention_stack: 6 parameters per layer");
  std::vector<Layer> layers;
  for (size_t i = 0; i < params.size(); i += kParamsPerLayer) {
    for (size_t j = 0; j < kParamsPerLayer; ++j) {
      TORCH_CHECK(params[i + j].is_contiguous(), "dpa1::attention_stack: parameters must be contiguous");
    }
    layers.push_back({params[i], params[i + 1], params[i + 2], params[i + 3], params[i + 4], params[i + 5]});
  }
  return layers;
}

// What the backward needs of one layer; every tensor is (nb, ...), so a group is a narrow().
struct Saved {
  Tensor q, k, v;    // (nb, n, H) after the normalisation (q carries the scaling)
  Tensor norms;      // (nb, n, 3) |Q|, |K|, |V| before it (normalize only, else empty)
  Tensor logits;     // (nb, n, n) q·kᵀ (smooth only: for the scale's gradient, else empty)
  Tensor prob;       // (nb, n, n) softmax P (A = P·gate is recomputed: one write less per layer)
  Tensor vw;         // (nb, n, E) v·W_out (when E < H, else empty)
  Tensor yhat;       // (nb, n, E) LayerNorm's normalised input
  Tensor rstd;       // (nb, n) its 1/σ
  std::vector<Tensor> list() const { return {q, k, v, norms, logits, prob, vw, yhat, rstd}; }
  static Saved from(const Tensor* t) { return {t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8]}; }
};

template <typename T>
T* ptr(const Tensor& t, int64_t c0) {  // first element of centre c0 of a contiguous (nb, ...) tensor
  return t.data_ptr<T>() + c0 * t.stride(0);
}

// --- row kernels (rows of one group, contiguous unless a stride is given) ---------------------

// y = (x + b)·f with f = scale / max(|x + b|, eps) (normalize), else f = scale; |x + b| goes to
// norm. x (a projection's output, without its bias) is overwritten with x + b.
template <typename T>
void unit_rows(T* x, int64_t x_stride, const T* b, T* y, T* norm, int64_t norm_stride, int64_t rows, int64_t h,
               T scale, bool normalize) {
  for (int64_t r = 0; r < rows; ++r, x += x_stride, y += h) {
    T f = scale;
    if (normalize) {
      T s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < h; ++j) {
        x[j] += b[j];
        s += x[j] * x[j];
      }
      const T nrm = std::sqrt(s);
      norm[r * norm_stride] = nrm;
      f = scale / std::max(nrm, T(kNormEps));
#pragma omp simd
      for (int64_t j = 0; j < h; ++j) y[j] = x[j] * f;
    } else {
#pragma omp simd
      for (int64_t j = 0; j < h; ++j) y[j] = (x[j] + b[j]) * f;
    }
  }
}

// The input gradient of unit_rows: f·(g − ŷ(ŷ·g)), ŷ = y/scale (normalize; f·g below the floor).
template <typename T>
void unit_rows_backward(const T* g, const T* y, const T* norm, int64_t norm_stride, int64_t rows, int64_t h,
                        T scale, bool normalize, T* dx, int64_t dx_stride) {
  for (int64_t r = 0; r < rows; ++r, g += h, y += h, dx += dx_stride) {
    if (!normalize) {
#pragma omp simd
      for (int64_t j = 0; j < h; ++j) dx[j] = g[j] * scale;
      continue;
    }
    const T nrm = norm[r * norm_stride];
    const T f = scale / std::max(nrm, T(kNormEps));
    T dot = 0;
    if (nrm >= T(kNormEps)) {
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < h; ++j) dot += g[j] * y[j];
      dot /= scale * scale;
    }
#pragma omp simd
    for (int64_t j = 0; j < h; ++j) dx[j] = (g[j] - y[j] * dot) * f;
  }
}

// P = softmax(L·scale + shift) (smooth) or softmax(L + shift), A = P·gate, row by row.
template <typename T>
void softmax_rows(const T* L, const T* sc, const T* sh, const T* ga, T* P, T* A, int64_t rows, int64_t n,
                  bool smooth) {
  using Vec = at::vec::Vectorized<T>;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * n;
    T* p = P + o;
    T mx = -std::numeric_limits<T>::infinity();
    if (smooth) {
#pragma omp simd reduction(max : mx)
      for (int64_t j = 0; j < n; ++j) {
        p[j] = L[o + j] * sc[o + j] + sh[o + j];
        mx = p[j] > mx ? p[j] : mx;  // (std::max does not vectorise here)
      }
    } else {
#pragma omp simd reduction(max : mx)
      for (int64_t j = 0; j < n; ++j) {
        p[j] = L[o + j] + sh[o + j];
        mx = p[j] > mx ? p[j] : mx;
      }
    }
    at::vec::map([mx](Vec z) { return (z - Vec(mx)).exp_u20(); }, p, p, n);  // as ATen's softmax
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; ++j) s += p[j];
    const T inv = T(1) / s;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      p[j] *= inv;
      A[o + j] = p[j] * ga[o + j];
    }
  }
}

// A = P·gate over `count` elements (the backward recomputes A instead of saving it).
template <typename T>
void gated_weights(const T* P, const T* ga, T* A, int64_t count) {
#pragma omp simd
  for (int64_t j = 0; j < count; ++j) A[j] = P[j] * ga[j];
}

// Centre c's directions (n, 3) as three rows ux, uy, uz (n each), for the vector loops.
template <typename T>
void split_xyz(const T* uc, int64_t n, T* ux, T* uy, T* uz) {
  for (int64_t j = 0; j < n; ++j) {
    ux[j] = uc[3 * j];
    uy[j] = uc[3 * j + 1];
    uz[j] = uc[3 * j + 2];
  }
}

// One group's tables (m centres, (m, n, n) each), as NeighborGatedAttention.forward builds them:
// smooth: scale = w_i·w_j, shift = 20·scale − 20 + lw_j, gate = scale; else scale unused,
// shift = 0 on keys with w_j > 0 and −1e30 on the others, gate = w_i (the query mask). Then
// gate ×= u_i·u_j (dotr, u not null) and 0 on the diagonal (do_mask).
template <typename T>
void build_tables(const T* w, const T* u, const T* lw, int64_t m, int64_t n, bool smooth, bool do_mask, T* sc,
                  T* sh, T* ga, T* uxyz) {
  const T shift = T(20);  // attention.ATTNW_SHIFT
  for (int64_t c = 0; c < m; ++c, w += n) {
    T *ux = uxyz, *uy = uxyz + n, *uz = uxyz + 2 * n;
    if (u) split_xyz(u + c * n * 3, n, ux, uy, uz);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t o = (c * n + i) * n;
      const T wi = w[i];
      if (smooth) {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          const T s2 = wi * w[j];
          sc[o + j] = s2;
          sh[o + j] = s2 * shift - shift + (lw ? lw[j] : T(0));
          ga[o + j] = s2;
        }
      } else {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          sh[o + j] = w[j] > T(0) ? T(0) : T(-1e30);
          ga[o + j] = wi;
        }
      }
      if (u) {
        const T xi = ux[i], yi = uy[i], zi = uz[i];
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) ga[o + j] *= xi * ux[j] + yi * uy[j] + zi * uz[j];
      }
      if (do_mask) ga[o + i] = T(0);
    }
  }
}

// The gradients of build_tables' inputs from those of the tables (dsc, dsh only if smooth): added
// to dw (smooth) and du (dotr), (m, n) and (m, n, 3).
template <typename T>
void table_grads(const T* w, const T* u, const T* dsc, const T* dsh, const T* dga, int64_t m, int64_t n,
                 bool smooth, bool do_mask, T* dw, T* du, T* uxyz) {
  const T shift = T(20);
  for (int64_t c = 0; c < m; ++c, w += n, dw = dw ? dw + n : nullptr) {
    T *ux = uxyz, *uy = uxyz + n, *uz = uxyz + 2 * n;
    T *dux = uxyz + 3 * n, *duy = uxyz + 4 * n, *duz = uxyz + 5 * n;
    if (u) {
      split_xyz(u + c * n * 3, n, ux, uy, uz);
      std::fill(dux, dux + 3 * n, T(0));  // dux, duy, duz are consecutive
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t o = (c * n + i) * n;
      const T wi = w[i], xi = u ? ux[i] : T(0), yi = u ? uy[i] : T(0), zi = u ? uz[i] : T(0);
      T dwi = 0, dxi = 0, dyi = 0, dzi = 0;
#pragma omp simd reduction(+ : dwi, dxi, dyi, dzi)
      for (int64_t j = 0; j < n; ++j) {
        const T keep = (do_mask && j == i) ? T(0) : T(1);
        const T gram = u ? xi * ux[j] + yi * uy[j] + zi * uz[j] : T(1);
        const T dg = dga[o + j] * keep;
        const T base = smooth ? wi * w[j] : wi;
        if (smooth) {
          const T d2 = dsc[o + j] + shift * dsh[o + j] + dg * gram;  // ∂/∂(w_i·w_j)
          dwi += d2 * w[j];
          dw[j] += d2 * wi;
        }
        if (u) {
          const T dgram = dg * base;  // ∂/∂(u_i·u_j)
          dxi += dgram * ux[j];
          dyi += dgram * uy[j];
          dzi += dgram * uz[j];
          dux[j] += dgram * xi;
          duy[j] += dgram * yi;
          duz[j] += dgram * zi;
        }
      }
      if (smooth) dw[i] += dwi;
      if (u) {
        dux[i] += dxi;
        duy[i] += dyi;
        duz[i] += dzi;
      }
    }
    if (u) {
      T* dc = du + c * n * 3;
      for (int64_t j = 0; j < n; ++j) {
        dc[3 * j] += dux[j];
        dc[3 * j + 1] += duy[j];
        dc[3 * j + 2] += duz[j];
      }
    }
  }
}

// dA → dL in place, through A = P·gate and the softmax; the shared tables' gradients are
// accumulated (dgate += dA·P; smooth: dshift += dz, dscale += dz·L).
template <typename T>
void softmax_backward_rows(T* dA, const T* P, const T* ga, const T* L, const T* sc, T* dga, T* dsc, T* dsh,
                           int64_t rows, int64_t n, bool smooth) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * n;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; ++j) {
      const T da = dA[o + j];
      dga[o + j] += da * P[o + j];
      const T dp = da * ga[o + j];
      dA[o + j] = dp;
      s += dp * P[o + j];
    }
    if (smooth) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const T dz = P[o + j] * (dA[o + j] - s);
        dsh[o + j] += dz;
        dsc[o + j] += dz * L[o + j];
        dA[o + j] = dz * sc[o + j];
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) dA[o + j] = P[o + j] * (dA[o + j] - s);
    }
  }
}

// out = LayerNorm(o + ob + x)·w + b (o: the output projection without its bias ob), keeping ŷ
// and 1/σ.
template <typename T>
void add_layer_norm_rows(const T* o, const T* ob, const T* x, const T* w, const T* b, T eps, T* yhat, T* rstd,
                         T* out, int64_t rows, int64_t e) {
  for (int64_t r = 0; r < rows; ++r, o += e, x += e, yhat += e, out += e) {
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < e; ++j) {
      yhat[j] = o[j] + ob[j] + x[j];
      s += yhat[j];
    }
    const T mean = s / T(e);
    T var = 0;
#pragma omp simd reduction(+ : var)
    for (int64_t j = 0; j < e; ++j) {
      const T d = yhat[j] - mean;
      yhat[j] = d;
      var += d * d;
    }
    const T rs = T(1) / std::sqrt(var / T(e) + eps);
    rstd[r] = rs;
#pragma omp simd
    for (int64_t j = 0; j < e; ++j) {
      yhat[j] *= rs;
      out[j] = yhat[j] * w[j] + b[j];
    }
  }
}

// dy = (1/σ)·(dŷ − mean(dŷ) − ŷ·mean(dŷ·ŷ)), dŷ = dx·w.
template <typename T>
void layer_norm_backward_rows(const T* dx, const T* w, const T* yhat, const T* rstd, T* dy, int64_t rows,
                              int64_t e) {
  for (int64_t r = 0; r < rows; ++r, dx += e, yhat += e, dy += e) {
    T a = 0, c = 0;
#pragma omp simd reduction(+ : a, c)
    for (int64_t j = 0; j < e; ++j) {
      const T d = dx[j] * w[j];
      a += d;
      c += d * yhat[j];
    }
    a /= T(e);
    c /= T(e);
    const T rs = rstd[r];
#pragma omp simd
    for (int64_t j = 0; j < e; ++j) dy[j] = rs * (dx[j] * w[j] - a - yhat[j] * c);
  }
}

// --- memory ----------------------------------------------------------------------------------

// Memory kept from one call to the next, one pool per thread. What a 64-centre block saves for
// its backward (~20 MB in float32) is otherwise allocated fresh each time, and first touched
// page by page: the page faults took as long as the block's forward products (profiled at
// 192 atoms, float32). A buffer is free again once nothing else holds its storage: the saved
// tensors are released with the block's autograd graph.
class Workspace {
 public:
  // A flat tensor of `numel` elements that nothing else references.
  Tensor take(int64_t numel, const at::TensorOptions& opt) {
    Tensor* spare = nullptr;
    for (auto& b : bufs_) {
      if (b.storage().use_count() != 1) continue;
      if (b.scalar_type() == at::typeMetaToScalarType(opt.dtype()) && b.numel() >= numel) return b.narrow(0, 0, numel);
      spare = &b;
    }
    if (spare == nullptr && bufs_.size() >= kMaxBuffers) return at::empty({numel}, opt);  // not pooled
    if (spare == nullptr) spare = &bufs_.emplace_back();
    *spare = at::empty({numel}, opt);
    return spare->narrow(0, 0, numel);
  }

 private:
  static constexpr size_t kMaxBuffers = 8;
  std::vector<Tensor> bufs_;
};

thread_local Workspace workspace;

// Consecutive tensors cut from one flat buffer.
class Carver {
 public:
  Carver(int64_t numel, const at::TensorOptions& opt) : flat_(workspace.take(numel, opt)) {}
  Tensor operator()(std::initializer_list<int64_t> shape) {
    int64_t k = 1;
    for (int64_t d : shape) k *= d;
    Tensor t = flat_.narrow(0, off_, k).view(shape);
    off_ += k;
    return t;
  }

 private:
  Tensor flat_;
  int64_t off_ = 0;
};

// --- the op --------------------------------------------------------------------------------

template <typename T>
std::vector<Tensor> forward_impl(const Tensor& g, const Tensor& w, const Tensor& u, const Tensor& lw,
                                 const std::vector<Layer>& layers, double scaling, bool normalize, bool smooth,
                                 bool do_mask, double ln_eps, int64_t group) {
  const int64_t nb = g.size(0), n = g.size(1), E = g.size(2);
  const int64_t H = layers[0].w_out.size(0);
  const bool out_first = E < H;  // (A·V)·W_out = A·(V·W_out): the n×n product on E columns
  const int64_t nl = static_cast<int64_t>(layers.size());
  const auto opt = g.options();
  const int64_t per_layer = nb * n * (3 * H + (normalize ? 3 : 0) + (smooth ? 2 : 1) * n + (out_first ? E : 0) + E + 1);
  Carver keep(nl * per_layer + nb * n * E, opt);
  std::vector<Saved> saved(layers.size());
  const Tensor none = at::empty({0}, opt);
  for (auto& s : saved) {
    s.q = keep({nb, n, H});
    s.k = keep({nb, n, H});
    s.v = keep({nb, n, H});
    s.norms = normalize ? keep({nb, n, 3}) : none;
    s.logits = smooth ? keep({nb, n, n}) : none;
    s.prob = keep({nb, n, n});
    s.vw = out_first ? keep({nb, n, E}) : none;
    s.yhat = keep({nb, n, E});
    s.rstd = keep({nb, n});
  }
  Tensor out = keep({nb, n, E});
  const T* up = u.numel() ? u.data_ptr<T>() : nullptr;
  const T* lwp = lw.numel() ? lw.data_ptr<T>() : nullptr;
  const int64_t ngroups = (nb + group - 1) / group;
  // Groups are independent: side by side on the intra-op threads (inline on one thread).
  at::parallel_for(0, ngroups, 1, [&](int64_t gb, int64_t ge) {
    at::NoGradGuard no_grad;  // a worker thread's own grad mode: the parameters may require grad
    // one group's temporaries, reused by every group of this thread
    const int64_t gm = std::min(group, nb), grows = gm * n;
    Carver scratch(grows * (E + (out_first ? 0 : H) + 2 * E + 5 * n) + 6 * n, opt);
    Tensor o_buf = scratch({grows, E});
    Tensor sc_buf = scratch({grows, n}), sh_buf = scratch({grows, n}), ga_buf = scratch({grows, n});
    T* uxyz = scratch({6 * n}).data_ptr<T>();
    Tensor L_buf = scratch({grows, n}), A_buf = scratch({grows, n});
    Tensor av_buf = out_first ? none : scratch({grows, H});
    Tensor x_buf[2] = {scratch({grows, E}), scratch({grows, E})};
    for (int64_t c0 = gb * group; c0 < std::min(nb, ge * group); c0 += group) {
      const int64_t m = std::min(group, nb - c0), rows = m * n;
      Tensor x = g.narrow(0, c0, m);
      T *sc = sc_buf.data_ptr<T>(), *sh = sh_buf.data_ptr<T>(), *ga = ga_buf.data_ptr<T>();
      build_tables<T>(ptr<T>(w, c0), up ? up + c0 * n * 3 : nullptr, lwp, m, n, smooth, do_mask, sc, sh, ga, uxyz);
      for (int64_t l = 0; l < nl; ++l) {
        const Layer& p = layers[l];
        const Saved& s = saved[l];
        Tensor q = s.q.narrow(0, c0, m), k = s.k.narrow(0, c0, m), v = s.v.narrow(0, c0, m);
        // Q, K, V straight into the saved tensors, then normalised in place: no (rows, 3H) buffer
        // (a group's working set must fit the L2 cache). The biases are added by the row kernel
        // (addmm would first copy them into the output).
        const Tensor x2 = x.view({rows, E});
        const T* b_in = p.b_in.data_ptr<T>();
        T* nrm = normalize ? ptr<T>(s.norms, c0) : nullptr;
        Tensor qkv[3] = {q, k, v};
        for (int64_t part = 0; part < 3; ++part) {
          Tensor y2 = qkv[part].view({rows, H});
          at::mm_out(y2, x2, p.w_in.narrow(1, part * H, H));
          T* y = y2.data_ptr<T>();
          unit_rows<T>(y, H, b_in + part * H, y, nrm ? nrm + part : nullptr, 3, rows, H,
                       T(part == 0 ? scaling : 1.0), normalize);
        }
        Tensor L = smooth ? s.logits.narrow(0, c0, m) : L_buf.narrow(0, 0, rows).view({m, n, n});
        at::bmm_out(L, q, k.transpose(1, 2));
        Tensor A = A_buf.narrow(0, 0, rows).view({m, n, n});
        softmax_rows<T>(L.data_ptr<T>(), sc, sh, ga, ptr<T>(s.prob, c0), A.data_ptr<T>(), rows, n, smooth);
        Tensor o = o_buf.narrow(0, 0, rows);
        if (out_first) {
          Tensor vw = s.vw.narrow(0, c0, m);
          Tensor vw2 = vw.view({rows, E});
          at::mm_out(vw2, v.view({rows, H}), p.w_out);
          Tensor o3 = o.view({m, n, E});
          at::bmm_out(o3, A, vw);
        } else {
          Tensor av = av_buf.narrow(0, 0, rows).view({m, n, H});
          at::bmm_out(av, A, v);
          at::mm_out(o, av.view({rows, H}), p.w_out);
        }
        Tensor xo = (l + 1 == nl) ? out.narrow(0, c0, m) : x_buf[l % 2].narrow(0, 0, rows).view({m, n, E});
        add_layer_norm_rows<T>(o.data_ptr<T>(), p.b_out.data_ptr<T>(), x.data_ptr<T>(), p.ln_w.data_ptr<T>(),
                               p.ln_b.data_ptr<T>(), T(ln_eps), ptr<T>(s.yhat, c0), ptr<T>(s.rstd, c0),
                               xo.data_ptr<T>(), rows, E);
        x = xo;
      }
    }
  });
  std::vector<Tensor> result{out};
  for (const auto& s : saved) {
    for (const auto& t : s.list()) result.push_back(t);
  }
  return result;
}

template <typename T>
std::vector<Tensor> backward_impl(const Tensor& go, const Tensor& w, const Tensor& u, const Tensor& lw,
                                  const std::vector<Layer>& layers, const std::vector<Saved>& saved,
                                  double scaling, bool normalize, bool smooth, bool do_mask, int64_t group) {
  const int64_t nb = go.size(0), n = go.size(1), E = go.size(2);
  const int64_t H = layers[0].w_out.size(0);
  const bool out_first = E < H;
  const auto opt = go.options();
  const Tensor none = at::empty({0}, opt);
  const T* up = u.numel() ? u.data_ptr<T>() : nullptr;
  const T* lwp = lw.numel() ? lw.data_ptr<T>() : nullptr;
  Carver grads(nb * n * (E + (smooth ? 1 : 0) + (up ? 3 : 0)), opt);
  Tensor dg = grads({nb, n, E});
  Tensor dw = smooth ? grads({nb, n}) : none;
  Tensor du = up ? grads({nb, n, 3}) : none;
  if (smooth) dw.zero_();
  if (up) du.zero_();
  const int64_t ngroups = (nb + group - 1) / group;
  at::parallel_for(0, ngroups, 1, [&](int64_t gb, int64_t ge) {
    at::NoGradGuard no_grad;  // a worker thread's own grad mode: the parameters may require grad
    const int64_t gm = std::min(group, nb), grows = gm * n;
    Carver scratch(grows * (8 * n + std::max(E, H) + 3 * H + 2 * E) + 6 * n, opt);
    Tensor sc_buf = scratch({grows * n}), sh_buf = scratch({grows * n}), ga_buf = scratch({grows * n});
    Tensor dsc_buf = scratch({grows * n}), dsh_buf = scratch({grows * n}), dga_buf = scratch({grows * n});
    T* uxyz = scratch({6 * n}).data_ptr<T>();
    Tensor A_buf = scratch({grows, n}), dA_buf = scratch({grows, n}), mid_buf = scratch({grows * std::max(E, H)});
    Tensor dv_buf = scratch({grows, H}), dq_buf = scratch({grows, H}), dk_buf = scratch({grows, H});
    Tensor dx_buf[2] = {scratch({grows, E}), scratch({grows, E})};
    for (int64_t c0 = gb * group; c0 < std::min(nb, ge * group); c0 += group) {
      const int64_t m = std::min(group, nb - c0), rows = m * n;
      Tensor dx = go.narrow(0, c0, m);
      T *sc = sc_buf.data_ptr<T>(), *sh = sh_buf.data_ptr<T>(), *ga = ga_buf.data_ptr<T>();
      const T* wp = ptr<T>(w, c0);
      const T* uc = up ? up + c0 * n * 3 : nullptr;
      build_tables<T>(wp, uc, lwp, m, n, smooth, do_mask, sc, sh, ga, uxyz);
      T *dsc = dsc_buf.data_ptr<T>(), *dsh = dsh_buf.data_ptr<T>(), *dga = dga_buf.data_ptr<T>();
      std::fill(dga, dga + rows * n, T(0));
      if (smooth) {
        std::fill(dsc, dsc + rows * n, T(0));
        std::fill(dsh, dsh + rows * n, T(0));
      }
      for (size_t li = layers.size(); li-- > 0;) {
        const Layer& p = layers[li];
        const Saved& s = saved[li];
        const Tensor q = s.q.narrow(0, c0, m), k = s.k.narrow(0, c0, m), v = s.v.narrow(0, c0, m);
        Tensor A = A_buf.narrow(0, 0, rows).view({m, n, n});
        gated_weights<T>(ptr<T>(s.prob, c0), ga, A.data_ptr<T>(), rows * n);
        // dy is the residual's gradient: it goes straight into this layer's input gradient, to
        // which the input projection's is then added in place
        Tensor dxi = li == 0 ? dg.narrow(0, c0, m) : dx_buf[li % 2].narrow(0, 0, rows).view({m, n, E});
        Tensor dy = dxi;
        layer_norm_backward_rows<T>(dx.data_ptr<T>(), p.ln_w.data_ptr<T>(), ptr<T>(s.yhat, c0), ptr<T>(s.rstd, c0),
                                    dy.data_ptr<T>(), rows, E);
        Tensor dA = dA_buf.narrow(0, 0, rows).view({m, n, n});
        Tensor dv = dv_buf.narrow(0, 0, rows);
        if (out_first) {
          at::bmm_out(dA, dy, s.vw.narrow(0, c0, m).transpose(1, 2));
          Tensor dvw = mid_buf.narrow(0, 0, rows * E).view({m, n, E});
          at::bmm_out(dvw, A.transpose(1, 2), dy);
          at::mm_out(dv, dvw.view({rows, E}), p.w_out.t());
        } else {
          Tensor dav = mid_buf.narrow(0, 0, rows * H).view({rows, H});
          at::mm_out(dav, dy.view({rows, E}), p.w_out.t());
          at::bmm_out(dA, dav.view({m, n, H}), v.transpose(1, 2));
          Tensor dv3 = dv.view({m, n, H});
          at::bmm_out(dv3, A.transpose(1, 2), dav.view({m, n, H}));
        }
        softmax_backward_rows<T>(dA.data_ptr<T>(), ptr<T>(s.prob, c0), ga, smooth ? ptr<T>(s.logits, c0) : nullptr,
                                 sc, dga, dsc, dsh, rows, n, smooth);
        Tensor dq = dq_buf.narrow(0, 0, rows).view({m, n, H}), dk = dk_buf.narrow(0, 0, rows).view({m, n, H});
        at::bmm_out(dq, dA, k);
        at::bmm_out(dk, dA.transpose(1, 2), q);
        // through the normalisations (in place), then the input projection added to the residual's
        // gradient (in place)
        const T* nrm = normalize ? ptr<T>(s.norms, c0) : nullptr;
        Tensor dxi2 = dxi.view({rows, E});
        const Tensor qkv[3] = {q, k, v};
        Tensor dqkv[3] = {dq.view({rows, H}), dk.view({rows, H}), dv};
        for (int64_t part = 0; part < 3; ++part) {
          T* d = dqkv[part].data_ptr<T>();
          unit_rows_backward<T>(d, qkv[part].data_ptr<T>(), nrm ? nrm + part : nullptr, 3, rows, H,
                                T(part == 0 ? scaling : 1.0), normalize, d, H);
          at::addmm_out(dxi2, dxi2, dqkv[part], p.w_in.narrow(1, part * H, H).t());
        }
        dx = dxi;
      }
      table_grads<T>(wp, uc, dsc, dsh, dga, m, n, smooth, do_mask, smooth ? ptr<T>(dw, c0) : nullptr,
                     up ? ptr<T>(du, c0) : nullptr, uxyz);
    }
  });
  return {dg, dw, du};
}

void check_inputs(const Tensor& g, const Tensor& w, const Tensor& u, const Tensor& lw, int64_t group) {
  TORCH_CHECK(g.dim() == 3 && g.is_contiguous(), "dpa1::attention_stack: g must be a contiguous (nb, n, E) tensor");
  const int64_t nb = g.size(0), n = g.size(1);
  const auto st = g.scalar_type();
  TORCH_CHECK(w.is_contiguous() && w.dim() == 2 && w.size(0) == nb && w.size(1) == n && w.scalar_type() == st,
              "dpa1::attention_stack: w must be a contiguous (nb, n) tensor of g's dtype");
  TORCH_CHECK(u.numel() == 0 || (u.is_contiguous() && u.dim() == 3 && u.size(0) == nb && u.size(1) == n &&
                                 u.size(2) == 3 && u.scalar_type() == st),
              "dpa1::attention_stack: u must be empty or a contiguous (nb, n, 3) tensor of g's dtype");
  TORCH_CHECK(lw.numel() == 0 || (lw.is_contiguous() && lw.numel() == n && lw.scalar_type() == st),
              "dpa1::attention_stack: lw must be empty or (n,) of g's dtype");
  TORCH_CHECK(group > 0, "dpa1::attention_stack: group must be positive");
}

}  // namespace

std::vector<Tensor> dpa1::attention_stack(const Tensor& g, const Tensor& w, const Tensor& u, const Tensor& lw,
                                          at::TensorList params, double scaling, bool normalize, bool smooth,
                                          bool do_mask, double ln_eps, int64_t group) {
  check_inputs(g, w, u, lw, group);
  const auto layers = unpack(params);
  TORCH_CHECK(!layers.empty(), "dpa1::attention_stack: no layers");
  std::vector<Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "attention_stack", [&] {
    result = forward_impl<scalar_t>(g, w, u, lw, layers, scaling, normalize, smooth, do_mask, ln_eps, group);
  });
  return result;
}

std::vector<Tensor> dpa1::attention_stack_backward(const Tensor& grad, const Tensor& w, const Tensor& u,
                                                   const Tensor& lw, at::TensorList params,
                                                   at::TensorList saved_list, double scaling, bool normalize,
                                                   bool smooth, bool do_mask, int64_t group) {
  const auto layers = unpack(params);
  TORCH_CHECK(!layers.empty() && saved_list.size() == layers.size() * kSavedPerLayer,
              "dpa1::attention_stack_backward: saved tensors do not match the layers");
  std::vector<Saved> saved;
  for (size_t l = 0; l < layers.size(); ++l) saved.push_back(Saved::from(&saved_list[l * kSavedPerLayer]));
  const Tensor go = grad.contiguous();
  check_inputs(go, w, u, lw, group);
  std::vector<Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(go.scalar_type(), "attention_stack_backward", [&] {
    result = backward_impl<scalar_t>(go, w, u, lw, layers, saved, scaling, normalize, smooth, do_mask, group);
  });
  return result;
}

TORCH_LIBRARY(dpa1, m) {
  m.def(
      "attention_stack(Tensor g, Tensor w, Tensor u, Tensor lw, Tensor[] params, float scaling, "
      "bool normalize, bool smooth, bool do_mask, float ln_eps, int group) -> Tensor[]");
  m.def(
      "attention_stack_backward(Tensor grad, Tensor w, Tensor u, Tensor lw, Tensor[] params, Tensor[] saved, "
      "float scaling, bool normalize, bool smooth, bool do_mask, int group) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(dpa1, CPU, m) {
  m.impl("attention_stack", &dpa1::attention_stack);
  m.impl("attention_stack_backward", &dpa1::attention_stack_backward);
}
