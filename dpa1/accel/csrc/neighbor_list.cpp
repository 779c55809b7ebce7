// The bookkeeping after vesin's pair search (neighbor.py, frame_neighbors): pairs sorted by centre
// then distance, truncated to the nnei nearest, periodic images made into extended atoms.
//
// The same result as the NumPy code it replaces (argsort, bincount, np.unique on the images),
// which took ~4 of the neighbour list's ~6 ms at 192 atoms; here it is one pass plus small sorts.
//
// Inputs (npair rows): centre i and neighbour j (local indices), lattice shift s (npair, 3) and
// distance d. Outputs: nlist (nloc, nnei) of extended indices, −1 padded, nearest first (ties in
// input order, as a stable sort); and the images: ghost_j (nghost,), ghost_s (nghost, 3), the
// distinct (j, s) with s ≠ 0 among the kept pairs in lexicographic order, image k being extended
// atom nloc + k.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <numeric>
#include <vector>

namespace {

using at::Tensor;

std::vector<Tensor> sorted_nlist(const Tensor& i_t, const Tensor& j_t, const Tensor& s_t, const Tensor& d_t,
                                 int64_t nloc, int64_t nnei) {
  const int64_t np = i_t.numel();
  TORCH_CHECK(i_t.scalar_type() == at::kLong && j_t.scalar_type() == at::kLong && s_t.scalar_type() == at::kLong &&
                  d_t.scalar_type() == at::kDouble,
              "dpa1::sorted_nlist: i, j, s must be int64 and d float64");
  TORCH_CHECK(j_t.numel() == np && d_t.numel() == np && s_t.dim() == 2 && s_t.size(0) == np && s_t.size(1) == 3,
              "dpa1::sorted_nlist: i, j, d must be (npair,) and s (npair, 3)");
  const Tensor ic = i_t.contiguous(), jc = j_t.contiguous(), sc = s_t.contiguous(), dc = d_t.contiguous();
  const int64_t* i = ic.data_ptr<int64_t>();
  const int64_t* j = jc.data_ptr<int64_t>();
  const int64_t* s = sc.data_ptr<int64_t>();
  const double* d = dc.data_ptr<double>();
  // pairs grouped by centre (a counting sort), then each centre's by (distance, input order)
  std::vector<int64_t> start(nloc + 1, 0);
  for (int64_t p = 0; p < np; ++p) {
    TORCH_CHECK(i[p] >= 0 && i[p] < nloc && j[p] >= 0 && j[p] < nloc, "dpa1::sorted_nlist: index out of range");
    ++start[i[p] + 1];
  }
  std::partial_sum(start.begin(), start.end(), start.begin());
  std::vector<std::pair<double, int64_t>> by_d(np);
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t p = 0; p < np; ++p) by_d[fill[i[p]]++] = {d[p], p};
  }
  Tensor nlist = at::full({nloc, nnei}, -1, at::kLong);
  int64_t* nl = nlist.data_ptr<int64_t>();
  // kept pairs that are images: their pair and nlist slot
  std::vector<int64_t> ghost_pair, ghost_slot;
  std::array<int64_t, 3> lo{0, 0, 0}, hi{0, 0, 0};
  for (int64_t c = 0; c < nloc; ++c) {
    auto first = by_d.begin() + start[c], last = by_d.begin() + start[c + 1];
    std::sort(first, last);
    const int64_t kept = std::min<int64_t>(last - first, nnei);
    for (int64_t r = 0; r < kept; ++r) {
      const int64_t p = first[r].second;
      const int64_t* sp = s + 3 * p;
      if (sp[0] == 0 && sp[1] == 0 && sp[2] == 0) {
        nl[c * nnei + r] = j[p];
        continue;
      }
      for (int a = 0; a < 3; ++a) {
        lo[a] = std::min(lo[a], sp[a]);
        hi[a] = std::max(hi[a], sp[a]);
      }
      ghost_pair.push_back(p);
      ghost_slot.push_back(c * nnei + r);
    }
  }
  // distinct images (j, s0, s1, s2) in lexicographic order: a mixed-radix key per image, then a
  // dense table of the keys present (or a sort, were the table too large)
  const int64_t r0 = hi[0] - lo[0] + 1, r1 = hi[1] - lo[1] + 1, r2 = hi[2] - lo[2] + 1;
  const int64_t nj = nloc;  // j < nloc
  TORCH_CHECK(static_cast<double>(nj) * r0 * r1 * r2 < 4e18,
              "dpa1::sorted_nlist: lattice shifts too large for the image keys");
  const int64_t ng_pairs = static_cast<int64_t>(ghost_pair.size());
  std::vector<int64_t> key(ng_pairs);
  for (int64_t k = 0; k < ng_pairs; ++k) {
    const int64_t p = ghost_pair[k];
    const int64_t* sp = s + 3 * p;
    key[k] = ((j[p] * r0 + (sp[0] - lo[0])) * r1 + (sp[1] - lo[1])) * r2 + (sp[2] - lo[2]);
  }
  std::vector<int64_t> distinct;  // the distinct keys, ascending
  std::vector<int64_t> id(ng_pairs);
  const int64_t table = nj * r0 * r1 * r2;
  if (table <= 8 * ng_pairs + (1 << 16)) {
    std::vector<int64_t> slot_of(table, -1);
    for (int64_t k : key) slot_of[k] = 0;
    for (int64_t t = 0; t < table; ++t) {
      if (slot_of[t] == 0) {
        slot_of[t] = static_cast<int64_t>(distinct.size());
        distinct.push_back(t);
      }
    }
    for (int64_t k = 0; k < ng_pairs; ++k) id[k] = slot_of[key[k]];
  } else {
    distinct = key;
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    for (int64_t k = 0; k < ng_pairs; ++k) {
      id[k] = std::lower_bound(distinct.begin(), distinct.end(), key[k]) - distinct.begin();
    }
  }
  for (int64_t k = 0; k < ng_pairs; ++k) nl[ghost_slot[k]] = nloc + id[k];
  std::vector<int64_t> gj, gs;
  for (int64_t t : distinct) {
    const int64_t c2 = t % r2, rest2 = t / r2, c1 = rest2 % r1, rest1 = rest2 / r1, c0 = rest1 % r0;
    gj.push_back(rest1 / r0);
    gs.insert(gs.end(), {c0 + lo[0], c1 + lo[1], c2 + lo[2]});
  }
  const int64_t ng = static_cast<int64_t>(gj.size());
  Tensor ghost_j = at::empty({ng}, at::kLong), ghost_s = at::empty({ng, 3}, at::kLong);
  std::copy(gj.begin(), gj.end(), ghost_j.data_ptr<int64_t>());
  std::copy(gs.begin(), gs.end(), ghost_s.data_ptr<int64_t>());
  return {nlist, ghost_j, ghost_s};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dpa1, m) {
  m.def("sorted_nlist(Tensor i, Tensor j, Tensor s, Tensor d, int nloc, int nnei) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(dpa1, CPU, m) { m.impl("sorted_nlist", &sorted_nlist); }
