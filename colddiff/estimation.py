"""Estimating the unknown degradation level of a given image, and restoring each image at its own level.

A user's degraded image comes without its level ``t``.  Cold Diffusion's restorer gives a natural estimator that
needs no extra training: for a candidate level ``s``, restore ``x0_hat = R(y, s)`` and measure how well degrading it
again explains the input,

    r(s) = || D(R(y, s), s) - y ||   (root mean square over the pixels, per image),

then take the candidate with the smallest residual.  With a perfect restorer (``R`` returns the true ``x0``) and an
operator whose levels differ (blur, centred masks, pixelation, desaturation), ``r(t) = 0`` and ``r(s) > 0``
elsewhere, so the true level is found exactly.  This is the data-consistency idea of Cold Diffusion's samplers
(Bansal et al., arXiv 2208.09392, Algorithm 2 re-degrades ``x0_hat`` at the current level) used as a criterion over
levels; the search below is ours.

**Search** (:func:`estimate_level`), ``O(log T)`` network calls per image instead of ``T + 1``:

1. a coarse grid of ``G`` evenly spaced candidates, ``G = max(3, ceil(log2(n)) + 1)`` for ``n`` candidates;
2. around each of the ``starts`` best *local minima* of the grid values, a bracketed integer search: a bracket
   ``(a, m, b)`` of evaluated candidates with ``r(m) <= r(a), r(b)``; probe the middle of the larger half, keep the
   better point as the new middle, until both halves are one candidate wide;
3. the answer is the best of every candidate evaluated (ties: the lower level).

A bracket shrinks to at most three quarters of its width every two probes, so each start costs ``O(log(n / G))``
evaluations and the whole search ``G + starts * O(log n) = O(log T)``.  The residual curve of a real network need not
be unimodal: the grid sees every basin wider than its spacing ``n / G``, and refining the ``starts`` best grid
minima (default 2) keeps a second basin whose grid point was unlucky.  A minimum narrower than the grid spacing can
still be missed; ``grid=n`` evaluates every candidate (an exhaustive scan), which is also the default for an
operator that asks for it (:meth:`~colddiff.degradations.Degradation.level_search_grid`: JPEG, whose levels are not
ordered by distance, so its true level is a narrow minimum between grid points).  All images are searched together: each
round evaluates one probe per image and bracket in one batched call of ``restore``, every image at its own level.

**Level 0** (a clean input) is a candidate like any other: ``r(0) = ||R(y, 0) - y||`` calls the restorer at level 0.
(Taking ``x0_hat = y`` at level 0, as the samplers do, would make ``r(0) = 0`` for every image.)  Networks trained on
``t`` in ``{1, ..., T}`` never saw level 0; how they behave there is measured by ``benchmarks/bench_restore.py``.

**Randomness that a given image does not reveal** (:func:`check_estimable`).  Re-degrading needs the degradation's
params.  Deterministic operators (:class:`~colddiff.degradations.GaussianBlur`, centred
:class:`~colddiff.degradations.GaussianMask` with a fixed fill, :class:`~colddiff.degradations.Pixelate`,
:class:`~colddiff.degradations.Desaturate`) need none.  For random ones the estimator refuses, naming the operator
and why, unless the caller passes the params (e.g. a synthetic test that knows them):

* ``GaussianMask(center="random")``: each image's mask centre is unknown; re-degrading at another centre explains
  nothing.  (``fill="random"``, mask-based generation: the fill colour is unknown.)
* :class:`~colddiff.degradations.Snow`: the snow field and its direction in the image are unknown and cannot be
  redrawn to match.
* :class:`~colddiff.degradations.Mix`: undoing a mix needs the partner image that was mixed in.
* :class:`~colddiff.degradations.GaussianNoise`: the noise is unknown, and re-estimating it from ``y`` (what the
  samplers do) explains every level exactly, so the residual cannot tell levels apart.

No Lightning; torch only.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from colddiff.degradations.base import Degradation, Params
from colddiff.sampling import Denoiser, SamplerName, sample, sampler_info

__all__ = ["LevelEstimate", "estimate_level", "check_estimable", "level_residuals", "sample_at_levels",
           "default_grid_size"]

Restore = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class LevelEstimate:
    """The result of :func:`estimate_level`.

    Attributes:
        levels: the estimated level of each image, ``(B,)`` long.
        residuals: the residual ``r`` at that level, ``(B,)`` float64 (root mean square, ``[0, 1]`` units).
        curves: for each image, every level evaluated and its residual, in increasing level order.
        network_calls: how many times ``restore`` was called (each call a batch of (image, level) pairs).
        restorations: with ``keep_restorations=True``, ``R(y, level)`` of each image at its estimated level (what
            ``restore`` returned there), ``(B, C, H, W)``; a sampler's first call from that level needs no second
            network call (:func:`sample_at_levels` ``restorations=``); else ``None``.
    """

    levels: Tensor
    residuals: Tensor
    curves: tuple[dict[int, float], ...]
    network_calls: int
    restorations: Tensor | None = None

    @property
    def evaluations(self) -> list[int]:
        """How many levels were evaluated for each image."""
        return [len(curve) for curve in self.curves]

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per image: ``level``, ``residual`` and ``curve`` (``[[level, residual], ...]``)."""
        return [{"level": int(level), "residual": float(res), "curve": [[s, r] for s, r in curve.items()]}
                for level, res, curve in zip(self.levels.tolist(), self.residuals.tolist(), self.curves)]


