"""Dense layers of DeePMD-kit's "native" networks (docs/design.md, "Dense layers").

One layer computes ``y = φ(x W + b)``, optionally scaled by a timestep ``idt``, with a
skip connection when the width stays equal (``y + x``) or doubles (``y + [x, x]``).
Embedding networks, the type embedding and the fitting network are chains of it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpa1.model import accel_hook

PRECISIONS = {"float64": torch.float64, "float32": torch.float32, "default": torch.float64}


def to_dtype(precision: str) -> torch.dtype:
    """Map a DeePMD ``precision`` string to a torch dtype (``default`` is float64)."""
    try:
        return PRECISIONS[precision.lower()]
    except KeyError:
        raise ValueError(
            f"precision {precision!r} is not supported; expected one of {sorted(PRECISIONS)}"
        ) from None


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float64: "float64", torch.float32: "float32"}[dtype]


ACTIVATIONS = (
    "tanh", "relu", "relu6", "softplus", "sigmoid", "silu", "gelu", "gelu_tf", "silut",
    "custom_silu", "none", "linear",
)


def parse_activation(name: str) -> tuple[str, float]:
    """Return the canonical activation name and the ``silut`` threshold (docs/design.md,
    "Dense layers")."""
    low = name.lower()
    base, _, arg = low.partition(":")
    if base not in ACTIVATIONS:
        raise ValueError(f"unknown activation_function {name!r}; expected one of {ACTIVATIONS}")
    if base == "custom_silu":
        base = "silut"
    if base == "linear":
        base = "none"
    threshold = float(arg) if arg else 3.0
    return base, threshold


class Activation(nn.Module):
    """Activation by DeePMD name; ``silut:T`` continues silu by a tanh above ``T``."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name, self.threshold = parse_activation(name)
        sig = 1.0 / (1.0 + math.exp(-self.threshold))
        # silu'(T) and silu(T) make the tanh branch continue silu with C1 continuity.
        self.slope = sig * (1.0 + self.threshold * (1.0 - sig))
        self.const = self.threshold * sig

    def forward(self, x: Tensor) -> Tensor:
        name = self.name
        if name == "tanh":
            return torch.tanh(x)
        if name == "none":
            return x
        if name == "relu":
            return F.relu(x)
        if name == "relu6":
            return torch.clamp(x, 0.0, 6.0)
        if name == "softplus":
            return F.softplus(x)
        if name == "sigmoid":
            return torch.sigmoid(x)
        if name == "silu":
            return F.silu(x)
        if name == "gelu" or name == "gelu_tf":
            return F.gelu(x, approximate="tanh")
        # silut
        return torch.where(
            x < self.threshold,
            F.silu(x),
            torch.tanh(self.slope * (x - self.threshold)) + self.const,
        )


def _add_doubled(y: Tensor, x: Tensor) -> Tensor:
    """``y + [x, x]`` without materialising the concatenation."""
    return (y.unflatten(-1, (2, x.shape[-1])) + x.unsqueeze(-2)).flatten(-2)


class Layer(nn.Module):
    """One DeePMD ``NativeLayer`` (docs/design.md, "Dense layers").

    Args:
        num_in, num_out: widths; ``w`` has shape ``(num_in, num_out)``.
        activation_function: DeePMD activation name.
        bias: whether ``b`` exists.
        use_timestep: request an ``idt`` scale; it only exists where a skip exists.
        resnet: allow the skip connection (``out == in`` or ``out == 2·in``).
    """

    def __init__(
        self,
        num_in: int,
        num_out: int,
        *,
        activation_function: str,
        bias: bool,
        use_timestep: bool,
        resnet: bool,
        dtype: torch.dtype,
        generator: torch.Generator | None = None,
        trainable: bool = True,
    ) -> None:
        super().__init__()
        self.num_in = num_in
        self.num_out = num_out
        self.activation_function = activation_function
        self.act = Activation(activation_function)
        self.resnet = resnet
        skip = resnet and (num_out == num_in or num_out == 2 * num_in)
        self.skip = 0 if not skip else (1 if num_out == num_in else 2)
        std = 1.0 / math.sqrt(num_in + num_out)
        w = torch.randn(num_in, num_out, generator=generator, dtype=torch.float64) * std
        self.w = nn.Parameter(w.to(dtype), requires_grad=trainable)
        self.b: nn.Parameter | None = None
        self.idt: nn.Parameter | None = None
        if bias:
            b = torch.randn(num_out, generator=generator, dtype=torch.float64)
            self.b = nn.Parameter(b.to(dtype), requires_grad=trainable)
        if use_timestep and self.skip:
            idt = 0.1 + 0.001 * torch.randn(num_out, generator=generator, dtype=torch.float64)
            self.idt = nn.Parameter(idt.to(dtype), requires_grad=trainable)
        self.use_timestep = use_timestep

    def forward(self, x: Tensor) -> Tensor:
        """``x (..., num_in) -> (..., num_out)``."""
        # x·w + b in one BLAS call (addmm) instead of a product and a broadcast add.
        y = F.linear(x, self.w.t(), self.b)
        y = self.act(y)
        idt = self.idt
        if idt is not None:
            y = y * idt
        if self.skip == 1:
            y = y + x
        elif self.skip == 2:
            if not torch.jit.is_scripting():
                fast = accel_hook.doubled_skip(y, x)
                if fast is not None:
                    return fast
            y = _add_doubled(y, x)
        return y


