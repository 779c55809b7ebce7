"""Exponential-decay learning rate (docs/design.md, "Learning rate")."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpa1.train.lr import ExpDecayLR


def test_worked_example_of_spec() -> None:
    lr = ExpDecayLR(start_lr=1e-3, numb_steps=1_000_000, stop_lr=3.51e-8, decay_steps=5000)
    assert lr.decay_steps == 5000
    assert lr.decay_rate == pytest.approx(0.9500064099, rel=1e-10)
    for step in (0, 1, 2500, 4999):
        assert lr.value(step) == 1e-3
    assert lr.value(5000) == pytest.approx(9.500064e-4, rel=1e-6)
    assert lr.value(999_999) == pytest.approx(3.6947e-8, rel=1e-4)
    # Bit-for-bit equal to DeePMD's float64 numpy arithmetic (learning_rate.py::LearningRateExp).
    ref_rate = np.exp(np.log(3.51e-8 / 1e-3) / (1_000_000 / 5000)).item()
    assert lr.decay_rate == ref_rate
    for step in (5000, 123_456, 999_999):
        ref = max(1e-3 * np.power(np.float64(ref_rate), np.float64(step // 5000)), 3.51e-8)
        assert lr.value(step) == float(ref)


def test_decay_rate_reaches_stop_lr_at_the_end() -> None:
    # (stop/start)^(decay_steps/T): at tau = T the rate is stop_lr (smooth mode hits it exactly).
    lr = ExpDecayLR(start_lr=1e-3, numb_steps=10_000, stop_lr=1e-6, decay_steps=1000, smooth=True)
    assert lr.decay_rate == pytest.approx((1e-6 / 1e-3) ** (1000 / 10_000), rel=1e-14)
    assert lr.start_lr * lr.decay_rate ** (10_000 / 1000) == pytest.approx(1e-6, rel=1e-12)


@pytest.mark.parametrize(
    ("numb_steps", "warmup", "expected"),
    [
        (2000, 0, 100),  # T//10 = 200 > 100 -> 100
        (1000, 0, 11),  # T//10 = 100 is not > 100 -> T//100 + 1
        (500, 0, 6),  # T//10 = 50 -> T//100 + 1
        (50, 0, 1),  # T//100 + 1 = 1
        (5000, 0, 100),  # decay_steps == T also triggers the adjustment
        (1500, 1000, 6),  # T = numb_steps - warmup_steps = 500
        (5001, 0, 5000),  # decay_steps < T: kept
    ],
)
def test_decay_steps_adjustment(numb_steps: int, warmup: int, expected: int) -> None:
    lr = ExpDecayLR(1e-3, numb_steps, stop_lr=1e-8, decay_steps=5000, warmup_steps=warmup)
    assert lr.decay_steps == expected
    t = numb_steps - warmup
    assert lr.decay_rate == pytest.approx(
        math.exp(math.log(1e-8 / 1e-3) / (t / expected)), rel=1e-14
    )


def test_explicit_decay_rate_disables_adjustment_and_clips_at_stop_lr() -> None:
    lr = ExpDecayLR(1e-3, 1000, stop_lr=1e-4, decay_steps=5000, decay_rate=0.5)
    assert lr.decay_steps == 5000 and lr.decay_rate == 0.5
    lr = ExpDecayLR(1e-3, 100_000, stop_lr=1e-4, decay_steps=100, decay_rate=0.5)
    assert lr.value(100) == 5e-4
    assert lr.value(300) == 1.25e-4
    assert lr.value(400) == 1e-4  # 6.25e-5 clipped up to stop_lr
    assert lr.value(99_999) == 1e-4


def test_zero_decay_phase_has_rate_one() -> None:
    lr = ExpDecayLR(1e-3, 0, stop_lr=1e-8)
    assert lr.decay_rate == 1.0 and lr.decay_steps == 1
    assert lr.value(0) == 1e-3


def test_stepped_vs_smooth() -> None:
    kw = dict(start_lr=1e-3, numb_steps=100_000, stop_lr=1e-7, decay_steps=1000)
    stepped, smooth = ExpDecayLR(**kw), ExpDecayLR(**kw, smooth=True)
    r = stepped.decay_rate
    assert smooth.decay_rate == r
    assert stepped.value(1500) == 1e-3 * r  # staircase: floor(1500/1000) = 1
    assert smooth.value(1500) == pytest.approx(1e-3 * r**1.5, rel=1e-15)
    assert smooth.value(1000) == pytest.approx(stepped.value(1000), rel=1e-15)
    steps = np.arange(0, 100_000, 37)
    sm = np.array([smooth.value(int(s)) for s in steps])
    st = np.array([stepped.value(int(s)) for s in steps])
    assert np.all(np.diff(sm) < 0)  # strictly decreasing
    assert np.all(sm <= st + 1e-20)  # smooth is never above the staircase


def test_warmup_linear_ramp_then_decay() -> None:
    lr = ExpDecayLR(
        1e-3, 10_100, stop_lr=1e-6, decay_steps=1000, warmup_steps=100, warmup_start_factor=0.1
    )
    assert lr.warmup_steps == 100
    # T = 10000 (not 10100) sets the decay rate.
    assert lr.decay_rate == pytest.approx((1e-6 / 1e-3) ** (1000 / 10_000), rel=1e-14)
    assert lr.value(0) == pytest.approx(1e-4, rel=1e-15)
    assert lr.value(50) == pytest.approx(1e-4 + 0.9e-3 * 0.5, rel=1e-15)
    assert lr.value(99) == pytest.approx(1e-4 + 0.9e-3 * 0.99, rel=1e-15)
    assert lr.value(100) == 1e-3  # tau = 0
    assert lr.value(1099) == 1e-3
    assert lr.value(1100) == pytest.approx(1e-3 * lr.decay_rate, rel=1e-15)


def test_warmup_is_not_clipped_at_stop_lr() -> None:
    lr = ExpDecayLR(1e-3, 1000, stop_lr=1e-5, decay_steps=100, warmup_steps=10)
    assert lr.value(0) == 0.0  # default start factor 0: below stop_lr, not clipped
    assert lr.value(1) == pytest.approx(1e-4)


def test_warmup_ratio_and_stop_lr_ratio() -> None:
    lr = ExpDecayLR(2e-3, 1001, stop_lr_ratio=1e-3, decay_steps=100, warmup_ratio=0.1)
    assert lr.warmup_steps == 100  # int(0.1 * 1001)
    assert lr.stop_lr == pytest.approx(2e-6, rel=1e-15)
    assert lr.decay_rate == pytest.approx((1e-3) ** (100 / 901), rel=1e-14)


def test_default_stop_lr() -> None:
    assert ExpDecayLR(1e-3, 1000).stop_lr == 5e-8


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(stop_lr=1e-8, stop_lr_ratio=1e-5),
        dict(warmup_steps=10, warmup_ratio=0.1),
        dict(warmup_steps=1000),
        dict(decay_steps=0),
        dict(decay_rate=1.5),
        dict(decay_rate=0.0),
    ],
)
def test_invalid_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ExpDecayLR(1e-3, 1000, **kwargs)
    with pytest.raises(ValueError):
        ExpDecayLR(0.0, 1000)


def test_from_config() -> None:
    cfg = {
        "type": "exp",
        "decay_steps": 5000,
        "start_lr": 0.001,
        "stop_lr": 3.51e-08,
        "scale_by_worker": "linear",
        "_comment": "ignored",
    }
    lr = ExpDecayLR.from_config(cfg, numb_steps=50)
    assert lr.decay_steps == 1  # 5000 >= T = 50 -> 50 // 100 + 1
    assert lr.decay_rate == pytest.approx((3.51e-8 / 1e-3) ** (1 / 50), rel=1e-14)
    assert lr.value(1) == pytest.approx(1e-3 * lr.decay_rate, rel=1e-15)
    # null means default; stop_lr_ratio path.
    lr = ExpDecayLR.from_config(
        {"start_lr": 1e-3, "stop_lr": None, "stop_lr_ratio": 1e-4, "decay_rate": None}, 10_000
    )
    assert lr.stop_lr == pytest.approx(1e-7) and lr.decay_steps == 5000
    with pytest.raises(ValueError, match="did you mean 'decay_steps'"):
        ExpDecayLR.from_config({"start_lr": 1e-3, "decay_step": 10}, 100)
    with pytest.raises(NotImplementedError):
        ExpDecayLR.from_config({"type": "cosine", "start_lr": 1e-3}, 100)
    with pytest.raises(ValueError):
        ExpDecayLR.from_config({"stop_lr": 1e-8}, 100)
