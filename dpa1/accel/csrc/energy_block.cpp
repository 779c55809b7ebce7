// The evaluation path of one block of centres (energy_block.py): the descriptor (either type-embedding
// mode), the fitting net and their backward to the pair vectors, in one op with its own autograd node
// (callable from TorchScript), instead of ~45 PyTorch ops and ~80 autograd nodes around the attention
// and embedding ops (whose C++ functions this calls directly, ops.h). The nets' activations are those of
// activation.h.
//
// Why: those small ops were ~20 % of a float32 evaluation on one thread, and each one's Python
// glue holds the GIL, which the threads evaluating blocks side by side (block_pool.py) then wait
// for. Measured: 5-10 % off a 192-atom water evaluation on two threads (docs/benchmarks.md).
//
// The math is that of env_mat.py, descriptor.py and fitting.py (docs/design.md), for one block of
// nb centres and n slots, already trimmed:
//   forward:  R̃ = s(r)·(1/(r+p), r⃗/(r+p)²), R = κ·(R̃ − davg)/dstd, ŝ = s·mask·κ, u = R[1:4]/|R[1:4]|,
//             G = N_g([R₀, type rows]) (concat) or N_g(R₀)⊙(1 + N_t·ŝ) (strip, N_t given per slot),
//             G ← attention(G), T1ᵀ = (R·w_slot)ᵀ G / sel,
//             D = T1ᵀᵀ T1ᵀ[:, :na], e = FN([D, extra]);
//   backward: from ∂E/∂e (one number per centre) to g = ∂E/∂r⃗ (nb, n, 3).
// The type rows, the strip type factor N_t and `extra` (output type embedding, fparam, aparam) do
// not depend on r⃗ and come in ready; the fitting net runs in its own precision; biases and masks on e
// are applied by the caller.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops.h"

