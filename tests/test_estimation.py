"""Level estimation: exact with a perfect restorer, O(log T) network calls, robust to a non-unimodal residual curve,
refusals for randomness a given image does not reveal, and restoration at per-image levels."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

import colddiff.degradations as cd
from colddiff.degradations.base import Degradation
from colddiff.estimation import (
    check_estimable,
    default_grid_size,
    estimate_level,
    level_residuals,
    sample_at_levels,
)
from colddiff.sampling import sample_improved
from tests.conftest import smooth_images


def perfect_restorer(x0: torch.Tensor, y: torch.Tensor, calls: list | None = None):
    """``R(y_b, s) = x0_b`` whatever ``s``: each row is recognised among the degraded inputs ``y``."""

    def restore(x, t):
        if calls is not None:
            calls.append(x.shape[0])
        index = (x[:, None] - y[None]).flatten(2).abs().amax(2).argmin(1)
        return x0[index].clone()

    return restore


def blur_for(T: int) -> cd.GaussianBlur:
    """A blur whose total strength does not depend on T (a 32-pixel image stays distinguishable at every level)."""
    return cd.GaussianBlur(T, kernel_size=3, sigma=0.35 * math.sqrt(1000 / T))


@pytest.mark.parametrize("T", [1, 2, 10, 50])
def test_perfect_restorer_recovers_every_level_of_a_batch_exactly(T):
    blur = blur_for(T)
    x0 = smooth_images(batch=7, channels=3, size=16)
    t = torch.tensor([0, T, min(1, T), T // 2, T, 0, max(T - 1, 0)])
    y = blur(x0, t)
    estimate = estimate_level(perfect_restorer(x0, y), blur, y)
    assert estimate.levels.tolist() == t.tolist()
    assert estimate.residuals.shape == (7,) and float(estimate.residuals.max()) < 1e-6
    for curve, level in zip(estimate.curves, t.tolist()):
        assert curve[level] < 1e-6 and all(r > 1e-5 for s, r in curve.items() if s != level)


def test_other_deterministic_operators_are_recovered_exactly():
    x0 = smooth_images(batch=5, channels=3, size=16)
    for op in (cd.Desaturate(20), cd.GaussianMask(30), cd.Pixelate(4)):
        t = torch.tensor([0, 1, op.num_steps // 2, op.num_steps - 1, op.num_steps])
        y = op(x0, t)
        assert estimate_level(perfect_restorer(x0, y), op, y).levels.tolist() == t.tolist(), type(op).__name__


@pytest.mark.parametrize("T", [100, 1000, 4000])
def test_network_calls_grow_like_log_T(T):
    blur = blur_for(T)
    x0 = smooth_images(batch=6, channels=1, size=32)
    t = torch.tensor([0, 1, T // 3, T, T - 1, T // 2])
    y = blur(x0, t)
    calls: list[int] = []
    estimate = estimate_level(perfect_restorer(x0, y, calls), blur, y)
    assert estimate.levels.tolist() == t.tolist()
    log_t = math.log2(T + 1)
    # per image: the grid plus two bracketed searches, each O(log T)
    assert max(estimate.evaluations) <= default_grid_size(T + 1) + 2 * 2 * log_t
    assert max(estimate.evaluations) < 3 * log_t < T / 4
    # every call is one round for all images; the rows of all calls are exactly the evaluations
    assert len(calls) == estimate.network_calls <= 1 + 2 * log_t
    assert sum(calls) == sum(estimate.evaluations)


def test_batch_size_splits_calls_without_changing_the_result():
    blur = blur_for(40)
    x0 = smooth_images(batch=4, channels=1, size=16)
    t = torch.tensor([3, 40, 0, 17])
    y = blur(x0, t)
    calls: list[int] = []
    estimate = estimate_level(perfect_restorer(x0, y, calls), blur, y, batch_size=3)
    assert estimate.levels.tolist() == t.tolist() and max(calls) <= 3
    assert estimate.network_calls == len(calls)


class Identity(Degradation):
    """``D(x, t) = x``: with it, the residual is exactly what the crafted restorer adds."""

    def degrade(self, x0, t, params):
        return x0


def crafted(curves: torch.Tensor, calls: list | None = None):
    """A restorer whose residual for image ``b`` at level ``s`` is ``curves[b, s]`` (images are constant ``b``)."""

    def restore(x, t):
        if calls is not None:
            calls.append(x.shape[0])
        index = x[:, 0, 0, 0].round().long()
        return x + curves[index, t][:, None, None, None].to(x.dtype)

    return restore


def test_a_non_unimodal_curve_does_not_fool_the_search():
    T = 64
    s = torch.arange(T + 1, dtype=torch.float64)
    # a broad local minimum at 12 (value 2) whose grid point beats the narrow global basin's grid points; the
    # global minimum (0) at 50 lies between grid points 46 and 55
    two_basins = torch.minimum(0.5 * (s - 12).abs() + 2, 1.5 * (s - 50).abs())
    bumpy = (s - 30).abs() / 10 + 0.8 * (1 + torch.cos(s * 2 * math.pi / 9))  # ripples on a V
    local_minima = [i for i in range(1, T) if bumpy[i] < bumpy[i - 1] and bumpy[i] < bumpy[i + 1]]
    assert len(local_minima) >= 6 and int(bumpy.argmin()) == 31
    curves = torch.stack([two_basins, bumpy])
    y = torch.arange(2.0).view(2, 1, 1, 1).expand(2, 1, 4, 4).contiguous()
    op = Identity(T)
    assert level_residuals(crafted(curves), op, y).argmin(1).tolist() == [50, 31]
    estimate = estimate_level(crafted(curves), op, y)
    assert estimate.levels.tolist() == [50, 31]
    single = estimate_level(crafted(curves), op, y, starts=1)
    assert single.levels[0] == 12  # refining only the best grid point lands in the wrong basin
    full = estimate_level(crafted(curves), op, y, grid=T + 1)  # an exhaustive scan
    assert full.levels.tolist() == [50, 31] and full.evaluations == [T + 1, T + 1] and full.network_calls == 1


def test_ties_choose_the_lower_level_and_flat_curves_stay_cheap():
    T = 30
    curves = torch.zeros(1, T + 1, dtype=torch.float64)
    y = torch.zeros(1, 1, 4, 4)
    estimate = estimate_level(crafted(curves), Identity(T), y)
    assert estimate.levels.tolist() == [0]
    assert estimate.evaluations[0] <= default_grid_size(T + 1) + 2 * 2 * math.log2(T + 1)


def test_candidate_levels_restrict_the_search():
    blur = blur_for(20)
    x0 = smooth_images(batch=2, channels=1, size=16)
    y = blur(x0, torch.tensor([7, 16]))
    estimate = estimate_level(perfect_restorer(x0, y), blur, y, levels=[0, 4, 8, 12, 16, 20])
    assert estimate.levels.tolist() == [8, 16]
    assert all(set(curve) <= {0, 4, 8, 12, 16, 20} for curve in estimate.curves)


def test_estimate_is_json_ready():
    blur = blur_for(10)
    x0 = smooth_images(batch=2, channels=1, size=16)
    y = blur(x0, torch.tensor([2, 9]))
    records = estimate_level(perfect_restorer(x0, y), blur, y).to_records()
    assert [r["level"] for r in records] == [2, 9]
    again = json.loads(json.dumps(records))
    assert again[0]["curve"][0][0] == 0 and all(len(point) == 2 for point in again[1]["curve"])


@pytest.mark.parametrize("op,match", [
    (cd.GaussianMask(10, center="random"), r"GaussianMask: its masks are centred at a random pixel.*center='center'"),
    (cd.GaussianMask(10, fill="random"), r"GaussianMask: its fill colour is drawn at random"),
    (cd.Snow(10), r"Snow: the snow field and its direction are drawn at random"),
    (cd.Mix(10), r"Mix: undoing a mix needs the partner image"),
    (cd.GaussianNoise(10), r"GaussianNoise: the noise of a given image is unknown.*cannot tell levels apart"),
    (cd.Compose([cd.GaussianBlur(10), cd.GaussianNoise(10)]), r"Compose part 1: GaussianNoise"),
    (cd.Interpolation(10), r"Interpolation: every level is a blend with the observation y itself"),
])
def test_randomness_a_given_image_does_not_reveal_is_refused_by_name(op, match):
    y = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="cannot estimate the level for this degradation: " + match):
        estimate_level(lambda x, t: x, op, y)
    with pytest.raises(ValueError, match=match):
        check_estimable(op)
    with pytest.raises(ValueError, match=r"Pass params=\{'"):
        level_residuals(lambda x, t: x, op, y)


def test_the_degradation_says_what_a_given_image_does_not_reveal():
    """The knowledge lives in the operator (``unknown_params_reason``), so a user's own random operator is refused
    in its own words, and one that declares its params knowable is searched, with no list of classes in estimation."""

    class Watermark(cd.GaussianBlur):
        param_keys = ("offset",)

        def make_params(self, x0, generator=None, **context):
            return {"offset": torch.zeros(x0.shape[0])}

        def unknown_params_reason(self):
            return "Watermark: the watermark's position is secret"

    class Known(Watermark):
        def unknown_params_reason(self):
            return None  # e.g. the offset is always zero in practice

    y = torch.rand(2, 1, 16, 16)
    with pytest.raises(ValueError, match="cannot estimate the level for this degradation: Watermark: the watermark"):
        check_estimable(Watermark(5, kernel_size=3))
    check_estimable(Known(5, kernel_size=3))
    assert cd.BlurNoise(5).unknown_params_reason().startswith("BlurNoise: the noise of a given image is unknown")
    assert cd.GaussianBlur(5).unknown_params_reason() is None
    assert estimate_level(lambda x, t: x, Known(5, kernel_size=3), y).levels.shape == (2,)


def test_known_params_make_random_operators_estimable():
    op = cd.GaussianMask(20, center="random")
    x0 = smooth_images(batch=3, channels=3, size=16)
    params = op.make_params(x0, torch.Generator().manual_seed(0))
    t = torch.tensor([0, 11, 20])
    y = op(x0, t, params)
    estimate = estimate_level(perfect_restorer(x0, y), op, y, params=params)
    assert estimate.levels.tolist() == t.tolist()
    check_estimable(cd.GaussianBlur(5))  # deterministic: nothing to know
    check_estimable(cd.GaussianMask(5))


def test_bad_arguments():
    blur = blur_for(10)
    y = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"levels must increase strictly within \[0, 10\]"):
        estimate_level(lambda x, t: x, blur, y, levels=[0, 5, 5])
    with pytest.raises(ValueError, match="levels must increase strictly"):
        estimate_level(lambda x, t: x, blur, y, levels=[0, 11])
    with pytest.raises(TypeError, match="levels must be a non-empty sequence of ints"):
        estimate_level(lambda x, t: x, blur, y, levels=[])
    with pytest.raises(ValueError, match="grid must be an int >= 2"):
        estimate_level(lambda x, t: x, blur, y, grid=1)
    with pytest.raises(ValueError, match="starts must be an int >= 1"):
        estimate_level(lambda x, t: x, blur, y, starts=0)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        estimate_level(lambda x, t: x, blur, y, batch_size=0)
    with pytest.raises(TypeError, match="restore must be a callable"):
        estimate_level(None, blur, y)
    with pytest.raises(TypeError, match="degradation must be a colddiff Degradation"):
        estimate_level(lambda x, t: x, "blur", y)
    with pytest.raises(ValueError, match=r"shape \(B, C, H, W\)"):
        estimate_level(lambda x, t: x, blur, torch.rand(1, 8, 8))


def test_sample_at_levels_restores_each_image_from_its_own_level():
    blur = blur_for(12)
    x0 = smooth_images(batch=5, channels=1, size=16)
    t = torch.tensor([0, 12, 5, 12, 1])
    y = blur(x0, t)
    calls: list[int] = []
    restore = perfect_restorer(x0, y, calls)
    out = sample_at_levels("improved", restore, blur, y, t)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)
    assert torch.equal(out[0], y[0])  # level 0: returned unchanged
    assert len(calls) == 12 + 5 + 1  # one sampler run per distinct level (12, 5, 1), one call per step
    calls.clear()
    skipped = sample_at_levels("improved", restore, blur, y, t, steps=3)
    torch.testing.assert_close(skipped, x0, atol=1e-5, rtol=0)
    assert len(calls) == 3 + 3 + 1  # at most 3 steps per group
    direct = sample_at_levels("direct", restore, blur, y, t.tolist())
    torch.testing.assert_close(direct[1:], x0[1:])
    single = sample_improved(restore, blur, y[1:2], 12)
    torch.testing.assert_close(out[1:2], single)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 12\]"):
        sample_at_levels("improved", restore, blur, y, [0, 13, 1, 1, 1])
    with pytest.raises(ValueError, match="steps must be None or a positive int"):
        sample_at_levels("improved", restore, blur, y, t, steps=[12, 0])


def test_estimation_tiling_and_image_reading_do_not_import_lightning():
    code = (
        "import sys, colddiff.estimation, colddiff.tiling, colddiff.io, colddiff.datasets; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'torchmetrics')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
