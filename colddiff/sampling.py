"""Cold Diffusion samplers: plain functions, no Lightning.

Every sampler is ``fn(restore, degradation, x_t, ...)``: a restoration callable ``restore(x_t, t) -> x0_hat`` (``t``
a ``(B,)`` long tensor), a :class:`~colddiff.degradations.Degradation`, the degraded batch ``x_t``, and, by name, the
arguments of :data:`ARGUMENTS` it uses: its level ``t`` (default ``T``), the degradation's ``params`` (drawn with
``generator`` when not given), ``steps`` (a decreasing subsequence of levels: step skipping), a per-step
``callback``, the ``generator`` and the sampling ``noise``.  Each visits its levels once: ``len(levels) - 1`` steps
of at most two network calls and two closed-form operator calls, never ``O(T^2)``.

**An open set that describes itself.**  Samplers are plain functions registered by name (:func:`register_sampler`),
with what they are (:class:`SamplerInfo`, :func:`sampler_info`): the arguments they take (read from the signature:
does it skip levels, take sampling noise), whether it is one-shot, and its network calls per step.
:func:`get_sampler` returns one by name, or by import path (``"mypackage.samplers.my_sampler"``, checked against the
allow-list when it comes from a file's config); :func:`sample` calls one with the arguments it takes and refuses a
``steps`` or ``noise`` it does not.  Adding a sampler touches one file: write the function, decorate it with
``@register_sampler("name")``; the step helpers it needs are public here (:func:`prepare`, :func:`timesteps`,
:func:`level_tensor`, :func:`sampling_deltas`, :func:`add_sampling_noise`).

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
import inspect
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from colddiff._checks import randn
from colddiff.degradations.base import Degradation, Params, SignalNoise
from colddiff.schedules import level_values

__all__ = ["Restore", "Sampler", "SamplerName", "SamplerInfo", "Precision", "ARGUMENTS", "register_sampler",
           "get_sampler", "sampler_info", "sampler_names", "check_sampler_name", "timesteps", "prepare",
           "level_tensor", "sampling_deltas", "Prediction", "Denoiser", "predict", "add_sampling_noise", "sample",
           "sample_naive", "sample_improved", "sample_direct", "sample_heun", "sample_dpmpp_2m", "sample_unipc",
           "sample_ancestral", "ancestral_step", "ancestral_refusal", "autocast"]

Restore = Callable[[Tensor, Tensor], Tensor]


class SamplerName(str):
    """The type of a sampler's name: one registered with :func:`register_sampler` (``"naive"``, ``"improved"``,
    ``"direct"``, ...) or an import path to a function with the samplers' signature.  Plain strings are accepted
    wherever it is used; the type lets configuration parsers check a name while parsing (:func:`check_sampler_name`,
    registered with jsonargparse by :mod:`colddiff.cli`)."""
Callback = Callable[[dict[str, Any]], None]
Noise = float | Sequence[float] | Tensor | None
Precision = Literal["32", "bf16", "16"]
#: ``sampler(restore, degradation, x_t, **arguments) -> x0`` (the arguments of :data:`ARGUMENTS` it names)
Sampler = Callable[..., Tensor]

#: the arguments :func:`sample` can pass; a sampler takes the ones its signature names
ARGUMENTS = ("t", "params", "steps", "callback", "generator", "noise")
#: settings a caller chooses (refused, not dropped, by a sampler that does not take them); the others are context
_SETTINGS = ("steps", "noise")


@dataclass(frozen=True)
class SamplerInfo:
    """What a sampler says about itself (the registry's entry, :func:`sampler_info`).

    Attributes:
        name: its registered name (or import path).
        fn: the function, ``fn(restore, degradation, x_t, **arguments)``.
        arguments: which of :data:`ARGUMENTS` it takes (read from its signature): ``"steps"`` when it can skip
            levels, ``"noise"`` when it takes sampling noise, ``"generator"`` when it draws params or noise.
        one_shot: it calls the network once, whatever the steps (the direct reconstruction).
        calls_per_step: network calls per visited step (Heun: 2), minus ``final_saving`` on the last step.
        final_saving: calls saved on the step into level 0 (Heun takes Euler's step there: 1).
    """

    name: str
    fn: Sampler
    arguments: frozenset[str]
    one_shot: bool = False
    calls_per_step: int = 1
    final_saving: int = 0

    @property
    def takes_noise(self) -> bool:
        return "noise" in self.arguments

    @property
    def takes_steps(self) -> bool:
        return "steps" in self.arguments

    def network_calls(self, steps: int) -> int:
        """Network calls of one run that visits ``steps`` steps (levels visited minus one)."""
        if steps <= 0:
            return 0
        return 1 if self.one_shot else self.calls_per_step * steps - self.final_saving


_REGISTRY: dict[str, SamplerInfo] = {}


def _describe(name: str, fn: Sampler, one_shot: bool = False, calls_per_step: int = 1,
              final_saving: int = 0) -> SamplerInfo:
    if not callable(fn):
        raise TypeError(f"register_sampler({name!r}) needs a function, got {type(fn).__name__}")
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: assume the full one
        parameters = {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()) or not parameters:
        taken = frozenset(ARGUMENTS)
    else:
        taken = frozenset(a for a in ARGUMENTS if a in parameters)
    return SamplerInfo(name, fn, taken, bool(one_shot), int(calls_per_step), int(final_saving))


def register_sampler(name: str, *, one_shot: bool = False, calls_per_step: int = 1,
                     final_saving: int = 0) -> Callable[[Sampler], Sampler]:
    """Decorator: register ``fn`` as the sampler ``name`` (used by ``sampler=`` everywhere: models, configs,
    ``sample.py --sampler``, ``evaluate.py --sampler``).

    A sampler is ``fn(restore, degradation, x_t, ...)`` taking the arguments of :data:`ARGUMENTS` it uses, by
    name (``t``, ``params``, ``steps``, ``callback``, ``generator``, ``noise``): :func:`sample` passes only those,
    and refuses a ``steps`` or ``noise`` that it does not take.  The decorator's keywords say what the signature
    cannot: ``one_shot`` (one network call, whatever the steps), ``calls_per_step`` and ``final_saving`` (the
    network calls of a run, :meth:`SamplerInfo.network_calls`).

    Example:
        >>> @register_sampler("twice-direct", one_shot=True)
        ... def twice_direct(restore, degradation, x_t, t=None, callback=None):
        ...     return sample_direct(restore, degradation, x_t, t, callback=callback)
        >>> "twice-direct" in sampler_names(), sampler_info("twice-direct").takes_noise
        (True, False)
    """
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"a sampler name must be a non-empty string without dots (dots mean an import path), "
                         f"got {name!r}")
    if isinstance(calls_per_step, bool) or not isinstance(calls_per_step, int) or calls_per_step < 1 \
            or not isinstance(final_saving, int) or not 0 <= final_saving < calls_per_step:
        raise ValueError(f"register_sampler({name!r}): calls_per_step must be an int >= 1 and final_saving an int in "
                         f"[0, calls_per_step), got {calls_per_step!r} and {final_saving!r}")

    def decorate(fn: Sampler) -> Sampler:
        info = _describe(name, fn, one_shot, calls_per_step, final_saving)
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            known = _REGISTRY[name].fn
            raise ValueError(f"a sampler named {name!r} is already registered ({known.__module__}."
                             f"{known.__qualname__})")
        _REGISTRY[name] = info
        return fn

    return decorate


def sampler_names() -> tuple[str, ...]:
    """The registered samplers' names, in registration order."""
    return tuple(_REGISTRY)


def check_sampler_name(name: Any, who: str = "sampler", allow: Sequence[str] | None = None) -> str:
    """Check a sampler name without importing anything, and return it: a registered name, or an import path
    ``"package.module.function"``.

    ``allow=None`` (a caller in Python or the user's own training config) accepts any import path; a sequence means
    the name comes from a file's config (a checkpoint or export): then a path must be listed in ``allow`` (checked on
    the string, before anything is imported; :func:`colddiff._config.check_class_path`).
    """
    from colddiff._config import CLASS_PATH, check_class_path

    if isinstance(name, str) and name in _REGISTRY:
        return name
    if isinstance(name, str) and CLASS_PATH.fullmatch(name):
        if allow is None:
            return name
        return check_class_path(name, who, prefixes=(), allow=allow, kind="registered samplers")
    raise ValueError(f"{who} must be one of {sampler_names()} (registered samplers) or an import path "
                     f"'package.module.function', got {name!r}")


def sampler_info(sampler: SamplerName | Sampler, allow: Sequence[str] | None = None) -> SamplerInfo:
    """What a sampler says about itself: the registry's entry for a name (or for a registered function); for an import
    path or an unregistered function, what its signature says (one network call per step)."""
    if callable(sampler):
        for info in _REGISTRY.values():
            if info.fn is sampler:
                return info
        return _describe(getattr(sampler, "__qualname__", "sampler"), sampler)
    from colddiff._config import resolve_callable

    name = check_sampler_name(sampler, allow=allow)
    if name in _REGISTRY:
        return _REGISTRY[name]
    return _describe(name, resolve_callable(name, "sampler", allow=[name]))


def get_sampler(name: str, allow: Sequence[str] | None = None) -> Sampler:
    """The sampler registered as ``name``, or the function at import path ``name`` (imported on first use; see
    :func:`check_sampler_name` for ``allow``)."""
    return sampler_info(name, allow).fn


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


def prepare(
    degradation: Degradation,
    x_t: Tensor,
    t: int | None,
    params: Mapping[str, Tensor] | None,
    generator: torch.Generator | None,
    need_params: bool = True,
) -> tuple[Tensor, int, Params]:
    """A sampler's first step: validate ``x_t`` and its level ``t`` (default ``T``), check the given ``params`` or
    draw them with ``generator`` (unless ``need_params`` is false); returns ``(x_t, start level, params)``."""
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


class Prediction:
    """What one network call tells a sampler at ``(x_t, t)``.

    Attributes:
        x0: ``x0_hat``, what ``restore(x_t, t)`` returns (clipped when the model's objective says so).
        noise: the network's noise estimate ``z~_hat`` in centred units (the ε output of an ε-model, else the noise
            the unclipped ``x0_hat`` implies), or ``None`` when the restorer gives none; computed when first read
            (``noise`` may be a function of no arguments that returns it).
        previous: the less degraded image ``D(x0, t - 1)`` when the network predicts it directly (Inverse Heat
            Dissipation's objective), else ``None``.
        noise_is_output: whether ``noise`` is the network's own output (an ε-model), not derived from ``x0_hat``:
            the samplers whose paper writes the step with the network's ε (Blurring Diffusion's) use it then.
    """

    def __init__(self, x0: Tensor, noise: Tensor | Callable[[], Tensor | None] | None = None,
                 previous: Tensor | None = None, noise_is_output: bool = False) -> None:
        self.x0, self.previous, self._noise, self.noise_is_output = x0, previous, noise, noise_is_output

    @property
    def noise(self) -> Tensor | None:
        if callable(self._noise):
            self._noise = self._noise()
        return self._noise


class Denoiser:
    """A restorer that also says what else its network output means: ``denoiser(x_t, t)`` is ``x0_hat`` (any sampler
    takes it as its ``restore``), ``denoiser.predict(x_t, t)`` the whole :class:`Prediction` of the same call.

    :meth:`colddiff.pipeline.Pipeline.sample` hands its samplers one; a plain ``restore`` function works everywhere
    too (:func:`predict` then derives the noise from ``x0_hat``).
    """

    def __init__(self, predict_fn: Callable[[Tensor, Tensor], Prediction]) -> None:
        self.predict = predict_fn

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        return self.predict(x_t, t).x0


def predict(restore: Restore, degradation: Degradation, x_t: Tensor, t: Tensor) -> Prediction:
    """One network call's :class:`Prediction`: the restorer's own when it is a :class:`Denoiser`, else ``x0_hat`` with
    the noise it implies for a noise-bearing degradation (:meth:`SignalNoise.noise_estimate`)."""
    if isinstance(restore, Denoiser):
        return restore.predict(x_t, t)
    x0_hat = restore(x_t, t)
    if not (isinstance(degradation, SignalNoise) and degradation.param_keys):
        return Prediction(x0_hat)
    return Prediction(x0_hat, lambda: degradation.noise_estimate(x_t, x0_hat.to(x_t.dtype), t))


def _check_restore(restore: Any) -> None:
    if not callable(restore):
        raise TypeError(f"restore must be a callable restore(x_t, t) -> x0_hat, got {type(restore).__name__}")


def level_tensor(level: int, batch: int, device: torch.device | str) -> Tensor:
    """One level for a whole batch, as the ``(B,)`` long tensor that ``restore`` and the operators take."""
    return torch.full((batch,), int(level), dtype=torch.long, device=device)


def sampling_deltas(noise: Noise, num_steps: int) -> list[float] | None:
    """The per-level sampling noise ``delta_0..delta_T`` of ``noise`` (a number or ``T + 1`` values), or ``None``."""
    return None if noise is None else level_values(noise, num_steps, "noise").tolist()


def add_sampling_noise(x: Tensor, delta: float,
                       generator: torch.Generator | Sequence[torch.Generator] | None) -> Tensor:
    """``x + delta * eps`` with fresh standard normal ``eps`` from ``generator`` (or one generator per image)."""
    return x + delta * randn(tuple(x.shape), generator, x)


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
    x, start, params = prepare(degradation, x_t, t, params, generator)
    levels = timesteps(start, steps)
    deltas = sampling_deltas(noise, degradation.num_steps)
    batch = x.shape[0]
    noised = False
    for i, (s, s_next) in enumerate(zip(levels[:-1], levels[1:])):
        level, level_next = level_tensor(s, batch, x.device), level_tensor(s_next, batch, x.device)
        # the state stays in its own precision (float32 under autocast): D of a half-precision x0_hat, and the
        # difference of two such terms, would lose digits at every one of T steps
        guess = predict(restore, degradation, x, level) if isinstance(restore, Denoiser) else None
        x0_hat = (guess.x0 if guess is not None else restore(x, level)).to(x.dtype)
        previous = None if guess is None else guess.previous
        if previous is not None and s_next != s - 1:
            raise ValueError(f"this model's network predicts the next level only (D(x0, t - 1): Inverse Heat "
                             f"Dissipation's objective), so its sampler cannot step from level {s} to {s_next}: "
                             "sample every level (steps=None), or train with num_steps the levels to sample")
        params = degradation.update_params(x, x0_hat, level, params)
        if previous is not None and rule == "naive":  # Algorithm 1 with the network's own D(x0, t - 1): IHDM's step
            x_next = previous.to(x.dtype)
        elif rule == "naive" or (s_next == 0 and noised):
            # with sampling noise, Algorithm 2's residual x_s - D(x0_hat, s) holds the noise added so far (it is
            # carried to the end, not removed): the last step returns the restorer's estimate, as Algorithm 1 does
            x_next = degradation.degrade(x0_hat, level_next, params)
        else:
            x_next = x + degradation.step_difference(x0_hat, level, level_next, params)
        if deltas is not None and s_next > 0 and deltas[s_next] > 0:
            x_next = add_sampling_noise(x_next, deltas[s_next], generator)
            noised = True
        if callback is not None:
            callback({"i": i, "t": s, "t_next": s_next, "x": x, "x0_hat": x0_hat, "x_next": x_next})
        x = x_next
    return x


@register_sampler("naive")
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


@register_sampler("improved")
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


@register_sampler("direct", one_shot=True)
@torch.no_grad()
def sample_direct(
    restore: Restore,
    degradation: Degradation,
    x_t: Tensor,
    t: int | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """One-shot reconstruction ``R(x_t, t)``: one network call, no intermediate levels (so no ``steps`` and no
    sampling ``noise``: :func:`sample` refuses them for this sampler).

    Shape:
        ``x_t``: ``(B, C, H, W)``; output: ``(B, C, H, W)``.
    """
    _check_restore(restore)
    x, start, _ = prepare(degradation, x_t, t, None, None, need_params=False)
    level = level_tensor(start, x.shape[0], x.device)
    x0_hat = restore(x, level) if start > 0 else x
    if callback is not None:
        callback({"i": 0, "t": start, "t_next": 0, "x": x, "x0_hat": x0_hat, "x_next": x0_hat})
    return x0_hat


@register_sampler("heun", calls_per_step=2, final_saving=1)
@torch.no_grad()
def sample_heun(
    restore: Restore,
    degradation: Degradation,
    x_t: Tensor,
    t: int | None = None,
    steps: int | Sequence[int] | Tensor | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Heun's second-order method on the probability-flow ODE of a Gaussian path (flow matching, DDIM's ODE).

    Any path ``x~_t = alpha_t x~0 + sigma_t eps`` (:class:`~colddiff.degradations.base.SignalNoise` with ``A_t =
    I``: :class:`~colddiff.degradations.FlowNoise`, :class:`~colddiff.degradations.GaussianNoise`) is a straight
    line after rescaling: ``y = x~ / (alpha + sigma) = (1 - tau) x~0 + tau eps`` with ``tau = sigma / (alpha +
    sigma)`` (for the flow's path, ``y = x~`` and ``tau = s``).  Its ODE is ``dy/dtau = (y - x~0_hat(y)) / tau``,
    whose Euler step is DDIM (and Algorithm 2 with the noise re-estimated); Heun's method (Karras et al.,
    arXiv 2206.00364, Algorithm 1; Liu et al.'s rectified flow samples with it) averages the slopes at both ends of
    each step, and takes Euler's step into level 0 (where the slope is undefined).  Two network calls per step, one
    for the last: ``2 n - 1`` for ``n`` steps.  Deterministic: it takes no sampling noise.

    Arguments as :func:`sample_naive` (``t``, ``steps``, ``callback``).

    Shape:
        ``x_t``: ``(B, C, H, W)``; output (the level-0 image): ``(B, C, H, W)``.
    """
    _check_restore(restore)
    _gaussian_path(degradation, "heun")
    x, start, _ = prepare(degradation, x_t, t, None, None, need_params=False)
    levels = timesteps(start, steps)

    def rescaled(level: Tensor) -> tuple[Tensor, Tensor]:  # (alpha + sigma, tau), (B, 1, 1, 1) in x's dtype
        alpha, sigma = degradation.coefficients(level)
        return (alpha + sigma).to(x)[:, None, None, None], (sigma / (alpha + sigma)).to(x)[:, None, None, None]

    batch = x.shape[0]
    for i, (s, s_next) in enumerate(zip(levels[:-1], levels[1:])):
        level, level_next = level_tensor(s, batch, x.device), level_tensor(s_next, batch, x.device)
        (scale, tau), (scale_next, tau_next) = rescaled(level), rescaled(level_next)
        x0_hat = restore(x, level).to(x.dtype)
        y = (2 * x - 1) / scale
        slope = (y - (2 * x0_hat - 1)) / tau
        y_next = y + (tau_next - tau) * slope
        if s_next > 0:
            x_euler = 0.5 + 0.5 * y_next * scale_next
            slope_next = (y_next - (2 * restore(x_euler, level_next).to(x.dtype) - 1)) / tau_next
            y_next = y + (tau_next - tau) * 0.5 * (slope + slope_next)
        x_next = 0.5 + 0.5 * y_next * scale_next
        if callback is not None:
            callback({"i": i, "t": s, "t_next": s_next, "x": x, "x0_hat": x0_hat, "x_next": x_next})
        x = x_next
    return x


def _gaussian_path(degradation: Degradation, who: str) -> None:
    """Heun's precondition: a Gaussian path ``x~_t = alpha_t x~0 + sigma_t eps`` without a signal operator."""
    if not (isinstance(degradation, SignalNoise) and degradation.signal_is_identity and degradation.noise_is_gaussian):
        raise ValueError(f"the {who} sampler integrates the probability-flow ODE of a Gaussian path without a signal "
                         f"operator (FlowNoise, GaussianNoise), got {type(degradation).__name__}; use 'dpm++2m' or "
                         "'unipc' (also for BlurNoise), 'improved' (DDIM) or 'ancestral'")


def _spectral_path(degradation: Degradation, who: str) -> None:
    """The multistep solvers' precondition: a Gaussian path ``x~_t = alpha_t A_t x~0 + sigma_t eps`` whose signal
    operator is the identity or positive and invertible (then every frequency has a finite log-SNR)."""
    if not (isinstance(degradation, SignalNoise) and degradation.noise_is_gaussian):
        raise ValueError(f"the {who} sampler integrates the probability-flow ODE of a Gaussian path (GaussianNoise, "
                         f"FlowNoise, BlurNoise), got {type(degradation).__name__}; use 'improved' or 'naive'")
    if not degradation.signal_is_identity and not (degradation.signal_nonnegative()
                                                   and degradation.signal_invertible()):
        raise ValueError(f"the {who} sampler works frequency by frequency and needs a positive, invertible signal "
                         f"operator (the heat blur with min_scale > 0), got {degradation!r}; use 'improved' (DDIM)")


def _log_snr(degradation: SignalNoise, levels: Sequence[int], x: Tensor
             ) -> tuple[list[Tensor], list[float], list[Tensor]]:
    """Per visited level, frequency by frequency: ``alpha_t d_t`` (the signal coefficient times the signal
    operator's spectrum, :meth:`~colddiff.degradations.base.SignalNoise.signal_spectrum`; ``(1, *S)`` float64),
    ``sigma_t``, and ``lambda = log(alpha_t d_t / sigma_t)`` (half the log-SNR; ``-inf`` where no signal is left,
    ``+inf`` at level 0).  For an operator without a signal operator ``S = (1, 1)``: one value per level."""
    alphas, sigmas, lams = [], [], []
    for level in levels:
        t = level_tensor(level, 1, x.device)
        alpha, sigma = (float(c) for c in degradation.coefficients(t))
        alpha_f = alpha * degradation.signal_spectrum(t, x.shape[-2], x.shape[-1]).double()
        alphas.append(alpha_f)
        sigmas.append(sigma)
        lams.append(alpha_f.log() - math.log(sigma) if sigma > 0 else torch.full_like(alpha_f, math.inf))
    return alphas, sigmas, lams


@register_sampler("dpm++2m")
@torch.no_grad()
def sample_dpmpp_2m(
    restore: Restore,
    degradation: Degradation,
    x_t: Tensor,
    t: int | None = None,
    steps: int | Sequence[int] | Tensor | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """DPM-Solver++(2M): the multistep second-order exponential integrator of the probability-flow ODE in data
    prediction (Lu et al., arXiv 2211.01095, Algorithm 2), for any Gaussian path ``x~_t = alpha_t A_t x~0 + sigma_t
    eps`` (:class:`~colddiff.degradations.GaussianNoise` on any schedule, :class:`~colddiff.degradations.FlowNoise`,
    and, frequency by frequency, :class:`~colddiff.degradations.BlurNoise`'s blur plus noise), whatever the network
    predicts (ε, v, a velocity: the samplers receive ``x0_hat``, clipped when the objective says so, their "data
    prediction").

    With ``lambda = log(alpha / sigma)`` (half the log-SNR), ``h_i = lambda_{t_i} - lambda_{t_{i-1}}`` and
    ``r_i = h_{i-1} / h_i``, one network call per step::

        D_i = (1 + 1 / (2 r_i)) x0_hat_{i-1} - 1 / (2 r_i) x0_hat_{i-2}                   (first step: D_1 = x0_hat_0)
        x~_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x~_{t_{i-1}} - alpha_{t_i} (exp(-h_i) - 1) D_i

    For a signal operator ``A_t = V diag(d_t) V^T`` (the heat blur's DCT) the path is diagonal in ``V``'s basis with
    ``alpha_t d_t`` in place of ``alpha_t``: ``lambda``, ``h``, ``r`` and the coefficients are per frequency, and each
    term is one filter (:meth:`~colddiff.degradations.base.SignalNoise.apply_spectrum`), the same derivation applied
    to every frequency's scalar ODE (its ``sigma_t`` is shared).  The x0 term's weight ``alpha_{t_i} d (1 - e^-h)``
    stays below the signal kept at ``t_i``: no frequency amplifies an error of ``x0_hat`` (an ε-model's ``x0_hat``
    carries its own ``1 / (alpha d)``).

    The first step is DDIM's (first order; from a start with no signal, ``lambda = -inf``, it is
    ``x~ = sigma x~_T + alpha x0_hat``, and the next step's ``r`` is infinite: first order again, the limit of the
    formula), and so is the step into level 0 (``sigma = 0``, ``lambda = +inf``: it returns ``x0_hat``, the
    "lower order final" step of their code).  With an exact denoiser the error falls as the square of the step size
    (``tests/test_sampler_families.py``).  Deterministic: it takes no sampling noise.

    Arguments as :func:`sample_naive` (``t``, ``steps``, ``callback``).

    Shape:
        ``x_t``: ``(B, C, H, W)``; output (the level-0 image): ``(B, C, H, W)``.
    """
    _check_restore(restore)
    _spectral_path(degradation, "dpm++2m")
    x, start, _ = prepare(degradation, x_t, t, None, None, need_params=False)
    levels = timesteps(start, steps)
    alpha, sigma, lam = _log_snr(degradation, levels, x)
    apply = degradation.apply_spectrum
    batch = x.shape[0]
    y = 2 * x - 1  # centred units, where the path is x~ = alpha A x~0 + sigma eps
    previous: Tensor | None = None  # the last step's centred x0_hat
    previous_h: Tensor | None = None
    for i, (s, s_next) in enumerate(zip(levels[:-1], levels[1:])):
        x0_hat = restore(0.5 + 0.5 * y, level_tensor(s, batch, x.device)).to(x.dtype)
        d = 2 * x0_hat - 1
        if s_next == 0:  # sigma = 0: the data prediction itself
            y_next = d
        else:
            h = lam[i + 1] - lam[i]
            weight = -alpha[i + 1] * torch.expm1(-h)  # alpha_{t_i} (1 - e^-h), per frequency
            y_next = (sigma[i + 1] / sigma[i]) * y
            if previous is None:
                y_next = y_next + apply(d, weight)
            else:  # 1 / (2 r) = h / (2 h_prev); 0 (first order) after a step from no signal (h_prev = inf)
                half = torch.where(previous_h.isfinite(), h / (2 * previous_h), torch.zeros_like(h))
                y_next = y_next + apply(d, weight * (1 + half)) - apply(previous, weight * half)
            previous_h = h
        previous = d
        if callback is not None:
            callback({"i": i, "t": s, "t_next": s_next, "x": 0.5 + 0.5 * y, "x0_hat": x0_hat,
                      "x_next": 0.5 + 0.5 * y_next})
        y = y_next
    return 0.5 + 0.5 * y


def _unipc_coefficients(h: Tensor, r: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """UniC's ``rho^c`` for data prediction with ``B(h) = e^h - 1`` (their "bh2"), per frequency, in closed form for
    colddiff's order 2 (Zhao et al., arXiv 2302.04867, Algorithms 1-2): the solution of ``R rho = b``, ``R``'s rows
    ``r_k^(i-1)`` and ``b_i = h phi_{i+1}(h) i! / B(h)`` in the step's ``hh = -h``.  ``r`` is the earlier estimate's
    ``(lambda_1 - lambda_0) / h`` (``None``: no earlier estimate, first order).  Returns ``(rho_new, rho_earlier)``:
    the weights of the new estimate's difference and (order 2) of the earlier one's."""
    hh = -h
    b_h = torch.expm1(hh)
    finite = hh.isfinite()
    safe = torch.where(finite, hh, -torch.ones_like(hh))
    phi_1 = torch.where(finite, b_h / safe - 1.0, -torch.ones_like(hh))  # hh = -inf: h phi_1 / hh = 0
    b1 = phi_1 / b_h
    if r is None:
        return b1, None
    phi_2 = torch.where(finite, phi_1 / safe - 0.5, -0.5 * torch.ones_like(hh))
    b2 = 2.0 * phi_2 / b_h
    rho_earlier = (b1 - b2) / (1.0 - r)  # rows (1, 1) and (r, 1): r < 0 for an earlier (noisier) estimate
    return b1 - rho_earlier, rho_earlier


@register_sampler("unipc")
@torch.no_grad()
def sample_unipc(
    restore: Restore,
    degradation: Degradation,
    x_t: Tensor,
    t: int | None = None,
    steps: int | Sequence[int] | Tensor | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """UniPC (Zhao et al., arXiv 2302.04867): the second-order multistep predictor UniP-2 with the corrector UniC, in
    data prediction with ``B(h) = e^h - 1`` ("bh2", the default of their code and of diffusers), for any Gaussian path
    (as :func:`sample_dpmpp_2m`, frequency by frequency for a signal operator).  One network call per step: the
    network's estimate at the predicted point both corrects that point and is the next step's history.

    With ``lambda = log(alpha / sigma)``, ``h = lambda_t - lambda_{t_0}``, the earlier estimate's ``r_1 = (lambda_1 -
    lambda_{t_0}) / h`` and ``D_1 = (x0_hat_1 - x0_hat_0) / r_1``, in centred units::

        x~' = (sigma_t / sigma_{t_0}) x~_{t_0} - alpha_t (e^-h - 1) x0_hat_0                      (DDIM's part)
        x~_t(pred) = x~' - alpha_t B(h) rho^p D_1                                  (UniP; rho^p = 1/2 for order 2)
        x~_t = x~' - alpha_t B(h) (rho^c_1 D_1 + rho^c_t (x0_hat(x~_t(pred), t) - x0_hat_0))          (UniC)

    with ``rho^c`` the solution of ``R rho = b`` (:func:`_unipc_coefficients`; their order-1 shortcut 1/2 is this
    solution's limit for small ``h``, used exactly here so that a step from a start without signal, ``h = inf``, puts
    all the weight on the new estimate).  The order warms up (first order while no earlier estimate with a finite
    ``lambda`` exists: a start without signal is not one), and the step into level 0 returns ``x0_hat`` (no corrector
    there, as their code).  For a signal operator every coefficient is a per-frequency filter (``1 / r_1`` included).
    With an exact denoiser the error falls at least as the cube of the step size
    (``tests/test_sampler_families.py``).  Deterministic: it takes no sampling noise.

    Arguments as :func:`sample_naive` (``t``, ``steps``, ``callback``).

    Shape:
        ``x_t``: ``(B, C, H, W)``; output (the level-0 image): ``(B, C, H, W)``.
    """
    _check_restore(restore)
    _spectral_path(degradation, "unipc")
    x, start, _ = prepare(degradation, x_t, t, None, None, need_params=False)
    levels = timesteps(start, steps)
    alpha, sigma, lam = _log_snr(degradation, levels, x)
    apply = degradation.apply_spectrum
    batch = x.shape[0]

    def estimate(y: Tensor, level: int) -> Tensor:  # the centred x0_hat at a state
        return 2 * restore(0.5 + 0.5 * y, level_tensor(level, batch, x.device)).to(x.dtype) - 1

    y = 2 * x - 1
    lam_0, m_0 = lam[0], estimate(y, levels[0])
    earlier: tuple[Tensor, Tensor] | None = None  # (lambda, x0_hat) of the estimate before m_0, where it is finite
    for i, (s, s_next) in enumerate(zip(levels[:-1], levels[1:])):
        if s_next == 0:  # sigma = 0: the data prediction itself
            y_next = m_0
        else:
            h = lam[i + 1] - lam_0
            b_h = torch.expm1(-h)
            weight = -alpha[i + 1] * b_h  # alpha_t B(h) enters with a minus sign: alpha_t (1 - e^-h) >= 0
            base = (sigma[i + 1] / sigma[i]) * y + apply(m_0, weight)
            r = None if earlier is None else (earlier[0] - lam_0) / h
            rho_new, rho_earlier = _unipc_coefficients(h, r)
            predicted = base
            if earlier is not None:  # UniP-2: rho^p = 1/2 on D_1 = (x0_hat_1 - x0_hat_0) / r_1
                predicted = base + apply(earlier[1] - m_0, weight * 0.5 / r)
            m_next = estimate(predicted, s_next)
            y_next = base + apply(m_next - m_0, weight * rho_new)
            if earlier is not None:
                y_next = y_next + apply(earlier[1] - m_0, weight * rho_earlier / r)
            earlier = (lam_0, m_0) if bool(lam_0.isfinite().all()) else None
            lam_0, m_0 = lam[i + 1], m_next
        if callback is not None:
            callback({"i": i, "t": s, "t_next": s_next, "x": 0.5 + 0.5 * y, "x0_hat": 0.5 + 0.5 * m_0,
                      "x_next": 0.5 + 0.5 * y_next})
        y = y_next
    return 0.5 + 0.5 * y


def ancestral_refusal(degradation: Degradation) -> str | None:
    """Why :func:`ancestral_step` cannot draw from ``degradation``'s posterior (``None``: it can), read from the
    :class:`~colddiff.degradations.base.SignalNoise` protocol: the posterior ``q(x_s | x_t, x0)`` is Gaussian for
    Gaussian noise (``noise_is_gaussian``) at every level ``t >= 1`` (``sigma_t > 0``), and with a signal operator it
    is drawn frequency by frequency, which needs every eigenvalue of ``A_t`` positive (``signal_nonnegative`` and
    ``signal_invertible``)."""
    name = type(degradation).__name__
    if not isinstance(degradation, SignalNoise):
        return (f"{name} is not a Gaussian forward process (a SignalNoise degradation: GaussianNoise, FlowNoise, "
                "BlurNoise)")
    if not degradation.signal_is_identity and not (degradation.signal_nonnegative()
                                                   and degradation.signal_invertible()):
        what = "vanishes at some frequencies" if degradation.signal_nonnegative() else "changes sign"
        return (f"{name}'s frequency-wise posterior needs a positive, invertible transfer function (a signal operator "
                f"that keeps part of every frequency: BlurNoise's heat blur with min_scale > 0), and that of "
                f"{degradation!r} {what}")
    if not degradation.noise_is_gaussian:
        return f"{name}'s noise image is not Gaussian noise (its posterior is not Gaussian)"
    _, sigma = degradation.level_coefficients()
    if not bool((sigma > 0).all()):
        return f"{name} has noise-free levels (sigma_t = 0): there is no posterior to draw from"
    return None


def ancestral_step(degradation: SignalNoise, x_t: Tensor, x0_hat: Tensor, t: Tensor, s: Tensor,
                   generator: torch.Generator | Sequence[torch.Generator] | None = None,
                   noise_hat: Tensor | None = None) -> Tensor:
    """A draw of ``x_s`` from the forward process's posterior ``q(x_s | x_t, x0 = x0_hat)``, ``s < t``: one step of
    the ancestral sampler (hot path, no checks: :func:`ancestral_refusal` says which operators it serves).

    Written once for every Gaussian path ``x~_t = alpha_t A_t x~0 + sigma_t eps`` in the eigenbasis of its signal
    operator (:meth:`~colddiff.degradations.base.SignalNoise.signal_spectrum`, ``A_t = V diag(d_t) V^T``; ``d_t = 1``
    for ``A_t = I``, one value per sample): frequency by frequency the path is scalar, with signal coefficient
    ``alpha_t = a_t d_t`` (``a_t`` the noise schedule's), ``alpha_ts = alpha_t / alpha_s`` and ``sigma_ts^2 =
    sigma_t^2 - alpha_ts^2 sigma_s^2``, and the posterior is Gaussian with variance ``sigma_s^2 sigma_ts^2 /
    sigma_t^2``; each coefficient below is one filter
    (:meth:`~colddiff.degradations.base.SignalNoise.apply_spectrum`), and the filtered white noise is the posterior's
    (coloured) noise.  Its mean in one of two forms:

    * **x0 form** (DDPM, Ho et al., arXiv 2006.11239, eqs. 6-7), frequency by frequency, without ``noise_hat``; it
      reads ``x0_hat`` (which the objective may have clipped to the data range, as DDPM does), in the images'
      precision for ``A_t = I`` and in float64 for a signal operator::

          mu = (alpha_ts sigma_s^2 / sigma_t^2) x~_t + (alpha_s sigma_ts^2 / sigma_t^2) x~0_hat

    * **epsilon form** (Blurring Diffusion, Hoogeboom & Salimans, arXiv 2209.05557, their ``denoise``), for a signal
      operator given the network's noise estimate ``noise_hat`` (an ε-model: centred units): computed from
      ``eps_hat`` as they compute it, never from an ``x0_hat`` obtained by dividing by ``a_t d_t``, in float64 (the
      first two terms are large, ``1 / alpha_ts``, and cancel where a step reveals a frequency), with denominators
      clipped at 1e-12 (their pseudo-code clips at 1e-8)::

          mu = u_t / alpha_ts - sigma_ts^2 / (alpha_ts sigma_t) eps_hat_u

      (their ``coeff_term1 u_t + coeff_term2 (u_t - sigma_t eps_hat_u)``: the posterior with ``x0`` implied by
      ``eps_hat``).  A model that predicts x0, v or a velocity gives no ``noise_hat`` here: its ``x0_hat`` enters
      the x0 form directly (the noise it implies would lose ``x0_hat`` where no signal is left, ``alpha_t = 0``).

    Both are the same posterior when ``x0_hat`` and ``noise_hat`` agree.  At ``s = 0`` the step returns ``x0_hat``
    (colddiff's level 0 is the clean image; Blurring Diffusion's last step adds noise of std ``sigma_0 = 0.0067``).
    The noise is drawn from ``generator`` (or one generator per image).

    Shape:
        ``x_t``, ``x0_hat``, ``noise_hat``: ``(B, C, H, W)``; ``t``, ``s``: ``(B,)`` long; output: ``(B, C, H, W)``.
    """
    height, width = x_t.shape[-2:]
    (a_t, sigma_t), (a_s, sigma_s) = degradation.coefficients(t), degradation.coefficients(s)
    spectrum_t = degradation.signal_spectrum(t, height, width)
    shape = (-1,) + (1,) * (spectrum_t.ndim - 1)

    def per(v: Tensor) -> Tensor:  # a per-sample (B,) coefficient against (B, *S) spectra
        return v.to(spectrum_t.device).reshape(shape)

    alpha_t = per(a_t) * spectrum_t  # a_t d_t, frequency by frequency
    alpha_s = per(a_s) * degradation.signal_spectrum(s, height, width)
    var_t, var_s = per(sigma_t**2), per(sigma_s**2)
    noise = randn(tuple(x_t.shape), generator, x_t)
    apply = degradation.apply_spectrum
    if noise_hat is None or degradation.signal_is_identity:  # DDPM's x0 form
        alpha_ts = alpha_t / alpha_s.clamp(min=1e-12)
        var_ts = (var_t - alpha_ts**2 * var_s).clamp(min=0.0)
        var_t = var_t.clamp(min=1e-12)
        dtype = x_t.dtype if degradation.signal_is_identity else torch.float64
        x_s = (apply((2 * x_t - 1).to(dtype), alpha_ts * var_s / var_t)
               + apply((2 * x0_hat - 1).to(dtype), alpha_s * var_ts / var_t)
               + apply(noise.to(dtype), (var_s * var_ts / var_t).sqrt())).to(x_t.dtype)
    else:  # Blurring Diffusion's epsilon form, in float64
        alpha_ts = (alpha_t / alpha_s.clamp(min=1e-12)).clamp(min=1e-12)
        var_ts = (var_t - alpha_ts**2 * var_s).clamp(min=0.0)
        x_s = (apply((2 * x_t - 1).double(), 1.0 / alpha_ts)
               + apply(noise_hat.double(), -var_ts / (alpha_ts * per(sigma_t).clamp(min=1e-12)))
               + apply(noise.double(), (var_s * var_ts / var_t.clamp(min=1e-12)).sqrt())).to(x_t.dtype)
    return torch.where((s == 0)[:, None, None, None], x0_hat, 0.5 + 0.5 * x_s)


@register_sampler("ancestral")
@torch.no_grad()
def sample_ancestral(
    restore: Restore,
    degradation: Degradation,
    x_t: Tensor,
    t: int | None = None,
    steps: int | Sequence[int] | Tensor | None = None,
    callback: Callback | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> Tensor:
    """The ancestral sampler of a Gaussian forward process: ``x_s ~ q(x_s | x_t, x0 = R(x_t, t))`` at each visited
    level (DDPM's Algorithm 2, Ho et al., arXiv 2006.11239; Blurring Diffusion's frequency-wise sampler for
    ``BlurNoise``, arXiv 2209.05557; with skipped levels, the posterior between the visited ones, i.e. DDIM with
    ``eta = 1``).  Each step is :func:`ancestral_step` (DDPM's x0 form for ``A_t = I``, Blurring Diffusion's epsilon
    form, read from the network's noise estimate, for a signal operator); the last step returns ``x0_hat``.  The
    posterior's own noise is drawn from ``generator`` (or one generator per image): it takes no sampling noise.

    Arguments as :func:`sample_naive` (``t``, ``steps``, ``callback``, ``generator``).

    Shape:
        ``x_t``: ``(B, C, H, W)``; output (the level-0 image): ``(B, C, H, W)``.
    """
    _check_restore(restore)
    if not isinstance(degradation, SignalNoise):
        raise ValueError(f"the ancestral sampler needs a Gaussian forward process (a SignalNoise degradation: "
                         f"GaussianNoise, FlowNoise, BlurNoise), got {type(degradation).__name__}")
    reason = ancestral_refusal(degradation)
    if reason is not None:
        raise ValueError(f"the ancestral sampler cannot sample this degradation: {reason}")
    x, start, _ = prepare(degradation, x_t, t, None, None, need_params=False)
    levels = timesteps(start, steps)
    batch = x.shape[0]
    for i, (s, s_next) in enumerate(zip(levels[:-1], levels[1:])):
        level, level_next = level_tensor(s, batch, x.device), level_tensor(s_next, batch, x.device)
        guess = predict(restore, degradation, x, level)
        x0_hat = guess.x0.to(x.dtype)
        # the epsilon form (signal operators) reads the network's own ε; an x0_hat of another objective goes in as is
        noise_hat = guess.noise if guess.noise_is_output and not degradation.signal_is_identity else None
        x_next = ancestral_step(degradation, x, x0_hat, level, level_next, generator, noise_hat)
        if callback is not None:
            callback({"i": i, "t": s, "t_next": s_next, "x": x, "x0_hat": x0_hat, "x_next": x_next})
        x = x_next
    return x


def sample(
    sampler: SamplerName | Sampler,
    restore: Restore,
    degradation: Degradation,
    x_t: Tensor,
    t: int | None = None,
    params: Mapping[str, Tensor] | None = None,
    steps: int | Sequence[int] | Tensor | None = None,
    callback: Callback | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    noise: Noise = None,
) -> Tensor:
    """Run the sampler ``sampler`` (a registered name such as ``"naive"``, ``"improved"``, ``"direct"``, an import
    path, or a sampler function itself), passing it the arguments it takes (:class:`SamplerInfo`).

    ``params``, ``generator`` and ``callback`` are context: a sampler that does not use them does not get them.
    ``steps`` and ``noise`` are settings: given to a sampler that does not take them, they are refused, naming the
    sampler (a one-shot reconstruction has no steps; an ODE solver takes no sampling noise).
    """
    info = sampler_info(sampler)
    given = {"t": t, "params": params, "steps": steps, "callback": callback, "generator": generator, "noise": noise}
    refused = [name for name in _SETTINGS if given[name] is not None and name not in info.arguments]
    if refused:
        what = {"steps": "it visits no intermediate levels (one shot)" if info.one_shot else "it skips no levels",
                "noise": "it takes no sampling noise"}
        raise ValueError(f"the {info.name} sampler does not take " + " or ".join(
            f"{name}={given[name]!r} ({what[name]})" for name in refused))
    return info.fn(restore, degradation, x_t, **{k: v for k, v in given.items() if k in info.arguments})


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
