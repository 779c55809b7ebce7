"""Exponential-decay learning-rate schedule ``"exp"`` with optional linear warmup (docs/design.md,
"Learning rate").

Mirrors DeePMD-kit 3.x ``deepmd/dpmodel/utils/learning_rate.py::LearningRateExp``: same
validation, same ``decay_steps`` auto-adjustment, same float64 arithmetic, so the rates agree
bit for bit with the reference.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["ExpDecayLR"]

# Keys of the input.json "learning_rate" section (docs/design.md, "Input file") that the "exp"
# schedule reads.
_LR_KEYS = (
    "start_lr",
    "stop_lr",
    "stop_lr_ratio",
    "decay_steps",
    "decay_rate",
    "warmup_steps",
    "warmup_ratio",
    "warmup_start_factor",
    "smooth",
)
# Accepted but without effect here: "type" is checked, "scale_by_worker" is TF-only (docs/design.md,
# "Learning rate").
_LR_IGNORED = ("type", "scale_by_worker")

#: stop_lr used when neither ``stop_lr`` nor ``stop_lr_ratio`` is given (DeePMD argcheck default).
DEFAULT_STOP_LR = 5e-8


class ExpDecayLR:
    """Exponentially decaying learning rate, stepped (staircase) or smooth, after a linear warmup.

    With ``T = numb_steps - warmup_steps`` and ``tau = step - warmup_steps``::

        step <  warmup_steps: lr = w0 + (start_lr - w0) * step / warmup_steps,  w0 = factor*start_lr
        step >= warmup_steps: lr = max(start_lr * decay_rate ** e, stop_lr)
                              e = tau // decay_steps (stepped) or tau / decay_steps (smooth)

    ``decay_rate`` defaults to ``(stop_lr / start_lr) ** (decay_steps / T)``, so the rate reaches
    ``stop_lr`` at the last step.

    Parameters
    ----------
    start_lr
        Learning rate at the start of the decay phase (after warmup); must be > 0.
    numb_steps
        Total number of training steps, warmup included.
    stop_lr, stop_lr_ratio
        Final learning rate, or its ratio to ``start_lr``; mutually exclusive. Neither given:
        ``stop_lr = 5e-8``. ``stop_lr`` is also the floor of the decay phase.
    decay_steps
        Decay period in steps (> 0). If ``decay_rate`` is not given and ``decay_steps >= T``
        it is replaced by ``100`` if ``T // 10 > 100`` else ``T // 100 + 1``.
    decay_rate
        Explicit decay rate in (0, 1]; overrides the value derived from ``stop_lr``.
    warmup_steps, warmup_ratio
        Warmup length, or its ratio to ``numb_steps`` (``int(ratio * numb_steps)``); mutually
        exclusive (``warmup_steps = 0`` counts as "not given").
    warmup_start_factor
        The warmup starts from ``warmup_start_factor * start_lr``.
    smooth
        Continuous exponent ``tau / decay_steps`` instead of the staircase ``tau // decay_steps``.
    """

    start_lr: float
    stop_lr: float
    numb_steps: int
    warmup_steps: int
    warmup_start_lr: float
    decay_steps: int
    decay_rate: float
    smooth: bool

    def __init__(
        self,
        start_lr: float,
        numb_steps: int,
        stop_lr: float | None = None,
        stop_lr_ratio: float | None = None,
        decay_steps: int = 5000,
        decay_rate: float | None = None,
        warmup_steps: int = 0,
        warmup_ratio: float | None = None,
        warmup_start_factor: float = 0.0,
        smooth: bool = False,
    ) -> None:
        if not (start_lr > 0 and math.isfinite(start_lr)):
            raise ValueError(f"start_lr ({start_lr}) must be positive and finite")
        if stop_lr is not None and stop_lr_ratio is not None:
            raise ValueError(
                f"stop_lr and stop_lr_ratio are mutually exclusive (got {stop_lr}, {stop_lr_ratio})"
            )
        if stop_lr_ratio is not None:
            stop_lr = start_lr * stop_lr_ratio
        elif stop_lr is None:
            stop_lr = DEFAULT_STOP_LR
        if warmup_steps != 0 and warmup_ratio is not None:
            raise ValueError(
                "warmup_steps and warmup_ratio are mutually exclusive "
                f"(got {warmup_steps}, {warmup_ratio})"
            )
        if warmup_ratio is not None:
            warmup_steps = int(warmup_ratio * numb_steps)
        if numb_steps < 0:
            raise ValueError(f"numb_steps ({numb_steps}) must be non-negative")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps ({warmup_steps}) must be non-negative")
        if numb_steps > 0 and warmup_steps >= numb_steps:
            raise ValueError(
                f"warmup_steps ({warmup_steps}) must be smaller than numb_steps ({numb_steps})"
            )
        if numb_steps == 0 and warmup_steps != 0:
            raise ValueError("warmup_steps must be 0 when numb_steps is 0")
        if decay_steps <= 0:
            raise ValueError(f"decay_steps ({decay_steps}) must be positive")
        if decay_rate is not None and not (0.0 < decay_rate <= 1.0):
            raise ValueError(f"decay_rate ({decay_rate}) must be in (0, 1]")

        self.start_lr = float(start_lr)
        self.stop_lr = float(stop_lr)
        self.numb_steps = int(numb_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_start_lr = float(warmup_start_factor) * self.start_lr
        self.smooth = bool(smooth)

        decay_total = self.numb_steps - self.warmup_steps  # T of docs/design.md, "Learning rate"
        if decay_rate is None and decay_steps >= decay_total:
            # A period longer than the whole decay phase would never decay: fall back to a
            # sensible period (at most 100 steps, at least 1).
            decay_steps = 100 if decay_total // 10 > 100 else decay_total // 100 + 1
        self.decay_steps = int(decay_steps)

        if decay_rate is not None:
            self.decay_rate = float(decay_rate)
        elif decay_total == 0:
            self.decay_rate = 1.0  # no decay phase at all
        else:
            # Clamp stop_lr so that stop_lr = 0 does not give log(0).
            self.decay_rate = math.exp(
                math.log(max(self.stop_lr, 1e-10) / self.start_lr)
                / (decay_total / self.decay_steps)
            )

    def value(self, step: int) -> float:
        """Learning rate used by the optimizer update of 0-based step ``step``."""
        if step < 0:
            raise ValueError(f"step ({step}) must be non-negative")
        if step < self.warmup_steps:
            # Linear ramp, not clipped at stop_lr (lr(0) = 0 with the default factor).
            frac = step / self.warmup_steps
            return self.warmup_start_lr + (self.start_lr - self.warmup_start_lr) * frac
        tau = step - self.warmup_steps
        exponent = tau / self.decay_steps if self.smooth else float(tau // self.decay_steps)
        return max(self.start_lr * self.decay_rate**exponent, self.stop_lr)

    __call__ = value

    @classmethod
    def from_config(cls, lr_cfg: Mapping[str, Any], numb_steps: int) -> ExpDecayLR:
        """Build the schedule from the ``"learning_rate"`` section of input.json (docs/design.md,
        "Input file").

        ``type`` must be ``"exp"`` (or absent); ``scale_by_worker`` and ``_comment*`` keys are
        ignored; any other unknown key raises ``ValueError`` (DeePMD's strict argcheck does too).
        A value of ``null`` means "use the default".
        """
        lr_type = lr_cfg.get("type", "exp")
        if lr_type not in (None, "exp"):
            raise NotImplementedError(
                f"learning_rate.type = {lr_type!r} is not supported (only 'exp')"
            )
        for key in lr_cfg:
            if key in _LR_KEYS or key in _LR_IGNORED or key.startswith("_comment"):
                continue
            hint = difflib.get_close_matches(key, _LR_KEYS, n=1)
            msg = f"unknown key learning_rate.{key}"
            raise ValueError(msg + (f"; did you mean {hint[0]!r}?" if hint else ""))
        if "start_lr" not in lr_cfg or lr_cfg["start_lr"] is None:
            raise ValueError("learning_rate.start_lr is required")

        def get(key: str, default: Any) -> Any:
            val = lr_cfg.get(key)
            return default if val is None else val

        return cls(
            start_lr=float(lr_cfg["start_lr"]),
            numb_steps=int(numb_steps),
            stop_lr=None if lr_cfg.get("stop_lr") is None else float(lr_cfg["stop_lr"]),
            stop_lr_ratio=(
                None if lr_cfg.get("stop_lr_ratio") is None else float(lr_cfg["stop_lr_ratio"])
            ),
            decay_steps=int(get("decay_steps", 5000)),
            decay_rate=None if lr_cfg.get("decay_rate") is None else float(lr_cfg["decay_rate"]),
            warmup_steps=int(get("warmup_steps", 0)),
            warmup_ratio=(
                None if lr_cfg.get("warmup_ratio") is None else float(lr_cfg["warmup_ratio"])
            ),
            warmup_start_factor=float(get("warmup_start_factor", 0.0)),
            smooth=bool(get("smooth", False)),
        )

    def __repr__(self) -> str:
        return (
            f"ExpDecayLR(start_lr={self.start_lr}, stop_lr={self.stop_lr}, "
            f"numb_steps={self.numb_steps}, decay_steps={self.decay_steps}, "
            f"decay_rate={self.decay_rate}, warmup_steps={self.warmup_steps}, "
            f"smooth={self.smooth})"
        )
