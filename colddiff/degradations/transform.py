"""Any batched image function as a degradation: ``D(x0, t) = f(x0, s_t, **params)`` with a severity schedule.

The paper's claim is that Cold Diffusion inverts *arbitrary* transforms.  :class:`Transform` turns a function

    ``f(x, severity, **kwargs) -> x'``   (``x``: ``(B, C, H, W)`` in ``[0, 1]``; ``severity``: ``(B,)``)

into a colddiff degradation: level ``t`` applies ``f`` at the severity ``s_t`` of a per-level schedule
(:func:`colddiff.schedules.severity_schedule`: linear or exponential from the identity severity ``clean`` at level
0 to ``end`` at level ``T``, or given values), one call for a whole batch of mixed levels, and level 0 returns
``x0`` itself (``torch.where`` on ``t == 0``, whatever ``f(x, clean)`` gives: JPEG at quality 100 is not the
identity).  Fixed keyword arguments go in ``options``; random ones (an angle per image, a displacement field) are
drawn once by :meth:`Transform.make_params`, like every operator's randomness, so ``D(x, s)`` and ``D(x, s - 1)``
inside a sampler see the same draw.

**Names, not code, in configs.**  A config (YAML, a checkpoint, an export) names the function by a string:

* a **registered** name (:func:`register_transform`; colddiff registers its kornia operators: ``jpeg``,
  ``motion_blur``, ``defocus_blur``, ``rotate``, ``zoom``, ``posterize``, ``contrast``, ``elastic``), or
* a dotted path to a function that the **caller** trusts explicitly: inside
  :func:`~colddiff._config.allowed_callables`, or listed in ``ColdDiffusion.load_from_checkpoint(..., allow=[...])``.

Any other dotted path (``os.system``, ``builtins.eval``, ``subprocess.call``) is refused on the string, before
anything is imported.  A function passed as a Python object is trusted (the caller holds it) and is recorded by its
registered name, or else by its dotted path, which reloading must then allow.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from colddiff._checks import rand, randint, randn
from colddiff._config import resolve_callable
from colddiff.degradations.base import Degradation, Params
from colddiff.schedules import SeveritySchedule, severity_schedule

__all__ = ["Transform", "TransformFunction", "RegisteredTransform", "register_transform", "registered_transforms",
           "get_transform", "DISTRIBUTIONS"]

#: the distributions of :class:`Transform`'s ``random`` params (one scalar per image)
DISTRIBUTIONS = ("uniform", "normal", "choice")
_NAME = re.compile(r"[A-Za-z_]\w*")
_PLAIN = (bool, int, float, str)


class TransformFunction(Protocol):
    """``f(x, severity, **kwargs) -> x'``: batched, ``severity`` one value per image.

    Shape:
        ``x``: ``(B, C, H, W)``; ``severity``: ``(B,)``; output: ``(B, C, H, W)``.
    """

    def __call__(self, x: Tensor, severity: Tensor, /, **kwargs: Any) -> Tensor: ...


ParamDraw = Callable[..., Params]


@dataclass(frozen=True)
class RegisteredTransform:
    """A transform that configs may name.

    Attributes:
        name: the registry name (an identifier, no dots).
        function: ``f(x, severity, **kwargs)``.
        clean: the severity at which ``f`` is (close to) the identity: the schedule's value at level 0.
        end: the default severity at level ``T``.
        low, high: the valid range of severities (schedules are checked against it).
        draw: ``draw(x0, generator, **draw_options) -> params`` for random tensors ``f`` needs (e.g. a
            displacement field), or ``None``.
        param_keys: the keys ``draw`` returns.
        draw_options: the names of options that go to ``draw`` rather than to ``f`` (e.g. the field's smoothness).
        description: one line for error messages and listings.
    """

    name: str
    function: TransformFunction
    clean: float
    end: float
    low: float = -math.inf
    high: float = math.inf
    draw: ParamDraw | None = None
    param_keys: tuple[str, ...] = ()
    draw_options: tuple[str, ...] = ()
    description: str = ""


_REGISTRY: dict[str, RegisteredTransform] = {}


def register_transform(
    name: str,
    function: TransformFunction | None = None,
    *,
    clean: float,
    end: float,
    low: float = -math.inf,
    high: float = math.inf,
    draw: ParamDraw | None = None,
    param_keys: Sequence[str] = (),
    draw_options: Sequence[str] = (),
    description: str = "",
    replace: bool = False,
) -> Any:
    """Register ``function`` under ``name`` so that configs can name it (``Transform(function=name)``).

    Usable as a decorator (``@register_transform("mine", clean=0.0, end=1.0)``).  Registration is code: a file's
    config can only name what the running program registered.

    Args:
        name: an identifier (no dots: dotted strings are import paths).
        function: ``f(x, severity, **kwargs) -> x'``.
        clean, end: default severities at levels 0 and ``T``.
        low, high: valid range of severities.
        draw: ``draw(x0, generator, **draw_options) -> params`` for the random tensors ``f`` needs.
        param_keys: the keys ``draw`` returns.
        draw_options: names of :class:`Transform` options passed to ``draw`` instead of ``f``.
        description: one line shown in listings.
        replace: allow re-registering an existing name.

    Returns:
        ``function`` (or, without it, a decorator that registers and returns its argument).
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"register_transform: name must be an identifier without dots, got {name!r}")

    def add(fn: TransformFunction) -> TransformFunction:
        if not callable(fn):
            raise TypeError(f"register_transform({name!r}): function must be callable, got {type(fn).__name__}")
        if name in _REGISTRY and _REGISTRY[name].function is not fn and not replace:
            raise ValueError(f"register_transform: {name!r} is already registered "
                             f"({_REGISTRY[name].function.__module__}.{_REGISTRY[name].function.__qualname__}); "
                             "pass replace=True to replace it")
        if not (low <= float(clean) <= high and low <= float(end) <= high):
            raise ValueError(f"register_transform({name!r}): clean={clean} and end={end} must lie in [{low}, {high}]")
        if (draw is None) != (not param_keys):
            raise ValueError(f"register_transform({name!r}): give draw and param_keys together, got draw={draw!r}, "
                             f"param_keys={tuple(param_keys)}")
        _REGISTRY[name] = RegisteredTransform(name, fn, float(clean), float(end), float(low), float(high), draw,
                                              tuple(param_keys), tuple(draw_options), description)
        return fn

    return add if function is None else add(function)