# ------------------------------------------------------------------------------------------------ policy
def check_estimable(degradation: Degradation, params: Mapping[str, Tensor] | None = None) -> None:
    """Raise ``ValueError`` if :func:`estimate_level` cannot work for ``degradation`` without the given ``params``.

    Deterministic operators always pass; random ones pass only with their params (see the module docstring).
    """
    if not isinstance(degradation, Degradation):
        raise TypeError(f"degradation must be a colddiff Degradation, got {type(degradation).__name__}")
    if params is not None:
        return
    reason = degradation.unknown_params_reason()  # the operator knows what a given image does not reveal
    if reason is not None:
        keys = ", ".join(repr(k) for k in degradation.param_keys)
        raise ValueError(
            f"cannot estimate the level for this degradation: {reason}. Pass params={{{keys}: ...}} if you know "
            "them (e.g. for synthetic tests), or give the level yourself")


# ------------------------------------------------------------------------------------------------ residuals
def _check_restore(restore: Any) -> None:
    if not callable(restore):
        raise TypeError(f"restore must be a callable restore(x_t, t) -> x0_hat, got {type(restore).__name__}")


def _prepare(degradation: Degradation, y: Any, params: Mapping[str, Tensor] | None) -> tuple[Tensor, Params]:
    check_estimable(degradation, params)
    y = degradation.check_input(y, "y")
    return y, ({} if params is None else degradation.check_params(params, y))


def _evaluate(restore: Restore, degradation: Degradation, y: Tensor, params: Params, rows: Tensor, levels: Tensor,
              batch_size: int | None, keep: Callable[[int, Tensor], None] | None = None) -> tuple[Tensor, int]:
    """``r(levels[k])`` for image ``rows[k]``, in calls of at most ``batch_size`` pairs; the residuals and calls.
    ``keep(start, x0_hat)`` receives each call's restorations (pairs ``start ..``) as ``restore`` returned them."""
    step = batch_size or rows.numel()
    out, calls = [], 0
    for i in range(0, rows.numel(), step):
        r, s = rows[i: i + step], levels[i: i + step]
        x = y.index_select(0, r)
        p = {k: v.index_select(0, r) for k, v in params.items()}
        restored = restore(x, s)
        if keep is not None:
            keep(i, restored)
        x0_hat = restored.to(x.dtype)
        calls += 1
        back = degradation.degrade(x0_hat, s, p)
        out.append((back - x).double().pow(2).flatten(1).mean(1).sqrt())
    return torch.cat(out).cpu(), calls