namespace {

using at::Tensor;

constexpr double kNormEps = 1e-12;  // F.normalize's floor on the norm

// A net's layers as the ops take them: [w, b, idt] per layer, b/idt empty where absent.
struct NetLayer {
  Tensor w, b, idt;
  int64_t skip;
};

std::vector<NetLayer> unpack_net(at::TensorList params, at::IntArrayRef skips, const char* what) {
  TORCH_CHECK(params.size() == 3 * skips.size() && !skips.empty(), "dpa1::energy_block: ", what,
              " needs [w, b, idt] per layer and one skip per layer");
  std::vector<NetLayer> layers;
  for (size_t l = 0; l < skips.size(); ++l) {
    layers.push_back({params[3 * l], params[3 * l + 1], params[3 * l + 2], skips[l]});
  }
  return layers;
}

bool present(const Tensor& t) { return t.defined() && t.numel() > 0; }

struct Config {
  double rcut, rcut_smth, protection;
  int64_t sel, axis_neuron, tile, group;
  double scaling, ln_eps;
  bool normalize, smooth, do_mask, dotr;
};

Config make_config(at::ArrayRef<double> geometry, at::IntArrayRef sizes, double scaling, bool normalize, bool smooth,
                   bool do_mask, bool dotr, double ln_eps) {
  TORCH_CHECK(geometry.size() == 3, "dpa1::energy_block: geometry is [rcut, rcut_smth, protection]");
  TORCH_CHECK(sizes.size() == 4, "dpa1::energy_block: sizes is [sel, axis_neuron, tile, group]");
  return {geometry[0], geometry[1], geometry[2], sizes[0], sizes[1], sizes[2], sizes[3],
          scaling,     ln_eps,      normalize,   smooth,   do_mask,  dotr};
}

// --- the environment matrix and the directions, per slot -------------------------------------

// One pair vector's distance, switch and raw environment-matrix row (env_mat.py), as the forward
// and the backward both need them: s = (1−u)³(1 + 3u + 6u²), wv = 1 − u clipped to [0, 1].
template <typename T>
struct SlotGeometry {
  T r, rp, wv, uu, sw, raw[4];
  SlotGeometry(T px, T py, T pz, T rcut, T span, T prot) {
    r = std::sqrt(px * px + py * py + pz * pz);
    rp = r + prot;
    wv = std::min(std::max((rcut - r) / span, T(0)), T(1));
    uu = T(1) - wv;
    sw = wv * wv * wv * (T(6) * uu * uu + T(3) * uu + T(1));
    const T rp2 = rp * rp;
    raw[0] = T(1) / rp;
    raw[1] = px / rp2;
    raw[2] = py / rp2;
    raw[3] = pz / rp2;
  }
};

// Of every slot: R (4), the attention's slot weight w (smooth: ŝ = s·mask·κ, else mask·κ) and the
// direction u (3).
template <typename T>
void front_forward(const Tensor& rij, const Tensor& nei, const Tensor& keep, const Tensor& davg, const Tensor& dstd,
                   const Tensor& atype, const Config& c, Tensor& rr, Tensor& w, Tensor& u) {
  const int64_t nb = rij.size(0), n = rij.size(1);
  const T* x = rij.data_ptr<T>();
  const bool* m = nei.data_ptr<bool>();
  const bool* kp = keep.data_ptr<bool>();
  const T* da = davg.data_ptr<T>();
  const T* ds = dstd.data_ptr<T>();
  const int64_t* at = atype.data_ptr<int64_t>();
  T* R = rr.data_ptr<T>();
  T* W = w.data_ptr<T>();
  T* U = u.data_ptr<T>();
  const T rcut = T(c.rcut), span = T(c.rcut - c.rcut_smth), prot = T(c.protection);
  at::parallel_for(0, nb, 8, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T* dab = da + at[b] * n * 4;
      const T* dsb = ds + at[b] * n * 4;
      for (int64_t j = 0; j < n; ++j) {
        const int64_t s = b * n + j;
        const bool real = m[s];
        // padding slots: a harmless vector beyond rcut (env_mat.py), switch 0
        const T px = real ? x[3 * s] : rcut + T(1), py = real ? x[3 * s + 1] : T(0), pz = real ? x[3 * s + 2] : T(0);
        const SlotGeometry<T> geo(px, py, pz, rcut, span, prot);
        const T sw = real ? geo.sw : T(0);
        const T kappa = kp[s] ? T(1) : T(0);
        T* Rs = R + 4 * s;
        for (int k = 0; k < 4; ++k) Rs[k] = (geo.raw[k] * sw - dab[4 * j + k]) / dsb[4 * j + k] * kappa;
        const bool kept = real && kp[s];
        W[s] = c.smooth ? (kept ? sw : T(0)) : (kept ? T(1) : T(0));
        const T nrm = std::max(std::sqrt(Rs[1] * Rs[1] + Rs[2] * Rs[2] + Rs[3] * Rs[3]), T(kNormEps));
        for (int k = 0; k < 3; ++k) U[3 * s + k] = Rs[k + 1] / nrm;
      }
    }
  });
}

