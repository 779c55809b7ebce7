// The activations of DeePMD-kit's networks (network.py, Activation) for the embedding and fitting
// nets of the ops, with the derivative that autograd would give for each (at a kink, the side
// PyTorch's backward takes).
//
// An op takes one as a string: "tanh", "none", "relu", "relu6", "softplus", "sigmoid", "silu",
// "gelu" (tanh approximation, as DeePMD-kit) or "silut:T" (silu below T, continued by a tanh
// above it); dpa1/accel/embedding_op.py writes it (activation_spec).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <string>

namespace dpa1 {

struct Activation {
  enum Kind { kTanh, kNone, kRelu, kRelu6, kSoftplus, kSigmoid, kSilu, kGelu, kSilut };
  Kind kind = kTanh;
  double threshold = 3.0, slope = 0.0, constant = 0.0;  // silut only

  static Activation parse(const std::string& spec) {
    const auto colon = spec.find(':');
    const std::string base = spec.substr(0, colon);
    Activation f;
    if (base == "tanh") {
      f.kind = kTanh;
    } else if (base == "none") {
      f.kind = kNone;
    } else if (base == "relu") {
      f.kind = kRelu;
    } else if (base == "relu6") {
      f.kind = kRelu6;
    } else if (base == "softplus") {
      f.kind = kSoftplus;
    } else if (base == "sigmoid") {
      f.kind = kSigmoid;
    } else if (base == "silu") {
      f.kind = kSilu;
    } else if (base == "gelu") {
      f.kind = kGelu;
    } else if (base == "silut") {
      f.kind = kSilut;
      if (colon != std::string::npos) f.threshold = std::stod(spec.substr(colon + 1));
      // silu'(T) and silu(T): the tanh branch continues silu with a continuous derivative
      const double sig = 1.0 / (1.0 + std::exp(-f.threshold));
      f.slope = sig * (1.0 + f.threshold * (1.0 - sig));
      f.constant = f.threshold * sig;
    } else {
      TORCH_CHECK(false, "dpa1: unknown activation '", spec, "'");
    }
    return f;
  }

  bool is_tanh() const { return kind == kTanh; }

  // a ← φ(a) in place; returns φ'(a) at the old a, except for tanh, whose derivative the callers
  // take from the result (1 − φ²) without another tensor: an undefined tensor then.
  at::Tensor apply_(at::Tensor& a) const {
    switch (kind) {
      case kTanh:
        at::tanh_(a);
        return {};
      case kNone:
        return at::ones_like(a);
      case kRelu: {
        at::Tensor d = a.gt(0).to(a.scalar_type());
        at::relu_(a);
        return d;
      }
      case kRelu6: {  // torch.clamp(x, 0, 6), whose gradient passes on [0, 6]
        at::Tensor d = at::logical_and(a.ge(0), a.le(6)).to(a.scalar_type());
        at::clamp_(a, 0, 6);
        return d;
      }
      case kSoftplus: {  // F.softplus: beta 1, linear above 20
        at::Tensor d = at::softplus_backward(at::ones_like(a), a, 1, 20);
        a.copy_(at::softplus(a, 1, 20));
        return d;
      }
      case kSigmoid:
        at::sigmoid_(a);
        return a * (1 - a);
      case kSilu: {
        const at::Tensor s = at::sigmoid(a);
        at::Tensor d = s * (1 + a * (1 - s));
        a.copy_(at::silu(a));
        return d;
      }
      case kGelu: {
        at::Tensor d = at::gelu_backward(at::ones_like(a), a, "tanh");
        a.copy_(at::gelu(a, "tanh"));
        return d;
      }
      case kSilut: {
        const at::Tensor below = a.lt(threshold);
        const at::Tensor s = at::sigmoid(a);
        const at::Tensor th = at::tanh(a.sub(threshold).mul_(slope));
        at::Tensor d = at::where(below, s * (1 + a * (1 - s)), (1 - th * th) * slope);
        a.copy_(at::where(below, at::silu(a), th + constant));
        return d;
      }
    }
    return {};
  }
};

}  // namespace dpa1