def registered_transforms() -> dict[str, RegisteredTransform]:
    """Every registered transform, by name (a copy)."""
    return dict(_REGISTRY)


def get_transform(name: str) -> RegisteredTransform:
    """The registered transform ``name`` (``ValueError`` naming the registered ones otherwise)."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"unknown transform {name!r}: registered transforms are {sorted(_REGISTRY)} (register "
                         "another with colddiff.degradations.register_transform)")
    return entry


def _recordable_path(function: Callable[..., Any]) -> str | None:
    """``module.qualname`` of a function importable by that path, else ``None`` (lambdas, local functions)."""
    module, qualname = getattr(function, "__module__", None), getattr(function, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname or module == "__main__":
        return None
    return f"{module}.{qualname}"


def _resolve(function: Any, who: str) -> tuple[TransformFunction, str | None, RegisteredTransform | None]:
    """The callable, the name to record it by (``None``: not recordable) and its registry entry."""
    if isinstance(function, str):
        if "." not in function:
            entry = get_transform(function)
            return entry.function, entry.name, entry
        kind = f"colddiff's registered transforms ({', '.join(sorted(_REGISTRY))})"
        resolved = resolve_callable(function, f"{who}: function", kind=kind + " or functions you allow explicitly")
        return resolved, function, None
    if callable(function):
        for entry in _REGISTRY.values():
            if entry.function is function:
                return function, entry.name, entry
        return function, _recordable_path(function), None
    raise TypeError(f"{who}: function must be a registered transform name, a dotted path you allow, or a callable "
                    f"f(x, severity, **kwargs); got {type(function).__name__} {function!r}")


def _check_options(options: Any, who: str) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"{who}: options must be a dict of keyword arguments, got {type(options).__name__}")
    for key, value in options.items():
        if not isinstance(key, str) or not _NAME.fullmatch(key):
            raise ValueError(f"{who}: option names must be identifiers, got {key!r}")
        if not isinstance(value, _PLAIN):
            raise TypeError(f"{who}: options[{key!r}] must be a bool, int, float or str (it is saved in the config), "
                            f"got {type(value).__name__}")
    return dict(options)


def _check_random(random: Any, who: str) -> dict[str, tuple[str, tuple[float, ...]]]:
    """``{name: [distribution, *numbers]}`` → ``{name: (distribution, numbers)}``, checked."""
    if random is None:
        return {}
    if not isinstance(random, Mapping):
        raise TypeError(f"{who}: random must be a dict {{name: [distribution, numbers...]}}, got "
                        f"{type(random).__name__}")
    specs = {}
    for key, spec in random.items():
        if not isinstance(key, str) or not _NAME.fullmatch(key):
            raise ValueError(f"{who}: random param names must be identifiers, got {key!r}")
        if not isinstance(spec, (list, tuple)) or not spec or spec[0] not in DISTRIBUTIONS:
            raise ValueError(f"{who}: random[{key!r}] must be [distribution, numbers...] with distribution one of "
                             f"{DISTRIBUTIONS}, got {spec!r}")
        dist, numbers_ = spec[0], spec[1:]
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in numbers_):
            raise ValueError(f"{who}: random[{key!r}]: the numbers after {dist!r} must be finite, got {spec!r}")
        values = tuple(float(v) for v in numbers_)
        if dist == "uniform" and (len(values) != 2 or values[0] > values[1]):
            raise ValueError(f"{who}: random[{key!r}] = ['uniform', low, high] with low <= high, got {spec!r}")
        if dist == "normal" and (len(values) != 2 or values[1] < 0):
            raise ValueError(f"{who}: random[{key!r}] = ['normal', mean, std] with std >= 0, got {spec!r}")
        if dist == "choice" and not values:
            raise ValueError(f"{who}: random[{key!r}] = ['choice', value, ...] needs at least one value, got {spec!r}")
        specs[key] = (dist, values)
    return specs


def _draw_scalars(dist: str, values: tuple[float, ...], batch: int, generator: torch.Generator | None,
                  like: Tensor) -> Tensor:
    if dist == "uniform":
        low, high = values
        return low + (high - low) * rand((batch,), generator, like)
    if dist == "normal":
        mean, std = values
        return mean + std * randn((batch,), generator, like)
    choices = torch.tensor(values, dtype=like.dtype, device=like.device)
    return choices[randint(len(values), (batch,), generator, like)]


def _describe_random(specs: Mapping[str, tuple[str, tuple[float, ...]]]) -> str:
    return ", ".join(f"{k} ~ {d}{list(v)}" for k, (d, v) in specs.items())


class Transform(Degradation):
    """``D(x0, t) = f(x0, s_t, **options, **params)``, any batched image function as a degradation.

    Level ``t`` uses the severity ``s_t`` of a per-level schedule; a batch of mixed levels is one call of ``f``
    (``f`` receives one severity per image), and ``D(x0, 0) == x0`` exactly.  Outputs are clamped to ``[0, 1]``
    (``clamp=False`` to keep them as ``f`` returns them).  Half-precision images are transformed in float32 and
    returned in their dtype.

    Args:
        num_steps: ``T``.
        function: a registered name (``"jpeg"``, ``"motion_blur"`` ... see :func:`registered_transforms`), a
            dotted path to a function you allow explicitly (see the module docstring), or a callable
            ``f(x, severity, **kwargs)``.
        schedule: ``"linear"`` or ``"exponential"`` from ``clean`` (level 0) to ``end`` (level ``T``).
        clean: the severity at which ``f`` is the identity (default: the registered transform's).  It is the
            schedule's level-0 entry; level 0 itself never depends on it.
        end: the severity at level ``T`` (default: the registered transform's).
        severities: ``T + 1`` given severities, one per level (overrides ``schedule``, ``clean`` and ``end``).
        options: fixed keyword arguments of ``f`` (numbers, strings, booleans); for a registered transform with
            random tensors of its own, those named in its ``draw_options`` go to its draw instead.
        random: keyword arguments of ``f`` drawn per image by :meth:`make_params`, as
            ``{name: ["uniform", low, high] | ["normal", mean, std] | ["choice", v1, v2, ...]}``.
        clamp: clamp outputs to ``[0, 1]``.
        channels: accepted channel count, or ``None`` for any.

    Shape:
        ``x0``: ``(B, C, H, W)``; ``t``: ``int`` or ``(B,)``; output: ``(B, C, H, W)``.

    Example:
        A function of your own (a brightness fade), and a registered one by name:

        >>> fade = Transform(4, function=lambda x, s: x * s[:, None, None, None], clean=1.0, end=0.2)
        >>> [round(s, 3) for s in fade.severity.tolist()]
        [1.0, 0.8, 0.6, 0.4, 0.2]
        >>> x0 = torch.rand(3, 1, 8, 8)
        >>> y = fade(x0, torch.tensor([0, 2, 4]))
        >>> torch.equal(y[0], x0[0]), torch.allclose(y[2], 0.2 * x0[2])
        (True, True)
        >>> jpeg = Transform(10, function="jpeg", end=10.0)
        >>> jpeg.function_name, jpeg.severity[[0, 10]].tolist()
        ('jpeg', [100.0, 10.0])
    """

    def __init__(
        self,
        num_steps: int,
        function: str | TransformFunction,
        schedule: SeveritySchedule = "linear",
        clean: float | None = None,
        end: float | None = None,
        severities: list[float] | None = None,
        options: dict[str, bool | int | float | str] | None = None,
        random: dict[str, list[str | float]] | None = None,
        clamp: bool = True,
        channels: int | None = None,
    ) -> None:
        super().__init__(num_steps, channels)
        who = type(self).__name__
        fn, recorded, entry = _resolve(function, who)
        self.function = fn
        self.function_name = recorded
        self.entry = entry
        if entry is not None:
            clean = entry.clean if clean is None else clean
            end = entry.end if end is None else end
        if severities is None and (clean is None or end is None):
            raise ValueError(f"{who}: give clean and end (the severities at levels 0 and T) or severities for a "
                             f"function that is not registered, got clean={clean!r}, end={end!r}")
        label = f"{who}({recorded or getattr(fn, '__name__', 'function')})"
        values = severity_schedule(self.num_steps, clean, end, schedule, severities, label)
        if entry is not None:
            low, high = float(values.min()), float(values.max())
            if low < entry.low or high > entry.high:
                raise ValueError(f"{label}: severities must lie in [{entry.low:g}, {entry.high:g}] "
                                 f"({entry.description or entry.name}), got values in [{low:g}, {high:g}]")
        self.schedule = schedule if severities is None else "given"
        options = _check_options(options, who)
        for_draw = entry.draw_options if entry is not None else ()
        self.options = {k: v for k, v in options.items() if k not in for_draw}
        self.draw_options = {k: v for k, v in options.items() if k in for_draw}
        self.random = _check_random(random, who)
        self.clamp = bool(clamp)
        drawn = entry.param_keys if entry is not None else ()
        clash = (set(options) & set(self.random)) | (set(drawn) & (set(options) | set(self.random)))
        if clash:
            raise ValueError(f"{who}: {sorted(clash)} given twice (options, random and the transform's own random "
                             "params must not share names)")
        self.param_keys = tuple(drawn) + tuple(self.random)
        self.register_buffer("severity", values.float())
        config = self.__dict__.get("_init_config")
        if config is not None and config.get("function") is function and recorded is not None:
            config["function"] = recorded  # record a callable by its name: checkpoints store names, not code

    def make_params(self, x0: Tensor, generator: torch.Generator | None = None, **context: Tensor) -> Params:
        self._check_context(context)
        like = x0 if x0.dtype in (torch.float32, torch.float64) else x0.float()
        params: Params = {}
        if self.entry is not None and self.entry.draw is not None:
            params.update(self.entry.draw(like, generator, **self.draw_options))
        for key, (dist, values) in self.random.items():
            params[key] = _draw_scalars(dist, values, x0.shape[0], generator, like)
        return params

    def unknown_params_reason(self) -> str | None:
        if not self.param_keys:
            return None
        drawn = [k for k in self.param_keys if k not in self.random]
        parts = ([f"{drawn} drawn by the {self.function_name!r} transform"] if drawn else []) + (
            [_describe_random(self.random)] if self.random else [])
        return (f"{type(self).__name__}: its params are drawn at random per image ({'; '.join(parts)}); a given "
                "image's draw is unknown, so re-degrading a restoration cannot be compared with it")

    def degrade(self, x0: Tensor, t: Tensor, params: Params) -> Tensor:
        compute = x0 if x0.dtype in (torch.float32, torch.float64) else x0.float()
        severity = self.severity.index_select(0, t).to(compute.dtype)
        drawn = {k: v.to(compute.dtype) if v.is_floating_point() else v for k, v in params.items()}
        y = self.function(compute, severity, **self.options, **drawn)
        if not isinstance(y, Tensor) or y.shape != x0.shape:
            got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"{type(self).__name__}: the function {self.function_name or self.function!r} must "
                             f"return images of the input's shape {tuple(x0.shape)}, got {got}")
        if self.clamp:
            y = y.clamp(0.0, 1.0)
        return torch.where(t[:, None, None, None] == 0, x0, y.to(x0.dtype))

    def extra_repr(self) -> str:
        return (f"num_steps={self.num_steps}, function={self.function_name!r}, schedule={self.schedule!r}, "
                f"severity {self.severity[1].item():g} .. {self.severity[-1].item():g}")