// g = ∂E/∂r⃗ from ∂E/∂R (dR, 4 per slot), ∂E/∂u (du, 3, dotr) and ∂E/∂w (dw, smooth).
template <typename T>
void front_backward(const Tensor& rij, const Tensor& nei, const Tensor& keep, const Tensor& dstd, const Tensor& atype,
                    const Tensor& rr, const Tensor& u, const Tensor& dR, const Tensor& du, const Tensor& dw,
                    const Config& c, Tensor& g) {
  const int64_t nb = rij.size(0), n = rij.size(1);
  const T* x = rij.data_ptr<T>();
  const bool* m = nei.data_ptr<bool>();
  const bool* kp = keep.data_ptr<bool>();
  const T* ds = dstd.data_ptr<T>();
  const int64_t* at = atype.data_ptr<int64_t>();
  const T* R = rr.data_ptr<T>();
  const T* U = u.data_ptr<T>();
  const T* dRp = dR.data_ptr<T>();
  const T* dUp = present(du) ? du.data_ptr<T>() : nullptr;
  const T* dWp = present(dw) ? dw.data_ptr<T>() : nullptr;
  T* G = g.data_ptr<T>();
  const T rcut = T(c.rcut), span = T(c.rcut - c.rcut_smth), prot = T(c.protection);
  at::parallel_for(0, nb, 8, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T* dsb = ds + at[b] * n * 4;
      for (int64_t j = 0; j < n; ++j) {
        const int64_t s = b * n + j;
        T* gs = G + 3 * s;
        if (!m[s]) {  // padding: R does not depend on r⃗
          gs[0] = gs[1] = gs[2] = T(0);
          continue;
        }
        T d[4] = {dRp[4 * s], dRp[4 * s + 1], dRp[4 * s + 2], dRp[4 * s + 3]};
        if (dUp) {  // u = R[1:4] / max(|R[1:4]|, ε)
          const T* Rs = R + 4 * s;
          const T* us = U + 3 * s;
          const T* dus = dUp + 3 * s;
          const T nrm = std::sqrt(Rs[1] * Rs[1] + Rs[2] * Rs[2] + Rs[3] * Rs[3]);
          if (nrm >= T(kNormEps)) {
            const T dot = us[0] * dus[0] + us[1] * dus[1] + us[2] * dus[2];
            for (int k = 0; k < 3; ++k) d[k + 1] += (dus[k] - us[k] * dot) / nrm;
          } else {
            for (int k = 0; k < 3; ++k) d[k + 1] += dus[k] / T(kNormEps);
          }
        }
        const T kappa = kp[s] ? T(1) : T(0);
        const T px = x[3 * s], py = x[3 * s + 1], pz = x[3 * s + 2];
        const SlotGeometry<T> geo(px, py, pz, rcut, span, prot);
        T dsw = dWp ? dWp[s] * kappa : T(0);  // ŝ = s·mask·κ (smooth attention weights)
        T draw[4];
        for (int k = 0; k < 4; ++k) {
          const T de = d[k] * kappa / dsb[4 * j + k];  // through R = κ (R̃ − davg) / dstd
          dsw += de * geo.raw[k];
          draw[k] = de * geo.sw;
        }
        // s(u) = 1 − 10u³ + 15u⁴ − 6u⁵, u = (r − r_s)/(r_c − r_s):
        // ds/dr = −30 u² (1 − u)² / (r_c − r_s)
        const T wv = geo.wv, uu = geo.uu;
        const T dsdr = (wv > T(0) && wv < T(1)) ? -T(30) * uu * uu * wv * wv / span : T(0);
        const T rp2 = geo.rp * geo.rp;
        T dr = dsw * dsdr - draw[0] / rp2 - T(2) * (draw[1] * px + draw[2] * py + draw[3] * pz) / (rp2 * geo.rp);
        const T f = dr / geo.r;
        gs[0] = draw[1] / rp2 + f * px;
        gs[1] = draw[2] / rp2 + f * py;
        gs[2] = draw[3] / rp2 + f * pz;
      }
    }
  });
}

// --- the fitting net ------------------------------------------------------------------------------

// Hidden layers φ (with their skips and idt), the last one linear. Returns e (nb, 1); for the
// backward, each hidden layer's φ' goes to `ts` (for tanh its output, φ' = 1 − φ²).
Tensor fitting_forward(const Tensor& x, const std::vector<NetLayer>& layers, const dpa1::Activation& act,
                       std::vector<Tensor>& ts) {
  Tensor h = x;
  for (size_t l = 0; l < layers.size(); ++l) {
    const NetLayer& p = layers[l];
    Tensor a = present(p.b) ? at::addmm(p.b, h, p.w) : at::mm(h, p.w);
    if (l + 1 == layers.size()) return a;
    const Tensor d = act.apply_(a);
    ts.push_back(d.defined() ? d : a);
    Tensor y = present(p.idt) ? a * p.idt : a.clone();
    if (p.skip == 1) y.add_(h);
    if (p.skip == 2) y.add_(at::cat({h, h}, 1));
    h = y;
  }
  return h;
}