@torch.no_grad()
def level_residuals(
    restore: Restore,
    degradation: Degradation,
    y: Tensor,
    levels: Sequence[int] | None = None,
    *,
    params: Mapping[str, Tensor] | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """The whole residual curve ``r(s) = ||D(R(y, s), s) - y||`` (RMS per image) at every level of ``levels``.

    ``len(levels)`` network calls per image: for plots and checks; :func:`estimate_level` needs ``O(log T)``.

    Args:
        restore: ``restore(x_t, t) -> x0_hat``.
        degradation: the operator ``D``.
        y: the degraded images.
        levels: the levels to evaluate (default ``0 .. T``).
        params: the degradation's params, when it has any (see :func:`check_estimable`).
        batch_size: (image, level) pairs per ``restore`` call (default: all at once).

    Shape:
        ``y``: ``(B, C, H, W)``; output: ``(B, len(levels))`` float64.
    """
    _check_restore(restore)
    y, params = _prepare(degradation, y, params)
    candidates = _candidates(levels, degradation.num_steps)
    batch = y.shape[0]
    rows = torch.arange(batch, device=y.device).repeat_interleave(len(candidates))
    s = torch.tensor(candidates, device=y.device).repeat(batch)
    values, _ = _evaluate(restore, degradation, y, params, rows, s, _check_batch_size(batch_size))
    return values.view(batch, len(candidates))


# ------------------------------------------------------------------------------------------------ search
def default_grid_size(n: int) -> int:
    """``G = max(3, ceil(log2(n)) + 1)`` grid candidates for ``n`` candidates (all of them when ``n`` is smaller)."""
    return min(n, max(3, math.ceil(math.log2(max(n, 2))) + 1))


def _candidates(levels: Sequence[int] | None, num_steps: int) -> list[int]:
    if levels is None:
        return list(range(num_steps + 1))
    values = levels.tolist() if isinstance(levels, Tensor) else list(levels)
    if not values or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
        raise TypeError(f"levels must be a non-empty sequence of ints (candidate levels), got {levels!r}")
    values = [int(v) for v in values]
    if any(a >= b for a, b in zip(values, values[1:])) or values[0] < 0 or values[-1] > num_steps:
        raise ValueError(f"levels must increase strictly within [0, {num_steps}] (num_steps), got {values}")
    return values


def _check_batch_size(batch_size: Any) -> int | None:
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
                                   or batch_size <= 0):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    return batch_size


def _grid_indices(n: int, size: int) -> list[int]:
    return sorted({round(i * (n - 1) / (size - 1)) for i in range(size)}) if size > 1 else [0]


def _next_probe(bracket: list[int]) -> int | None:
    """The candidate to evaluate next in bracket ``(a, m, b)``, or ``None`` when it is resolved."""
    a, m, b = bracket
    if max(m - a, b - m) <= 1:
        return None
    return (m + b) // 2 if b - m >= m - a else (a + m + 1) // 2


def _update(bracket: list[int], x: int, curve: dict[int, float]) -> None:
    """Shrink ``(a, m, b)`` with the evaluated probe ``x`` (strictly better than ``m``: it becomes the middle)."""
    a, m, b = bracket
    better = (curve[x], x) < (curve[m], m)
    if x > m:
        bracket[:] = [m, x, b] if better else [a, m, x]
    else:
        bracket[:] = [a, x, m] if better else [x, m, b]


