"""The degradation contract shared by every operator.

Conventions (the same everywhere in colddiff, see README "Conventions"):

* Images are float tensors of shape ``(B, C, H, W)`` with values in ``[0, 1]``.
* A *level* ``t`` counts degradation steps: ``t = 0`` is the clean image, ``t = T = num_steps`` the most degraded.
  ``D(x0, 0) == x0`` exactly.  A *step* ``i`` (``0 <= i < T``) takes level ``i`` to level ``i + 1``; per-step
  schedules (blur and mask widths) are therefore ``(T,)`` tensors, per-level schedules ``(T + 1,)`` tensors.
* ``t`` is an ``int`` (same level for the whole batch) or an integer tensor of shape ``(B,)`` (one level per sample).
* All randomness is drawn once by :meth:`Degradation.make_params` and passed explicitly; :meth:`Degradation.degrade`
  is deterministic, so ``D(x, s)`` and ``D(x, s - 1)`` inside a sampler see the same random draw.
* Two forms of ``D(x0, t)``: the exact one, :meth:`Degradation.degrade`, which the samplers' arithmetic uses
  (``step_difference``, ``update_params``, Algorithm 1's re-degradation, :class:`~colddiff.degradations.Compose`), and
  the *observed* one, :meth:`Degradation.degrade_input` (the exact image passed through :meth:`Degradation.observe`),
  which is what a network is fed or a file stores: training inputs, the start state of a restoration.  They differ
  only for operators that model a measurement, e.g. ``quantize=True`` rounds the observed image to 8 bits.  The
  validated call ``D(x0, t, params)`` and :meth:`Degradation.final_state` return the observed form.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from colddiff._checks import check_num_steps
from colddiff._config import RecordsInit

Params = dict[str, Tensor]

#: ITU-R 601-2 luma weights, as torchvision's ``rgb_to_grayscale`` uses them.
LUMA_WEIGHTS = (0.2989, 0.587, 0.114)

__all__ = [
    "Degradation", "SignalNoise", "Params", "LUMA_WEIGHTS", "check_image", "check_levels", "check_odd_kernel_size",
    "quantize_8bit", "observe_8bit",
]


def check_image(x: Any, who: str, name: str = "x0", channels: int | None = None) -> Tensor:
    """Check that ``x`` is a non-empty floating ``(B, C, H, W)`` tensor (with ``channels`` channels if given)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{who}: {name} must have shape (B, C, H, W), got {x.ndim} dims {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{who}: {name} must be a floating tensor with values in [0, 1], got {x.dtype}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{who}: expected {channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if x.shape[0] == 0:
        raise ValueError(f"{who}: {name} is an empty batch (shape {tuple(x.shape)})")
    return x


def check_levels(t: Any, x: Tensor, num_steps: int, who: str) -> Tensor:
    """Turn ``t`` (int or ``(B,)`` integer tensor) into a ``(B,)`` long tensor on ``x``'s device, ``0 <= t <= T``."""
    batch = x.shape[0]
    if isinstance(t, Tensor):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{who}: t must be an int or an integer tensor, got dtype {t.dtype}")
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(
                f"{who}: t must be an int or have shape ({batch},) (one level per sample), got shape {tuple(t.shape)}"
            )
        t = t.to(device=x.device, dtype=torch.long)
        low, high = int(t.min()), int(t.max())
    elif isinstance(t, numbers.Integral) and not isinstance(t, bool):
        low = high = int(t)
        t = torch.full((batch,), int(t), dtype=torch.long, device=x.device)
    else:
        raise TypeError(f"{who}: t must be an int or an integer tensor, got {type(t).__name__} {t!r}")
    if low < 0 or high > num_steps:
        raise ValueError(f"{who}: t must lie in [0, {num_steps}] (num_steps), got values in [{low}, {high}]")
    return t


class Degradation(RecordsInit, nn.Module):
    """Base class of all degradation operators ``D(x0, t)``.

    Subclasses implement :meth:`degrade` (deterministic, closed form, vectorised over a per-sample ``t``) and, when
    they are random, :meth:`make_params`.  Schedules and kernels are registered as buffers, so they move with
    ``.to()``, are saved in ``state_dict`` and never reach an optimiser.

    Args:
        num_steps: ``T``, the number of degradation levels after the clean image.
        channels: number of image channels the operator accepts, or ``None`` for any.

    Shape:
        ``x0``: ``(B, C, H, W)``; ``t``: ``int`` or ``(B,)``; output: ``(B, C, H, W)``.
    """

    #: names of the tensors :meth:`make_params` returns (checked when the user passes ``params``).
    param_keys: tuple[str, ...] = ()
    #: names of keyword context :meth:`make_params` accepts (e.g. the mixing partner ``z``).
    context_keys: tuple[str, ...] = ()
    #: what the restoration network learns by default for this operator, ``(prediction, init_args)`` of a
    #: :mod:`colddiff.objectives` objective (named by its ``prediction``): x0 under L1, the cold paper's choice for
    #: deterministic degradations.  ``None`` (:class:`SignalNoise`'s default): derived from the operator's signal and
    #: noise by :func:`colddiff.objectives.default_objective`.
    default_objective_spec: ClassVar[tuple[str, dict[str, Any]] | None] = ("x0", {"loss": "l1"})

    def __init__(self, num_steps: int, channels: int | None = None) -> None:
        super().__init__()
        self.num_steps = check_num_steps(num_steps)
        if channels is not None and (isinstance(channels, bool) or not isinstance(channels, numbers.Integral)
                                     or channels <= 0):
            raise ValueError(f"channels must be a positive int or None, got {channels!r}")
        self.channels = None if channels is None else int(channels)
        self._cache: dict[tuple, Any] = {}

    # ------------------------------------------------------------------ subclass API
    def make_params(self, x0: Tensor, generator: torch.Generator | None = None, **context: Tensor) -> Params:
        """Draw all the randomness of one degradation of ``x0`` (batch-first tensors; empty if deterministic)."""
        self._check_context(context)
        return {}

    def degrade(self, x0: Tensor, t: Tensor, params: Params) -> Tensor:
        """Deterministic ``D(x0, t)`` for a validated ``(B,)`` long tensor ``t`` on ``x0``'s device.

        No input checks (this is the hot path); use the module call ``D(x0, t, params)`` for validation.
        """
        raise NotImplementedError

    def observe(self, y: Tensor, t: Tensor) -> Tensor:
        """The observation applied to an exact ``y = D(x0, t)``: what a network sees or a file stores (hot path).

        The default is the identity.  Operators that model a measurement override this (``quantize=True`` rounds
        levels ``t >= 1`` to 8 bits); level 0 must stay ``y`` itself, so that ``D(x0, 0) == x0`` holds in both forms.
        Override this, not :meth:`degrade_input`, so that :class:`~colddiff.degradations.Compose` can chain it.
        """
        return y

    def degrade_input(self, x0: Tensor, t: Tensor, params: Params) -> Tensor:
        """``D(x0, t)`` as an observed/stored image, what the network is fed (hot path, no checks).

        ``observe(degrade(x0, t, params), t)``: equal to :meth:`degrade` except for operators that model a
        measurement (8-bit quantisation).  Training inputs and restoration start states use this form; the samplers'
        arithmetic uses the exact :meth:`degrade`, so rounding never enters the update of Algorithm 2.
        """
        return self.observe(self.degrade(x0, t, params), t)

    def step_difference(self, x0: Tensor, t: Tensor, t_next: Tensor, params: Params) -> Tensor:
        """``D(x0, t_next) - D(x0, t)``, the update of Algorithm 2 (hot path, no checks).

        Operators override this when the difference is cheaper than two calls (the blur shares one forward FFT and
        applies the difference of the two transfer functions).
        """
        return self.degrade(x0, t_next, params) - self.degrade(x0, t, params)

    def update_params(self, x_t: Tensor, x0_hat: Tensor, t: Tensor, params: Params) -> Params:
        """Re-estimate the params from a current state ``x_t`` and a prediction ``x0_hat`` (samplers call this).

        The default keeps the params.  :class:`GaussianNoise` re-estimates its noise here, which turns Algorithm 2
        into deterministic DDIM.
        """
        return params

    def check_image_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` if the operator cannot work at this image size (default: any size)."""

    def default_objective(self) -> tuple[str, dict[str, Any]] | None:
        """``(prediction, init_args)`` of the objective this operator is trained with when a model names none, or
        ``None`` to let :func:`colddiff.objectives.default_objective` derive it (noise-bearing operators): its
        :attr:`default_objective_spec`.  Override only when the choice depends on the instance's arguments; the
        policy itself lives in :mod:`colddiff.objectives`."""
        return self.default_objective_spec

    def unknown_params_reason(self) -> str | None:
        """Why the params of a *given* degraded image cannot be known, or ``None`` when it needs none.

        Level estimation (:func:`colddiff.estimation.estimate_level`) re-degrades restorations and needs the params
        of the image at hand; it refuses an operator with this reason.  Deterministic operators (no
        ``param_keys``) return ``None``; random ones say what is unknown (override to say why in the operator's
        terms).
        """
        if not self.param_keys:
            return None
        return (f"{type(self).__name__}: it draws random params {list(self.param_keys)} that are unknown for a given "
                "image")

    def level_search_grid(self, candidates: int) -> int | None:
        """How many of ``candidates`` evenly spaced levels the level estimator's coarse grid evaluates, or ``None``
        for its default (``O(log T)``, :func:`colddiff.estimation.default_grid_size`).

        The default search assumes that an image's residual curve over levels has basins wider than the grid
        spacing, as it has when neighbouring levels are neighbouring images (blur, masks).  Operators whose levels
        are not ordered that way (JPEG: a lower quality is not a further degradation of a higher one, and the true
        level is a narrow minimum) return ``candidates``: an exhaustive scan.
        """
        return None

    # ------------------------------------------------------------------ public API
    def forward(
        self,
        x0: Tensor,
        t: int | Tensor,
        params: Mapping[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
        **context: Tensor,
    ) -> Tensor:
        """Validated ``D(x0, t)`` in its observed form (:meth:`degrade_input`); draws params (from ``generator``)
        when none are given."""
        x0 = self.check_input(x0)
        t = self.check_t(t, x0)
        params = self.make_params(x0, generator, **context) if params is None else self.check_params(params, x0)
        return self.degrade_input(x0, t, params)

    def final_state(
        self,
        x0: Tensor,
        params: Mapping[str, Tensor] | None = None,
        generator: torch.Generator | None = None,
        **context: Tensor,
    ) -> Tensor:
        """``D(x0, T)`` in its observed form, the start state of sampling."""
        return self(x0, self.num_steps, params, generator, **context)

    # ------------------------------------------------------------------ validation helpers
    def check_input(self, x: Any, name: str = "x0") -> Tensor:
        """Check that ``x`` is a floating ``(B, C, H, W)`` tensor with the operator's channel count and a size it
        can work at."""
        x = check_image(x, type(self).__name__, name, self.channels)
        self.check_image_size(x.shape[-2], x.shape[-1])
        return x

    def check_t(self, t: Any, x: Tensor) -> Tensor:
        """Turn ``t`` (int or ``(B,)`` integer tensor) into a validated ``(B,)`` long tensor on ``x``'s device."""
        return check_levels(t, x, self.num_steps, type(self).__name__)

    def check_params(self, params: Any, x: Tensor) -> Params:
        """Check user-given params: a mapping with the operator's keys, batch-first tensors of ``x``'s batch."""
        if not isinstance(params, Mapping):
            raise TypeError(f"{type(self).__name__}: params must be a dict of tensors, got {type(params).__name__}")
        missing = [k for k in self.param_keys if k not in params]
        extra = [k for k in params if k not in self.param_keys]
        if missing or extra:
            raise ValueError(
                f"{type(self).__name__}: params must have keys {list(self.param_keys)}, "
                f"got {sorted(params)} (missing {missing}, unexpected {extra})"
            )
        for key, value in params.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"{type(self).__name__}: params[{key!r}] must be a tensor, got {type(value).__name__}")
            if value.ndim == 0 or value.shape[0] != x.shape[0]:
                raise ValueError(
                    f"{type(self).__name__}: params[{key!r}] must be batch-first with {x.shape[0]} rows, "
                    f"got shape {tuple(value.shape)}"
                )
        return dict(params)

    def _check_context(self, context: Mapping[str, Any]) -> None:
        extra = [k for k in context if k not in self.context_keys]
        if extra:
            accepted = list(self.context_keys) or "none"
            raise TypeError(f"{type(self).__name__}.make_params got unexpected context {extra}; accepted: {accepted}")

    # ------------------------------------------------------------------ derived-tensor cache
    def _cached(self, key: tuple, build: Callable[[], Any]) -> Any:
        """Tensors derived from the buffers (transfer functions, mask tables), built once per key (size, device).

        The cache is dropped whenever the buffers may move or change (``.to()``, ``load_state_dict``) and is never
        pickled or saved.
        """
        value = self._cache.get(key)
        if value is None:
            value = self._cache[key] = build()
        return value

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        self._cache = {}
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):  # type: ignore[override]
        self._cache = {}
        return super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self):
        state = dict(super().__getstate__())
        state["_cache"] = {}
        return state

    def extra_repr(self) -> str:
        return f"num_steps={self.num_steps}"


def quantize_8bit(x: Tensor) -> Tensor:
    """Round ``[0, 1]`` values to the nearest of the 256 levels of an 8-bit image (``round(255 x) / 255``).

    The original Cold Diffusion code truncated instead (``int(255 x) / 255``), which biases every value down by half
    a level (``0.5 / 255``) on average; colddiff rounds to the nearest level.
    """
    return torch.round(x * 255.0) / 255.0


def observe_8bit(y: Tensor, t: Tensor, quantize: bool) -> Tensor:
    """:meth:`Degradation.observe` of the quantising operators: 8-bit rounding at levels ``t >= 1`` when
    ``quantize`` (level 0 stays exactly ``y``).

    Shape:
        ``y``: ``(B, C, H, W)``; ``t``: ``(B,)``; output: ``(B, C, H, W)``.
    """
    if not quantize:
        return y
    compute = y if y.dtype in (torch.float32, torch.float64) else y.float()  # round half-precision values in fp32
    return torch.where(t[:, None, None, None] == 0, y, quantize_8bit(compute).to(y.dtype))


def check_odd_kernel_size(kernel_size: Any, who: str) -> int:
    """A positive odd int (a centred kernel needs an odd size)."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, numbers.Integral):
        raise TypeError(f"{who}: kernel_size must be a positive odd int, got {type(kernel_size).__name__}")
    if kernel_size <= 0 or kernel_size % 2 == 0:
        raise ValueError(f"{who}: kernel_size must be a positive odd int, got {kernel_size}")
    return int(kernel_size)


class SignalNoise(Degradation):
    """Abstract base class and protocol of the noise-bearing degradations: a known signal part plus a scaled "noise"
    image.

    In the paper's centred units ``x~ = 2 x - 1`` (colddiff's images are ``[0, 1]``; mid-grey is ``0``)::

        x~_t = alpha_t A_t x~_0 + sigma_t z~                                                              (1)

    with per-level coefficients ``alpha_t`` (signal) and ``sigma_t`` (noise), a linear signal operator ``A_t``
    (the identity by default; a blur for :class:`~colddiff.degradations.BlurNoise`) that keeps constant images, and
    the noise image ``z~`` held in the params (standard normal ``eps`` for
    :class:`~colddiff.degradations.GaussianNoise`, :class:`~colddiff.degradations.FlowNoise` and ``BlurNoise``;
    ``2 * partner - 1`` for :class:`~colddiff.degradations.Mix`).  Level 0 is the clean image: ``alpha_0 = 1``,
    ``sigma_0 = 0``, ``A_0 = I``.

    **The protocol** (all that the objectives and samplers read of such an operator, besides the
    :class:`Degradation` contract; hot-path methods take validated ``(B,)`` long levels and do no checks):

    ===============================================  ============================================================
    :meth:`coefficients` ``(t)``                     ``(alpha_t, sigma_t)``, float64 ``(B,)`` each (abstract)
    :meth:`noise_of` ``(params)``                    the noise image ``z~`` held in the params (abstract)
    :meth:`params_from_noise` ``(z~)``               the params holding ``z~`` (default ``{"noise": z~}``)
    :meth:`noise_estimate` ``(x_t, x0_hat, t)``      the ``z~`` that puts ``x0_hat`` at ``x_t`` by (1)
    :meth:`update_params` ``(x_t, x0_hat, t, p)``    with :attr:`reestimate`: that estimate as the new params (DDIM)
    :meth:`apply_signal` ``(x, t)``                  ``A_t x``
    :meth:`solve_signal` ``(y, t, scale, shift)``    ``(scale A_t + shift I)^-1 y``
    :meth:`signal_spectrum` ``(t, H, W)``            the eigenvalues of ``A_t`` (``(B, 1, 1)`` ones for ``A_t = I``)
    :meth:`apply_spectrum` ``(x, spectrum)``         ``x`` filtered by per-eigenvector multipliers
    :meth:`signal_invertible` ``()``                 whether every ``A_t`` is invertible
    :meth:`signal_nonnegative` ``()``                whether every ``A_t`` is positive semi-definite
    :meth:`level_coefficients` ``()``                :meth:`coefficients` at every level ``1..T``
    :attr:`signal_is_identity` (class flag)          ``A_t = I`` at every level
    :attr:`noise_is_gaussian` (class flag)           ``z~`` is standard normal noise (not another image)
    :attr:`reestimate` (instance flag)               :meth:`update_params` re-estimates ``z~``
    ===============================================  ============================================================

    A subclass implements :meth:`coefficients` and :meth:`noise_of` (and, when ``A_t`` is not the identity,
    :meth:`apply_signal`, :meth:`solve_signal`, :meth:`signal_spectrum`, :meth:`apply_spectrum` and the two
    properties, setting ``signal_is_identity = False``).

    What the protocol is for lives elsewhere: the objectives (:mod:`colddiff.objectives`) turn an ε, v or velocity
    prediction into ``x0_hat`` and back with it, and :func:`colddiff.objectives.default_objective` decides from its
    properties what such an operator trains by default; the samplers (:mod:`colddiff.sampling`) integrate its paths
    with it, DDPM's and Blurring Diffusion's posterior draw included (:func:`colddiff.sampling.ancestral_step`).  An
    operator without the form (blur, masks, pixelation...) trains on x0 only.
    """

    #: whether ``A_t`` is the identity at every level (Gaussian noise, the flow, mixing)
    signal_is_identity: ClassVar[bool] = True
    #: whether ``z~`` is standard normal noise (false for mixing, whose "noise" is another image)
    noise_is_gaussian: ClassVar[bool] = True
    #: whether :meth:`update_params` re-estimates the noise image from ``x0_hat`` (set by each operator's
    #: constructor argument ``reestimate``)
    reestimate: bool = False
    #: ``None``: :func:`colddiff.objectives.default_objective` derives the default objective from the protocol's
    #: properties; an operator whose paper trains something else names it here (``FlowNoise``: the velocity).
    default_objective_spec: ClassVar[tuple[str, dict[str, Any]] | None] = None

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha_t, sigma_t)`` of equation (1), float64 ``(B,)`` each, for levels ``t`` ``(B,)`` long."""
        raise NotImplementedError

    def noise_of(self, params: Params) -> Tensor:
        """The noise image ``z~`` of equation (1), in centred units, from the params (``(B, C, H, W)``)."""
        raise NotImplementedError

    def level_coefficients(self) -> tuple[Tensor, Tensor]:
        """:meth:`coefficients` at every level ``t = 1..T`` (``(T,)`` float64 each): what the objectives and samplers
        check a schedule by (noise at every level, signal at every level)."""
        device = next(iter(self.buffers()), torch.empty(0)).device  # the coefficients index the buffers
        return self.coefficients(torch.arange(1, self.num_steps + 1, device=device))

    def params_from_noise(self, noise: Tensor) -> Params:
        """The params that hold the noise image ``z~`` (the inverse of :meth:`noise_of`); default ``{"noise": z~}``."""
        return {"noise": noise}

    def noise_estimate(self, x_t: Tensor, x0_hat: Tensor, t: Tensor, where_noiseless: Tensor | None = None) -> Tensor:
        """The noise image that puts ``x0_hat`` at ``x_t`` by equation (1), ``z~ = (x~_t - alpha_t A_t x~0_hat) /
        sigma_t``; ``where_noiseless`` (default zeros) where ``sigma_t = 0`` (hot path, no checks).

        Shape:
            ``x_t``, ``x0_hat``: ``(B, C, H, W)``; ``t``: ``(B,)`` long; output: ``(B, C, H, W)``.
        """
        alpha, sigma = self.coefficients(t)
        a, s = alpha.to(x_t)[:, None, None, None], sigma.to(x_t)[:, None, None, None]
        residual = (2 * x_t - 1) - a * self.apply_signal(2 * x0_hat - 1, t)
        estimate = residual / torch.where(s > 0, s, torch.ones_like(s))
        fallback = torch.zeros_like(estimate) if where_noiseless is None else where_noiseless.to(x_t.dtype)
        return torch.where(s > 0, estimate, fallback)

    def update_params(self, x_t: Tensor, x0_hat: Tensor, t: Tensor, params: Params) -> Params:
        """With :attr:`reestimate`: the noise image that puts ``x0_hat`` at ``x_t`` by equation (1)
        (:meth:`noise_estimate`; the drawn one kept where ``sigma_t = 0``).  This makes Algorithm 2 deterministic DDIM
        (Song et al., arXiv 2010.02502, eq. 12 with ``sigma = 0``): ``x_{s'} = D(x0_hat, s'; z~)``; for the flow's
        straight path it is Euler's step; for mixing it re-estimates the partner."""
        if not self.reestimate or not self.param_keys:
            return params
        return self.params_from_noise(self.noise_estimate(x_t, x0_hat, t, self.noise_of(params)))

    def apply_signal(self, x: Tensor, t: Tensor) -> Tensor:
        """``A_t x`` for centred images (hot path, no checks); the identity by default.

        Shape:
            ``x``: ``(B, C, H, W)``; ``t``: ``(B,)`` long; output: ``(B, C, H, W)``.
        """
        return x

    def solve_signal(self, y: Tensor, t: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        """``(scale A_t + shift I)^-1 y`` per sample (hot path): ``y / (scale + shift)`` when ``A_t = I``.

        ``scale`` and ``shift`` are ``(B,)``; the objectives never ask for a singular system (they refuse
        parameterisations that would need one at construction).

        Shape:
            ``y``: ``(B, C, H, W)``; ``t``, ``scale``, ``shift``: ``(B,)``; output: ``(B, C, H, W)``.
        """
        return y / (scale + shift).to(y.dtype)[:, None, None, None]

    def signal_spectrum(self, t: Tensor, height: int, width: int) -> Tensor:
        """The eigenvalues of ``A_t`` in the basis that diagonalises every ``A_t`` (its spectrum), per sample: the
        multipliers :meth:`apply_spectrum` takes.  ``(B, 1, 1)`` ones for the identity; a blur's transfer function on
        its FFT grid for :class:`~colddiff.degradations.BlurNoise`.  Float64.  With it, a sampler computes the
        coefficients of a Gaussian path frequency by frequency (``alpha_t d_t``: the multistep solvers, the ancestral
        step) and applies them with one filter each.

        Shape:
            ``t``: ``(B,)`` long; output: ``(B, *S)``, ``S`` the operator's spectral shape (``(1, 1)`` here).
        """
        return torch.ones(t.shape[0], 1, 1, dtype=torch.float64, device=t.device)

    def apply_spectrum(self, x: Tensor, spectrum: Tensor) -> Tensor:
        """``V diag(spectrum) V^T x`` per sample (hot path, no checks): ``x`` filtered by per-sample spectral
        multipliers of :meth:`signal_spectrum`'s shape (a sample dimension of 1 broadcasts), in ``x``'s dtype.

        Shape:
            ``x``: ``(B, C, H, W)``; ``spectrum``: ``(B, *S)`` or ``(1, *S)``; output: ``(B, C, H, W)``.
        """
        return x * spectrum.to(x)[:, None]

    def signal_invertible(self) -> bool:
        """Whether every ``A_t`` is invertible, so that ``A_t x~0`` determines ``x~0`` (true for the identity)."""
        return True

    def signal_nonnegative(self) -> bool:
        """Whether every ``A_t`` is positive semi-definite (true for the identity and the heat blur), so that
        ``a A_t + b I`` with ``b > 0`` is always invertible (the v and velocity conversions)."""
        return True