Tensor fitting_backward(const Tensor& de, const std::vector<NetLayer>& layers, const dpa1::Activation& act,
                        const std::vector<Tensor>& ts) {
  Tensor dy = de.view({-1, 1});
  for (size_t l = layers.size(); l-- > 0;) {
    const NetLayer& p = layers[l];
    if (l + 1 == layers.size()) {
      dy = at::mm(dy, p.w.t());
      continue;
    }
    const Tensor& t = ts[l];
    Tensor da = present(p.idt) ? dy * p.idt : dy.clone();
    da.mul_(act.is_tanh() ? 1 - t * t : t);
    Tensor dh = at::mm(da, p.w.t());
    const int64_t in = p.w.size(0);
    if (p.skip == 1) dh.add_(dy);
    if (p.skip == 2) dh.add_(dy.narrow(1, 0, in)).add_(dy.narrow(1, in, in));
    dy = dh;
  }
  return dy;
}

// --- the ops ---------------------------------------------------------------------------------

// saved = [rr, w, u, dy, gp, t1t, rrw, 1 + N_t·ŝ, G_s⊙N_t, the attention's saved..., the fitting's φ' per
// hidden layer (tanh: its output)...]; the two strip factors are empty in concat mode, the second also
// without smoothing.
constexpr size_t kFrontSaved = 9;