@torch.no_grad()
def estimate_level(
    restore: Restore,
    degradation: Degradation,
    y: Tensor,
    *,
    params: Mapping[str, Tensor] | None = None,
    levels: Sequence[int] | None = None,
    grid: int | None = None,
    starts: int = 2,
    batch_size: int | None = None,
    keep_restorations: bool = False,
) -> LevelEstimate:
    """Estimate each image's degradation level: the level whose restoration, degraded again, best explains it.

    Minimises ``r(s) = ||D(R(y, s), s) - y||`` (RMS per image) over the candidate levels with a coarse grid and
    bracketed integer searches around the best grid minima: ``O(log T)`` evaluations per image, batched over images
    (see the module docstring for the search, its guarantees and the operators it refuses).

    Args:
        restore: ``restore(x_t, t) -> x0_hat`` with ``t`` a ``(N,)`` long tensor (e.g. ``model.restore``, wrapped by
            :func:`colddiff.tiling.any_size` for other sizes).
        degradation: the operator ``D`` the restorer was trained for.
        y: the degraded images, each at its own unknown level.
        params: the degradation's params when it has random ones and they are known (see :func:`check_estimable`).
        levels: the candidate levels, strictly increasing (default ``0 .. T``).
        grid: coarse-grid size (default: the degradation's
            :meth:`~colddiff.degradations.Degradation.level_search_grid`, else :func:`default_grid_size`;
            ``len(levels)`` for an exhaustive scan).
        starts: how many of the grid's best local minima are refined (``>= 1``).
        batch_size: the most (image, level) pairs per ``restore`` call (default: a whole round at once).
        keep_restorations: also return ``R(y, level)`` at each image's estimated level
            (:attr:`LevelEstimate.restorations`; one image batch of memory), to restore from there without calling
            the network again at that level.

    Returns:
        A :class:`LevelEstimate`: the levels, their residuals, every residual evaluated, the number of calls (and the
        restorations at the estimated levels, when kept).

    Shape:
        ``y``: ``(B, C, H, W)``; ``levels`` of the result: ``(B,)``.
    """
    _check_restore(restore)
    y, params = _prepare(degradation, y, params)
    candidates = _candidates(levels, degradation.num_steps)
    n = len(candidates)
    if grid is None:
        grid = degradation.level_search_grid(n) or default_grid_size(n)
    if isinstance(grid, bool) or not isinstance(grid, numbers.Integral) or grid < 2:
        raise ValueError(f"grid must be an int >= 2 (coarse-grid candidates), got {grid!r}")
    if isinstance(starts, bool) or not isinstance(starts, numbers.Integral) or starts < 1:
        raise ValueError(f"starts must be an int >= 1 (grid minima to refine), got {starts!r}")
    batch_size = _check_batch_size(batch_size)
    batch = y.shape[0]
    curves: list[dict[int, float]] = [{} for _ in range(batch)]  # candidate index -> residual
    calls = 0
    kept: dict[int, Tensor] = {}  # image -> R(y, s) at its best candidate so far

    def run(pairs: list[tuple[int, int]]) -> None:
        nonlocal calls
        if not pairs:
            return
        rows = torch.tensor([b for b, _ in pairs], device=y.device)
        s = torch.tensor([candidates[i] for _, i in pairs], device=y.device)
        restored: list[tuple[int, Tensor]] = []
        values, made = _evaluate(restore, degradation, y, params, rows, s, batch_size,
                                 (lambda start, x0_hat: restored.append((start, x0_hat))) if keep_restorations
                                 else None)
        calls += made
        for k, ((b, i), value) in enumerate(zip(pairs, values.tolist())):
            if keep_restorations and (not curves[b] or (value, i) < min((r, j) for j, r in curves[b].items())):
                start, chunk = next((start, chunk) for start, chunk in reversed(restored) if start <= k)
                kept[b] = chunk[k - start].clone()
            curves[b][i] = value

    grid_idx = _grid_indices(n, min(int(grid), n))
    run([(b, i) for b in range(batch) for i in grid_idx])
    brackets: list[list[list[int]]] = []
    for b in range(batch):
        values = [curves[b][i] for i in grid_idx]
        minima = [k for k in range(len(grid_idx))
                  if (k == 0 or values[k] <= values[k - 1]) and (k == len(grid_idx) - 1 or values[k] <= values[k + 1])]
        minima.sort(key=lambda k: (values[k], k))
        brackets.append([[grid_idx[max(k - 1, 0)], grid_idx[k], grid_idx[min(k + 1, len(grid_idx) - 1)]]
                         for k in minima[: int(starts)]])
    while True:
        pairs: list[tuple[int, int]] = []
        for b in range(batch):
            wanted = set()
            for bracket in brackets[b]:
                probe = _next_probe(bracket)
                while probe is not None and probe in curves[b]:  # already known (another bracket): no call
                    _update(bracket, probe, curves[b])
                    probe = _next_probe(bracket)
                if probe is not None:
                    wanted.add(probe)
            pairs += [(b, i) for i in sorted(wanted)]
        if not pairs:
            break
        run(pairs)
        for b in range(batch):
            for bracket in brackets[b]:
                probe = _next_probe(bracket)
                if probe is not None and probe in curves[b]:
                    _update(bracket, probe, curves[b])
    best = [min(curve, key=lambda i: (curve[i], i)) for curve in curves]
    return LevelEstimate(
        levels=torch.tensor([candidates[i] for i in best], dtype=torch.long, device=y.device),
        residuals=torch.tensor([curve[i] for curve, i in zip(curves, best)], dtype=torch.float64),
        curves=tuple({candidates[i]: curve[i] for i in sorted(curve)} for curve in curves),
        network_calls=calls,
        restorations=torch.stack([kept[b] for b in range(batch)]) if keep_restorations else None,
    )