class EmbeddingNet(nn.Module):
    """A chain of residual layers ``in → neuron[0] → … → neuron[-1]`` (docs/design.md,
    "Dense layers")."""

    def __init__(
        self,
        in_dim: int,
        neuron: list[int],
        *,
        activation_function: str,
        resnet_dt: bool,
        dtype: torch.dtype,
        bias: bool = True,
        generator: torch.Generator | None = None,
        trainable: bool = True,
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.neuron = list(neuron)
        self.activation_function = activation_function
        self.resnet_dt = resnet_dt
        self.bias = bias
        widths = [in_dim] + self.neuron
        self.layers = nn.ModuleList(
            Layer(
                widths[i], widths[i + 1], activation_function=activation_function, bias=bias,
                use_timestep=resnet_dt, resnet=True, dtype=dtype, generator=generator,
                trainable=trainable,
            )
            for i in range(len(self.neuron))
        )
        # Evaluation on a CPU runs along_first (the descriptor's call) as one C++ op
        # (dpa1.accel.embedding_op); False: the PyTorch layers.
        self.native = True

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def along_first(self, first: Tensor, rest: Tensor | None = None) -> Tensor:
        """``forward(cat([first, rest], -1))`` where only ``first (..., 1)`` needs a gradient.

        In evaluation on a CPU (tanh layers) this is one C++ op that carries ``∂y/∂first``
        forward beside the values (``dpa1.accel.embedding_op``). Its backward gives ``first``'s
        gradient only, once (``rest``, the type embedding, and the parameters get none).
        """
        if not torch.jit.is_scripting():
            fast = accel_hook.embedding_along_first(self, first, rest)
            if fast is not None:
                return fast
        x = first if rest is None else torch.cat([first, rest], dim=-1)
        return self.forward(x)


class FittingNet(EmbeddingNet):
    """Hidden residual layers followed by a linear output layer with bias (docs/design.md,
    "Dense layers")."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        neuron: list[int],
        *,
        activation_function: str,
        resnet_dt: bool,
        dtype: torch.dtype,
        generator: torch.Generator | None = None,
        trainable: bool = True,
    ) -> None:
        super().__init__(
            in_dim,
            neuron,
            activation_function=activation_function,
            resnet_dt=resnet_dt,
            dtype=dtype,
            generator=generator,
            trainable=trainable,
        )
        self.out_dim = out_dim
        last = neuron[-1] if neuron else in_dim
        self.layers.append(
            Layer(
                last,
                out_dim,
                activation_function="none",
                bias=True,
                use_timestep=False,
                resnet=False,
                dtype=dtype,
                generator=generator,
                trainable=trainable,
            )
        )


class LayerNorm(nn.Module):
    """LayerNorm over the last axis with DeePMD's serialized ``w``/``b``/``eps``
    (docs/design.md, "Gated attention")."""

    def __init__(self, num: int, eps: float, trainable: bool, dtype: torch.dtype) -> None:
        super().__init__()
        self.num = num
        self.eps = eps
        self.trainable = trainable
        self.w = nn.Parameter(torch.ones(num, dtype=dtype), requires_grad=trainable)
        self.b = nn.Parameter(torch.zeros(num, dtype=dtype), requires_grad=trainable)

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, [self.num], self.w, self.b, self.eps)