std::vector<Tensor> block_forward(const Tensor& rij, const Tensor& nei_mask, const Tensor& keep, const Tensor& davg,
                                  const Tensor& dstd, const Tensor& atype, const Tensor& type_rows,
                                  const Tensor& strip_rows, const Tensor& slot_weight, const Tensor& extra, at::TensorList emb,
                                  at::IntArrayRef emb_skips, at::TensorList attn, at::TensorList fit,
                                  at::IntArrayRef fit_skips, at::ArrayRef<double> geometry, at::IntArrayRef sizes,
                                  double scaling, bool normalize, bool smooth, bool do_mask, bool dotr,
                                  double ln_eps, const dpa1::Activation& emb_act, const dpa1::Activation& fit_act) {
  at::NoGradGuard no_grad;  // the parameters may require grad; nothing here is differentiated again
  const Config c = make_config(geometry, sizes, scaling, normalize, smooth, do_mask, dotr, ln_eps);
  TORCH_CHECK(rij.dim() == 3 && rij.size(2) == 3 && rij.is_contiguous(),
              "dpa1::energy_block: rij must be a contiguous (nb, n, 3) tensor");
  const int64_t nb = rij.size(0), n = rij.size(1);
  TORCH_CHECK(nei_mask.sizes() == at::IntArrayRef({nb, n}) && keep.sizes() == at::IntArrayRef({nb, n}) &&
                  nei_mask.scalar_type() == at::kBool && keep.scalar_type() == at::kBool && nei_mask.is_contiguous() &&
                  keep.is_contiguous(),
              "dpa1::energy_block: nei_mask and keep must be contiguous (nb, n) bool tensors");
  TORCH_CHECK(davg.dim() == 3 && davg.size(1) == n && davg.size(2) == 4 && davg.is_contiguous() &&
                  dstd.sizes() == davg.sizes() && dstd.is_contiguous(),
              "dpa1::energy_block: davg/dstd must be contiguous (ntypes, n, 4)");
  TORCH_CHECK(atype.numel() == nb && atype.scalar_type() == at::kLong && atype.is_contiguous(),
              "dpa1::energy_block: atype must be (nb,) int64");
  TORCH_CHECK(nb == 0 || (atype.min().item<int64_t>() >= 0 && atype.max().item<int64_t>() < davg.size(0)),
              "dpa1::energy_block: atype out of range of davg's ", davg.size(0), " types");
  TORCH_CHECK(type_rows.dim() == 3 && type_rows.size(0) == nb && type_rows.size(1) == n,
              "dpa1::energy_block: type_rows must be (nb, n, width)");
  const auto opt = rij.options();
  Tensor rr = at::empty({nb, n, 4}, opt), w = at::empty({nb, n}, opt), u = at::empty({nb, n, 3}, opt);
  AT_DISPATCH_FLOATING_TYPES(rij.scalar_type(), "energy_block", [&] {
    front_forward<scalar_t>(rij, nei_mask, keep, davg, dstd, atype, c, rr, w, u);
  });
  // the embedding net on [R₀, type rows], with ∂G/∂R₀
  Tensor x = at::cat({rr.narrow(2, 0, 1), type_rows.to(rij.scalar_type())}, 2).view({nb * n, -1});
  std::vector<Tensor> ew, eb, ei;
  for (const NetLayer& p : unpack_net(emb, emb_skips, "the embedding net")) {
    ew.push_back(p.w);
    eb.push_back(p.b);
    ei.push_back(p.idt);
  }
  auto e_out = dpa1::embedding_tangent(x, ew, eb, ei, emb_skips, c.tile, emb_act);
  const int64_t ng = e_out[0].size(1);
  Tensor gmat = e_out[0].view({nb, n, ng});
  Tensor dy = e_out[1];
  const Tensor empty = at::empty({0}, opt);
  Tensor onegt = empty, gsr = empty;
  if (present(strip_rows)) {  // strip: G = G_s ⊙ (1 + N_t·ŝ), ŝ only with smoothing
    TORCH_CHECK(strip_rows.sizes() == at::IntArrayRef({nb, n, ng}),
                "dpa1::energy_block: strip_rows must be (nb, n, ng) with ng the embedding width ", ng);
    const Tensor nt = strip_rows.to(rij.scalar_type());
    if (smooth) gsr = gmat * nt;
    onegt = (smooth ? nt * w.unsqueeze(2) : nt) + 1;
    gmat = gmat * onegt;
  }
  const Tensor lw = present(slot_weight) && smooth ? at::log(slot_weight) : empty;
  std::vector<Tensor> attn_saved;
  Tensor gp = gmat;
  if (!attn.empty()) {
    auto a_out = dpa1::attention_stack(gmat, w, dotr ? u : empty, lw, attn, scaling, normalize, smooth, do_mask, ln_eps,
                                       c.group);
    gp = a_out[0];
    attn_saved.assign(a_out.begin() + 1, a_out.end());
  }
  // T1ᵀ = Rᵀ G / sel (4, ng) and D = T1ᵀᵀ T1ᵀ[:, :na] (ng, na), flattened row-major
  Tensor rrw = present(slot_weight) ? rr * slot_weight.view({1, n, 1}) : rr;
  Tensor t1t = at::bmm(rrw.transpose(1, 2), gp).div_(double(c.sel));
  Tensor d = at::bmm(t1t.transpose(1, 2), t1t.narrow(2, 0, c.axis_neuron)).view({nb, -1});
  // the fitting net in its own precision (it may differ from the descriptor's)
  const auto fl = unpack_net(fit, fit_skips, "the fitting net");
  const auto fdt = fl[0].w.scalar_type();
  Tensor fx = present(extra) ? at::cat({d.to(fdt), extra.to(fdt).view({nb, -1})}, 1) : d.to(fdt);
  std::vector<Tensor> ts;
  Tensor e = fitting_forward(fx, fl, fit_act, ts);
  std::vector<Tensor> out{e.view({nb}), rr, w, u, dy, gp, t1t, rrw, onegt, gsr};
  out.insert(out.end(), attn_saved.begin(), attn_saved.end());
  out.insert(out.end(), ts.begin(), ts.end());
  return out;
}

