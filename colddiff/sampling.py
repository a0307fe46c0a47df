"""Cold Diffusion samplers: plain functions, no Lightning.

All samplers share one signature: a restoration callable ``restore(x_t, t) -> x0_hat`` (``t`` a ``(B,)`` long
tensor), a :class:`~colddiff.degradations.Degradation`, the degraded batch ``x_t`` at level ``t`` (default ``T``),
the degradation's ``params`` (drawn with ``generator`` when not given), an optional decreasing subsequence of levels
(step skipping) and an optional per-step ``callback``.  Each visits its levels once: ``len(levels) - 1`` calls of
``restore`` and at most two closed-form operator calls per step, never ``O(T^2)``.

* :func:`sample_naive` (Algorithm 1): ``x0_hat = R(x_s, s); x_{s'} = D(x0_hat, s')``.
* :func:`sample_improved` (Algorithm 2): ``x_{s'} = x_s - D(x0_hat, s) + D(x0_hat, s')``, with the same params for
  both terms.  With a perfect ``R`` it returns ``x0`` exactly; for :class:`~colddiff.degradations.GaussianNoise`
  with ``reestimate=True`` it is deterministic DDIM.
* :func:`sample_direct`: the one-shot reconstruction ``R(x_t, t)``.

**Sampling noise** (``noise=``, every iterative sampler): ``delta_{s'} * eps`` with fresh standard normal ``eps`` is
added to the new state at every level ``s' > 0``; ``noise`` is a number (the same ``delta`` at every level) or
``T + 1`` per-level values.  Algorithm 1 with this noise is the ancestral sampler of Inverse Heat Dissipation
(Rissanen et al., arXiv 2206.13397: the reverse step ``p(u_{k-1} | u_k) = N(mu_theta(u_k, k), delta^2 I)``, i.e.
``u_{k-1} = mu_theta(u_k, k) + delta * eps``, where their ``mu_theta`` predicts the less degraded image, here
``D(x0_hat, k - 1)``); a network trained on noisy inputs (``ColdDiffusion(train_noise=sigma)``, their forward
``q(u_k | u_0) = N(F(t_k) u_0, sigma^2 I)``) is the matching model.  Algorithm 2 keeps its residual
``x_s - D(x0_hat, s)`` from level to level (which is what cancels the restorer's errors), so the noise it is given
stays in the state, accumulating to ``sqrt(sum delta^2)`` per pixel; with noise, its last step therefore returns the
restorer's estimate ``x0_hat = R(x_s, s)`` (``D(x0_hat, 0) = x0_hat``) instead of ``x_s - D(x0_hat, s) + x0_hat``, as
Algorithm 1 and IHDM do (their last step is noise-free).  Without noise Algorithm 2 is unchanged.
The draws come from ``generator``, so a seeded generator reproduces the samples.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from colddiff._checks import randn
from colddiff.degradations.base import Degradation, Params
from colddiff.schedules import level_values

__all__ = ["Restore", "SamplerName", "SAMPLERS", "Precision", "timesteps", "sample", "sample_naive",
           "sample_improved", "sample_direct", "autocast"]

Restore = Callable[[Tensor, Tensor], Tensor]
SamplerName = Literal["naive", "improved", "direct"]
SAMPLERS: tuple[str, ...] = get_args(SamplerName)
Callback = Callable[[dict[str, Any]], None]
Noise = float | Sequence[float] | Tensor | None
Precision = Literal["32", "bf16", "16"]


def timesteps(start: int, steps: int | Sequence[int] | Tensor | None = None) -> list[int]:
    """The decreasing levels a sampler visits, from ``start`` down to 0.

    Args:
        start: the level of the input.
        steps: ``None`` for every level; an int ``n`` for ``n`` steps evenly spaced (rounded, ``1 <= n <= start``);
            or an explicit strictly decreasing sequence that begins at ``start`` and ends at 0.

    Returns:
        The levels, e.g. ``timesteps(300, 3) == [300, 200, 100, 0]``.
    """
    if isinstance(start, bool) or not isinstance(start, numbers.Integral) or start < 0:
        raise ValueError(f"start level must be an int >= 0, got {start!r}")
    start = int(start)
    if steps is None:
        return list(range(start, -1, -1))
    if isinstance(steps, numbers.Integral) and not isinstance(steps, bool):
        if start == 0:
            raise ValueError("nothing to sample: the input is already at level 0")
        if not 1 <= steps <= start:
            raise ValueError(f"steps must lie in [1, {start}] (the start level), got {steps}")
        grid = torch.linspace(start, 0, int(steps) + 1, dtype=torch.float64).round().long().tolist()
        return sorted(set(grid), reverse=True)
    levels = steps.tolist() if isinstance(steps, Tensor) else list(steps)
    if not levels or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in levels):
        raise TypeError(f"steps must be None, an int, or a sequence of ints, got {steps!r}")
    levels = [int(v) for v in levels]
    if levels[0] != start or levels[-1] != 0 or any(a <= b for a, b in zip(levels, levels[1:])):
        raise ValueError(
            f"explicit steps must decrease strictly from the start level {start} to 0, got {levels}"
        )
    return levels


def _prepare(
    degradation: Degradation,
    x_t: Tensor,
    t: int | None,
    params: Mapping[str, Tensor] | None,
    generator: torch.Generator | None,
    need_params: bool = True,
) -> tuple[Tensor, int, Params]:
    if not isinstance(degradation, Degradation):
        raise TypeError(f"degradation must be a colddiff Degradation, got {type(degradation).__name__}")
    x_t = degradation.check_input(x_t, "x_t")
    start = degradation.num_steps if t is None else t
    if isinstance(start, bool) or not isinstance(start, numbers.Integral) or not 0 <= start <= degradation.num_steps:
        raise ValueError(f"t (the level of x_t) must be an int in [0, {degradation.num_steps}], got {t!r}")
    if params is not None:
        params = degradation.check_params(params, x_t)
    elif need_params:
        params = degradation.make_params(x_t, generator)
    return x_t, int(start), params or {}


def _check_restore(restore: Any) -> None:
    if not callable(restore):
        raise TypeError(f"restore must be a callable restore(x_t, t) -> x0_hat, got {type(restore).__name__}")


def _run(
    rule: Literal["naive", "improved"],
    restore: Restore,
    degradation: Degradation,
    x_t: Tensor,
    t: int | None,
    params: Mapping[str, Tensor] | None,
    steps: int | Sequence[int] | Tensor | None,
    callback: Callback | None,
    generator: torch.Generator | None,
    noise: Noise,
) -> Tensor:
    _check_restore(restore)
    x, start, params = _prepare(degradation, x_t, t, params, generator)
    levels = timesteps(start, steps)
    deltas = None if noise is None else level_values(noise, degradation.num_steps, "noise").tolist()
    batch = x.shape[0]
    noised = False
    for i, (s, s_next) in enumerate(zip(levels[:-1], levels[1:])):
        level = torch.full((batch,), s, dtype=torch.long, device=x.device)
        level_next = torch.full((batch,), s_next, dtype=torch.long, device=x.device)
        # the state stays in its own precision (float32 under autocast): D of a half-precision x0_hat, and the
        # difference of two such terms, would lose digits at every one of T steps
        x0_hat = restore(x, level).to(x.dtype)
        params = degradation.update_params(x, x0_hat, level, params)
        if rule == "naive" or (s_next == 0 and noised):
            # with sampling noise, Algorithm 2's residual x_s - D(x0_hat, s) holds the noise added so far (it is
            # carried to the end, not removed): the last step returns the restorer's estimate, as Algorithm 1 does
            x_next = degradation.degrade(x0_hat, level_next, params)
        else:
            x_next = x + degradation.step_difference(x0_hat, level, level_next, params)
        if deltas is not None and s_next > 0 and deltas[s_next] > 0:
            x_next = x_next + deltas[s_next] * randn(tuple(x.shape), generator, x)
            noised = True
        if callback is not None:
            callback({"i": i, "t": s, "t_next": s_next, "x": x, "x0_hat": x0_hat, "x_next": x_next})
        x = x_next
    return x


@torch.no_grad()
def sample_naive(
    restore: Restore,
    degradation: Degradation,
    x_t: Tensor,
    t: int | None = None,
    params: Mapping[str, Tensor] | None = None,
    steps: int | Sequence[int] | Tensor | None = None,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    noise: Noise = None,
) -> Tensor:
    """Algorithm 1: ``x0_hat = R(x_s, s)``, ``x_{s'} = D(x0_hat, s')``.

    Args:
        restore: ``restore(x_t, t) -> x0_hat``.
        degradation: the operator ``D``.
        x_t: the degraded batch, at level ``t``.
        t: level of ``x_t`` (default ``T``).
        params: the degradation's params (drawn with ``generator`` if ``None``).
        steps: levels to visit (see :func:`timesteps`).
        callback: called after each step with a dict ``i, t, t_next, x, x0_hat, x_next``.
        generator: random generator for params that are not given, and for the sampling noise (for the noise, also
            a sequence of one generator per image).
        noise: sampling noise ``delta`` (see the module docstring), ``None`` for none.

    Shape:
        ``x_t``: ``(B, C, H, W)``; output (the level-0 image): ``(B, C, H, W)``.
    """
    return _run("naive", restore, degradation, x_t, t, params, steps, callback, generator, noise)


@torch.no_grad()
def sample_improved(
    restore: Restore,
    degradation: Degradation,
    x_t: Tensor,
    t: int | None = None,
    params: Mapping[str, Tensor] | None = None,
    steps: int | Sequence[int] | Tensor | None = None,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    noise: Noise = None,
) -> Tensor:
    """Algorithm 2: ``x_{s'} = x_s - D(x0_hat, s) + D(x0_hat, s')`` (same params for both terms).

    Arguments as :func:`sample_naive`.

    Shape:
        ``x_t``: ``(B, C, H, W)``; output (the level-0 image): ``(B, C, H, W)``.
    """
    return _run("improved", restore, degradation, x_t, t, params, steps, callback, generator, noise)


@torch.no_grad()
def sample_direct(
    restore: Restore,
    degradation: Degradation,
    x_t: Tensor,
    t: int | None = None,
    params: Mapping[str, Tensor] | None = None,
    steps: int | Sequence[int] | Tensor | None = None,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    noise: Noise = None,
) -> Tensor:
    """One-shot reconstruction ``R(x_t, t)`` (``params``, ``steps``, ``generator`` and ``noise`` are accepted and
    ignored, so every sampler takes the same arguments).

    Shape:
        ``x_t``: ``(B, C, H, W)``; output: ``(B, C, H, W)``.
    """
    _check_restore(restore)
    x, start, _ = _prepare(degradation, x_t, t, params, generator, need_params=False)
    level = torch.full((x.shape[0],), start, dtype=torch.long, device=x.device)
    x0_hat = restore(x, level) if start > 0 else x
    if callback is not None:
        callback({"i": 0, "t": start, "t_next": 0, "x": x, "x0_hat": x0_hat, "x_next": x0_hat})
    return x0_hat


_SAMPLER_FUNCTIONS = {"naive": sample_naive, "improved": sample_improved, "direct": sample_direct}


def sample(
    sampler: SamplerName,
    restore: Restore,
    degradation: Degradation,
    x_t: Tensor,
    t: int | None = None,
    params: Mapping[str, Tensor] | None = None,
    steps: int | Sequence[int] | Tensor | None = None,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    noise: Noise = None,
) -> Tensor:
    """Run the sampler named ``sampler`` (``"naive"``, ``"improved"`` or ``"direct"``)."""
    if sampler not in _SAMPLER_FUNCTIONS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    return _SAMPLER_FUNCTIONS[sampler](restore, degradation, x_t, t, params, steps, callback, generator, noise)


def autocast(device: torch.device | str, precision: Precision = "32") -> contextlib.AbstractContextManager:
    """The network's precision while sampling: ``"32"`` (no autocast), ``"bf16"`` or ``"16"`` (autocast).

    The samplers keep their state in the input's precision (float32) under autocast; only the network runs in the
    lower precision.
    """
    if precision not in get_args(Precision):
        raise ValueError(f"precision must be one of {get_args(Precision)}, got {precision!r}")
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