# ------------------------------------------------------------------------------------------------ restoration
@torch.no_grad()
def sample_at_levels(
    sampler: SamplerName,
    restore: Restore,
    degradation: Degradation,
    y: Tensor,
    levels: Tensor | Sequence[int],
    *,
    params: Mapping[str, Tensor] | None = None,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    noise: float | Sequence[float] | None = None,
    restorations: Tensor | None = None,
) -> Tensor:
    """Restore each image from its own level (e.g. :attr:`LevelEstimate.levels`) with a sampler of
    :mod:`colddiff.sampling`: one sampler run per distinct level; images at level 0 are returned unchanged.

    ``restorations`` (``R(y, levels)``, e.g. :attr:`LevelEstimate.restorations` of the same ``restore``) answer the
    sampler's first network call, which is at ``(y, level)``: the one-shot sampler then calls no network, the others
    one call fewer.  (A :class:`~colddiff.sampling.Denoiser`'s whole prediction is not kept: with one, only the
    one-shot sampler reuses them.)

    Args:
        sampler: a sampler of :mod:`colddiff.sampling` (``"naive"``, ``"improved"``, ``"direct"``...).
        restore: ``restore(x_t, t) -> x0_hat``.
        degradation: the operator ``D``.
        y: the degraded images.
        levels: one level per image, ``0 <= level <= T``.
        params: the degradation's params (the samplers draw them with ``generator`` when ``None``).
        steps: ``None`` for every level, or an int: that many evenly spaced steps (fewer for lower levels).
        generator: random generator for params that are not given (and for sampling noise).
        noise: sampling noise ``delta`` (a number or ``T + 1`` values, see :mod:`colddiff.sampling`), ``None`` for
            none.
        restorations: ``R(y, levels)`` when already computed (see above).

    Shape:
        ``y``: ``(B, C, H, W)``; ``levels``: ``(B,)``; ``restorations``: as ``y``; output: ``(B, C, H, W)``.
    """
    y = degradation.check_input(y, "y")
    t = degradation.check_t(torch.as_tensor(levels) if not isinstance(levels, Tensor) else levels, y)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1):
        raise ValueError(f"steps must be None or a positive int (per-image levels differ), got {steps!r}")
    if params is not None:
        params = degradation.check_params(params, y)
    info = sampler_info(sampler)
    if steps is not None and not info.takes_steps:
        raise ValueError(f"the {info.name} sampler does not take steps={steps!r} (it visits no intermediate levels)")
    if restorations is not None and (not isinstance(restorations, Tensor) or restorations.shape != y.shape):
        got = tuple(restorations.shape) if isinstance(restorations, Tensor) else type(restorations).__name__
        raise ValueError(f"restorations must be R(y, levels), a tensor of y's shape {tuple(y.shape)}, got {got}")
    reuse = restorations is not None and (info.one_shot or not isinstance(restore, Denoiser))
    out = y.clone()
    for level in sorted(set(t.tolist())):
        if level == 0:
            continue
        index = (t == level).nonzero().flatten()
        part = {k: v.index_select(0, index) for k, v in params.items()} if params is not None else None
        group_steps = None if steps is None or not info.takes_steps else min(int(steps), level)
        x_t = y.index_select(0, index)
        group_restore = _FirstCallKnown(restore, x_t, level, restorations.index_select(0, index)) if reuse \
            else restore
        out[index] = sample(sampler, group_restore, degradation, x_t, level, part, group_steps,
                            None, generator, noise).to(out.dtype)
    return out


class _FirstCallKnown:
    """``restore`` whose first call, when it is at ``(x_t, level)``, returns the known ``x0_hat`` instead of calling
    the network again (every later call, or a first call elsewhere, goes to ``restore``)."""

    def __init__(self, restore: Restore, x_t: Tensor, level: int, x0_hat: Tensor) -> None:
        self.restore, self.known = restore, (x_t, level, x0_hat)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        known, self.known = self.known, None
        if known is not None and x.shape == known[0].shape and bool((t == known[1]).all()) and torch.equal(x, known[0]):
            return known[2]
        return self.restore(x, t)