// The forward's arguments after its tensors come again (the embedding net's are not used here).
Tensor block_backward(const Tensor& de, const Tensor& rij, const Tensor& nei_mask, const Tensor& keep,
                      const Tensor& dstd, const Tensor& atype, const Tensor& slot_weight, at::TensorList saved,
                      at::TensorList emb, at::IntArrayRef emb_skips, at::TensorList attn, at::TensorList fit,
                      at::IntArrayRef fit_skips, at::ArrayRef<double> geometry, at::IntArrayRef sizes, double scaling,
                      bool normalize, bool smooth, bool do_mask, bool dotr, double ln_eps,
                      const dpa1::Activation& fit_act) {
  at::NoGradGuard no_grad;
  const Config c = make_config(geometry, sizes, scaling, normalize, smooth, do_mask, dotr, ln_eps);
  const auto fl = unpack_net(fit, fit_skips, "the fitting net");
  const size_t n_attn = attn.size() / dpa1::kAttentionParamsPerLayer * dpa1::kAttentionSavedPerLayer;
  TORCH_CHECK(saved.size() == kFrontSaved + n_attn + (fl.size() - 1),
              "dpa1::energy_block_backward: saved tensors do not match the nets");
  const Tensor &rr = saved[0], &w = saved[1], &u = saved[2], &dy = saved[3], &gp = saved[4], &t1t = saved[5],
               &rrw = saved[6], &onegt = saved[7], &gsr = saved[8];
  const std::vector<Tensor> attn_saved(saved.begin() + kFrontSaved, saved.begin() + kFrontSaved + n_attn);
  const std::vector<Tensor> ts(saved.begin() + kFrontSaved + n_attn, saved.end());
  const int64_t nb = rij.size(0), n = rij.size(1), ng = gp.size(2), na = c.axis_neuron;
  const auto opt = rij.options();
  const Tensor empty = at::empty({0}, opt);
  Tensor dx = fitting_backward(de.to(fl[0].w.scalar_type()).contiguous(), fl, fit_act, ts);
  Tensor dd = dx.narrow(1, 0, ng * na).to(rij.scalar_type()).view({nb, ng, na});
  // D = T1ᵀᵀ·T1ᵀ[:, :na]: both factors' gradients
  Tensor dt1t = at::bmm(t1t.narrow(2, 0, na), dd.transpose(1, 2));
  dt1t.narrow(2, 0, na).add_(at::bmm(t1t, dd));
  dt1t.div_(double(c.sel));
  Tensor dgp = at::bmm(rrw, dt1t);                  // (nb, n, ng)
  Tensor dR = at::bmm(gp, dt1t.transpose(1, 2));    // (nb, n, 4)
  if (present(slot_weight)) dR.mul_(slot_weight.view({1, n, 1}));
  Tensor dg = dgp, dw = empty, du = empty;
  if (!attn.empty()) {
    const Tensor lw = present(slot_weight) && smooth ? at::log(slot_weight) : empty;
    auto grads = dpa1::attention_stack_backward(dgp, w, dotr ? u : empty, lw, attn, attn_saved, scaling, normalize,
                                                smooth, do_mask, c.group);
    dg = grads[0];
    dw = smooth ? grads[1] : empty;
    du = dotr ? grads[2] : empty;
  }
  if (present(onegt)) {  // strip: back through G = G_s ⊙ (1 + N_t·ŝ)
    if (present(gsr)) {
      Tensor dws = at::sum(dg * gsr, 2);
      dw = present(dw) ? dw + dws : dws;
    }
    dg = dg * onegt;
  }
  // the embedding net: ∂E/∂R₀ = ⟨∂E/∂G, ∂G/∂R₀⟩ per slot
  dR.select(2, 0).add_(at::sum(dg.reshape({nb * n, ng}) * dy, 1).view({nb, n}));
  Tensor g = at::empty({nb, n, 3}, opt);
  AT_DISPATCH_FLOATING_TYPES(rij.scalar_type(), "energy_block_backward", [&] {
    front_backward<scalar_t>(rij, nei_mask, keep, dstd, atype, rr, u, dR, du, dw, c, g);
  });
  return g;
}

// Rows [b, b + len) of a per-centre tensor; empty tensors (absent inputs) pass through.
Tensor rows(const Tensor& t, int64_t b, int64_t len) {
  return t.dim() <= 1 && t.numel() == 0 ? t : t.narrow(0, b, len);
}

// Chunk boundaries over nb centres: one chunk per intra-op thread, at least kMinChunk centres each.
constexpr int64_t kMinChunk = 8;
std::vector<int64_t> chunk_bounds(int64_t nb) {
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const int64_t n = std::max<int64_t>(1, std::min<int64_t>(threads, nb / kMinChunk));
  std::vector<int64_t> bounds(n + 1);
  for (int64_t i = 0; i <= n; ++i) bounds[i] = nb * i / n;
  return bounds;
}

// The block as one autograd node: its backward is block_backward, so a TorchScript module (a frozen model,
// DeePMD-kit's LAMMPS plugin) that takes forces with torch.autograd.grad runs the C++ path both ways. Only
// the pair vectors get a gradient (the parameters go in as constants), and only once: training, which
// differentiates forces again, keeps the PyTorch modules.
class EnergyBlockFunction : public torch::autograd::Function<EnergyBlockFunction> {
 public:
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& rij, const Tensor& nei_mask,
                        const Tensor& keep, const Tensor& davg, const Tensor& dstd, const Tensor& atype,
                        const Tensor& type_rows, const Tensor& strip_rows, const Tensor& slot_weight,
                        const Tensor& extra, const std::vector<Tensor>& emb, const std::vector<int64_t>& emb_skips,
                        const std::vector<Tensor>& attn, const std::vector<Tensor>& fit,
                        const std::vector<int64_t>& fit_skips, const std::vector<double>& geometry,
                        const std::vector<int64_t>& sizes, double scaling, bool normalize, bool smooth, bool do_mask,
                        bool dotr, double ln_eps, const std::string& emb_activation,
                        const std::string& fit_activation) {
    const auto emb_act = dpa1::Activation::parse(emb_activation), fit_act = dpa1::Activation::parse(fit_activation);
    // One chunk of centres per intra-op thread, each through the whole block on its own thread (the
    // ATen ops inside a parallel region run inline): what evaluation blocks side by side do in Python
    // (block_pool.py), here also for TorchScript callers, which evaluate one block at a time.
    const auto bounds = chunk_bounds(rij.size(0));
    const int64_t nchunks = static_cast<int64_t>(bounds.size()) - 1;
    std::vector<std::vector<Tensor>> outs(nchunks);
    auto run = [&](int64_t ci) {
      const int64_t b = bounds[ci], len = bounds[ci + 1] - bounds[ci];
      outs[ci] = block_forward(rows(rij, b, len), rows(nei_mask, b, len), rows(keep, b, len), davg, dstd,
                               rows(atype, b, len), rows(type_rows, b, len), rows(strip_rows, b, len), slot_weight,
                               rows(extra, b, len), emb, emb_skips, attn, fit, fit_skips, geometry, sizes, scaling,
                               normalize, smooth, do_mask, dotr, ln_eps, emb_act, fit_act);
    };
    if (nchunks == 1) {
      run(0);
    } else {
      at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
        for (int64_t ci = cb; ci < ce; ++ci) run(ci);
      });
    }
    std::vector<Tensor> energies, saved;
    std::vector<int64_t> counts;
    for (auto& o : outs) {
      energies.push_back(o[0]);
      saved.insert(saved.end(), o.begin() + 1, o.end());
      counts.push_back(static_cast<int64_t>(o.size()) - 1);
    }
    ctx->save_for_backward({rij, nei_mask, keep, dstd, atype, slot_weight});
    ctx->saved_data["saved"] = saved;
    ctx->saved_data["counts"] = counts;
    ctx->saved_data["bounds"] = bounds;
    ctx->saved_data["emb"] = emb;
    ctx->saved_data["emb_skips"] = emb_skips;
    ctx->saved_data["attn"] = attn;
    ctx->saved_data["fit"] = fit;
    ctx->saved_data["fit_skips"] = fit_skips;
    ctx->saved_data["geometry"] = geometry;
    ctx->saved_data["sizes"] = sizes;
    ctx->saved_data["scaling"] = scaling;
    ctx->saved_data["flags"] = std::vector<bool>{normalize, smooth, do_mask, dotr};
    ctx->saved_data["ln_eps"] = ln_eps;
    ctx->saved_data["fit_activation"] = fit_activation;
    return nchunks == 1 ? energies[0] : at::cat(energies);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "dpa1: the evaluation-mode energy block is differentiable once; put the model in training mode "
                "(model.train()) to differentiate forces");
    const auto in = ctx->get_saved_variables();
    const auto flags = ctx->saved_data["flags"].toBoolList();
    const auto saved = ctx->saved_data["saved"].toTensorVector();
    const auto counts = ctx->saved_data["counts"].toIntVector();
    const auto bounds = ctx->saved_data["bounds"].toIntVector();
    const auto emb = ctx->saved_data["emb"].toTensorVector(), attn = ctx->saved_data["attn"].toTensorVector(),
               fit = ctx->saved_data["fit"].toTensorVector();
    const auto emb_skips = ctx->saved_data["emb_skips"].toIntVector(),
               fit_skips = ctx->saved_data["fit_skips"].toIntVector(), sizes = ctx->saved_data["sizes"].toIntVector();
    const auto geometry = ctx->saved_data["geometry"].toDoubleVector();
    const double scaling = ctx->saved_data["scaling"].toDouble(), ln_eps = ctx->saved_data["ln_eps"].toDouble();
    const auto fit_act = dpa1::Activation::parse(ctx->saved_data["fit_activation"].toStringRef());
    const int64_t nchunks = static_cast<int64_t>(counts.size());
    std::vector<int64_t> first(nchunks + 1, 0);
    for (int64_t ci = 0; ci < nchunks; ++ci) first[ci + 1] = first[ci] + counts[ci];
    std::vector<Tensor> gs(nchunks);
    auto run = [&](int64_t ci) {
      const int64_t b = bounds[ci], len = bounds[ci + 1] - bounds[ci];
      const std::vector<Tensor> saved_c(saved.begin() + first[ci], saved.begin() + first[ci + 1]);
      gs[ci] = block_backward(rows(grads[0], b, len), rows(in[0], b, len), rows(in[1], b, len), rows(in[2], b, len),
                              in[3], rows(in[4], b, len), in[5], saved_c, emb, emb_skips, attn, fit, fit_skips,
                              geometry, sizes, scaling, flags.get(0), flags.get(1), flags.get(2), flags.get(3),
                              ln_eps, fit_act);
    };
    if (nchunks == 1) {
      run(0);
    } else {
      at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
        for (int64_t ci = cb; ci < ce; ++ci) run(ci);
      });
    }
    Tensor g = nchunks == 1 ? gs[0] : at::cat(gs);
    torch::autograd::variable_list out(25);  // one per forward argument: the pair vectors' only
    out[0] = g;
    return out;
  }
};

Tensor energy_block(const Tensor& rij, const Tensor& nei_mask, const Tensor& keep, const Tensor& davg,
                    const Tensor& dstd, const Tensor& atype, const Tensor& type_rows, const Tensor& strip_rows,
                    const Tensor& slot_weight, const Tensor& extra, at::TensorList emb, at::IntArrayRef emb_skips, at::TensorList attn,
                    at::TensorList fit, at::IntArrayRef fit_skips, at::ArrayRef<double> geometry,
                    at::IntArrayRef sizes, double scaling, bool normalize, bool smooth, bool do_mask, bool dotr,
                    double ln_eps, c10::string_view emb_activation, c10::string_view fit_activation) {
  return EnergyBlockFunction::apply(rij, nei_mask, keep, davg, dstd, atype, type_rows, strip_rows, slot_weight, extra,
                                    emb.vec(), emb_skips.vec(), attn.vec(), fit.vec(), fit_skips.vec(),
                                    geometry.vec(), sizes.vec(), scaling, normalize, smooth, do_mask, dotr, ln_eps,
                                    std::string(emb_activation), std::string(fit_activation));
}

}  // namespace

// Registered as CompositeImplicitAutograd: the kernel records its own autograd node (above).
TORCH_LIBRARY_FRAGMENT(dpa1, m) {
  m.def(
      "energy_block(Tensor rij, Tensor nei_mask, Tensor keep, Tensor davg, Tensor dstd, Tensor atype, "
      "Tensor type_rows, Tensor strip_rows, Tensor slot_weight, Tensor extra, Tensor[] emb, int[] emb_skips, Tensor[] attn, "
      "Tensor[] fit, int[] fit_skips, float[] geometry, int[] sizes, float scaling, bool normalize, bool smooth, "
      "bool do_mask, bool dotr, float ln_eps, str emb_activation, str fit_activation) -> Tensor",
      &energy_block);
}
