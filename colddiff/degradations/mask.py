"""Gaussian masking (inpainting), and its reversed form for generation.

Step ``i`` multiplies the image by the fade mask ``M_i = 1 - G_i / max G_i``, a Gaussian hole of standard deviation
``sigmas[i]`` around a centre; masked pixels move to a fill value::

    keep_t = prod_{i < t} M_i,        D(x, t) = keep_t * x + (1 - keep_t) * fill

``G / max G`` is ``exp(-r^2 / (2 sigma^2))`` with ``r`` the distance to the centre (its peak value is 1 even when
the centre falls between pixels).  ``keep_t`` depends on a pixel only through its offset ``(|dy|, |dx|)`` from the
centre, so it is precomputed once per image size as a table ``(T + 1, H, W)`` over offsets; every call, whatever
``t`` and wherever each sample's centre is, is one gather.

``reverse=True`` is the paper's inpainting-based *generation* process: the image survives only inside a central
disc that shrinks as ``t`` grows, ``keep_t = (1 - C_{T-t}) / (1 - C_T)`` with ``C_s`` the cumulative mask above,
normalised so that ``D(x, 0) = x`` and ``D(x, T) = fill`` everywhere (the original code left the corners partly
faded at ``t = 0``; normalising keeps the contract).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from colddiff._checks import rand, randint
from colddiff.degradations.base import Degradation, Params, check_image, check_levels, observe_8bit
from colddiff.schedules import SigmaSchedule, sigma_schedule

__all__ = ["GaussianMask", "gaussian_mask", "mask_keep_table"]

CenterMode = Literal["center", "random"]


def mask_keep_table(
    sigmas: Tensor, height: int, width: int, half_y: bool, half_x: bool, reverse: bool = False
) -> Tensor:
    """``keep_t`` at offsets ``(a + 0.5 * half_y, b + 0.5 * half_x)`` from the centre, for every level ``t``.

    Args:
        sigmas: per-step mask widths (``>= 0``; 0 means the step masks nothing).
        height, width: table extent (offsets ``a < height``, ``b < width``).
        half_y, half_x: offsets are half-integers (an even-sized image's centre falls between pixels).
        reverse: the generation form (see module docstring).

    Shape:
        ``sigmas``: ``(T,)``; output: ``(T + 1, height, width)`` float32 on ``sigmas``' device.
    """
    sig = sigmas.to(torch.float64)
    dy = torch.arange(height, dtype=torch.float64, device=sig.device) + 0.5 * half_y
    dx = torch.arange(width, dtype=torch.float64, device=sig.device) + 0.5 * half_x
    r2 = dy[:, None] ** 2 + dx[None, :] ** 2
    num_steps = sig.numel()
    cumulative = torch.empty(num_steps + 1, height, width, dtype=torch.float64, device=sig.device)
    running = torch.ones_like(r2)
    cumulative[0] = running
    for i in range(num_steps):  # O(T H W) once per size; calls are gathers
        s = sig[i]
        if s > 0:
            running = running * (1.0 - torch.exp(-r2 / (2.0 * s * s)))
        cumulative[i + 1] = running
    if not reverse:
        return cumulative.to(torch.float32)
    denominator = 1.0 - cumulative[num_steps]
    levels = torch.arange(num_steps + 1, device=sig.device)
    numerator = 1.0 - cumulative.flip(0)  # row t holds 1 - C_{T - t}
    never_masked = (levels < num_steps).to(torch.float64)[:, None, None].expand_as(numerator)
    keep = torch.where(denominator > 0, numerator / denominator.clamp_min(1e-300), never_masked)
    return keep.clamp(0.0, 1.0).to(torch.float32)


def _offsets(size: int, center: Tensor | None, device: torch.device) -> tuple[Tensor, bool]:
    """Integer table indices of each pixel's offset from the centre along one axis: ``(B or 1, size)``."""
    pos = torch.arange(size, device=device)
    if center is None:  # image centre, (size - 1) / 2: offsets are half-integers for even sizes
        twice = (2 * pos - (size - 1)).abs()
        return (twice // 2)[None, :], size % 2 == 0
    return (pos[None, :] - center[:, None]).abs(), False


def _apply_mask(x: Tensor, t: Tensor, table: Tensor, ay: Tensor, ax: Tensor, fill: Tensor | float) -> Tensor:
    """The exact (unquantised) masked image at per-sample levels ``t``; level 0 returns ``x`` itself."""
    keep = table[t[:, None, None], ay[:, :, None], ax[:, None, :]].unsqueeze(1).to(x.dtype)
    y = keep * x + (1.0 - keep) * fill
    return torch.where(t[:, None, None, None] == 0, x, y)


def gaussian_mask(
    x: Tensor,
    t: int | Tensor,
    sigmas: Tensor | list[float],
    center: Tensor | None = None,
    fill: float | Tensor = 0.5,
    reverse: bool = False,
    quantize: bool = False,
) -> Tensor:
    """Functional twin of :class:`GaussianMask`.

    Args:
        x: images in ``[0, 1]``.
        t: levels, an int or one per sample, ``0 <= t <= len(sigmas)``.
        sigmas: per-step mask widths.
        center: ``None`` for the image centre, or integer pixel centres ``(row, col)`` per sample.
        fill: value of masked pixels, a float or a ``(B, C, 1, 1)`` tensor (a colour per sample).
        reverse: the generation form (a shrinking central disc of image).
        quantize: return the observed form, rounded to 8 bits at levels ``t >= 1`` (as the module's call does).

    Shape:
        ``x``: ``(B, C, H, W)``; ``center``: ``(B, 2)`` long; output: ``(B, C, H, W)``.

    Example:
        Masked pixels fade to ``fill``: the pixel at the centre goes first, the corners keep most of the image:

        >>> x = torch.ones(1, 1, 9, 9)
        >>> y = gaussian_mask(x, 3, sigmas=[1.0, 1.5, 2.0], fill=0.0)
        >>> y[0, 0, 4, 4].item(), round(y[0, 0, 0, 0].item(), 3)
        (0.0, 0.981)
        >>> torch.equal(gaussian_mask(x, 0, sigmas=[1.0, 1.5, 2.0]), x)
        True
        >>> y8 = gaussian_mask(x, 3, sigmas=[1.0, 1.5, 2.0], fill=0.0, quantize=True)
        >>> torch.equal(y8 * 255, (y8 * 255).round())
        True
    """
    who = "gaussian_mask"
    x = check_image(x, who, "x")
    sig = sigma_schedule(len(sigmas), sigmas=sigmas)
    t = check_levels(t, x, sig.numel(), who)
    height, width = x.shape[-2:]
    if center is not None:
        center = _check_center(center, x)
        ay, half_y = _offsets(height, center[:, 0], x.device)
        ax, half_x = _offsets(width, center[:, 1], x.device)
    else:
        ay, half_y = _offsets(height, None, x.device)
        ax, half_x = _offsets(width, None, x.device)
    table = mask_keep_table(sig.to(x.device), height, width, half_y, half_x, reverse)
    y = _apply_mask(x, t, table, ay.expand(x.shape[0], -1), ax.expand(x.shape[0], -1), fill)
    return observe_8bit(y, t, quantize)


def _check_center(center: Tensor, x: Tensor) -> Tensor:
    if not isinstance(center, Tensor) or center.shape != (x.shape[0], 2) or center.is_floating_point():
        got = tuple(center.shape) if isinstance(center, Tensor) else type(center).__name__
        raise ValueError(f"center must be an integer tensor of shape ({x.shape[0]}, 2) (row, col), got {got}")
    height, width = x.shape[-2:]
    rows, cols = center[:, 0], center[:, 1]
    if bool((rows < 0).any() | (rows >= height).any() | (cols < 0).any() | (cols >= width).any()):
        raise ValueError(f"center must lie inside the {height}x{width} image, got {center.tolist()}")
    return center.to(device=x.device, dtype=torch.long)


class GaussianMask(Degradation):
    """Gaussian-shaped fading mask (inpainting), centred or at a random centre per sample.

    Args:
        num_steps: ``T``.
        sigmas: explicit per-step mask widths in pixels (overrides the named schedule).
        schedule, sigma, sigma_step, rate: named per-step schedule (see :func:`colddiff.schedules.sigma_schedule`).
            The paper's ``k_s (i + m0)`` is ``schedule="linear", sigma=k_s * m0, sigma_step=k_s``; the default is
            its MNIST/CIFAR-10 setting ``k_s = 0.1, m0 = 11``.
        center: ``"center"`` (image centre) or ``"random"`` (an integer pixel per sample, drawn in
            :meth:`make_params` and kept for all ``t``).
        fill: value of masked pixels (0.5 is mid-grey, the paper's 0 in ``[-1, 1]``), or ``"random"`` for a
            random constant colour per sample (each channel uniform in ``fill_range``), as mask-based generation uses.
        fill_range: range of random fill colours.
        reverse: the generation form (see the module docstring).
        quantize: the observed images (:meth:`degrade_input`, the module call, :meth:`final_state`: training inputs
            and the inpainting start image) are rounded to 8 bits at ``t >= 1`` (the paper's MNIST/CIFAR-10
            setting).  The exact :meth:`degrade` that the samplers use is never rounded, as in the original code.
            colddiff rounds to the nearest level (``round(255 x) / 255``) where the original truncated
            (``int(255 x) / 255``, half a level too dark on average).
        channels: accepted channel count, or ``None`` for any.

    The centred mask (``center="center"``) is centred at ``((H - 1) / 2, (W - 1) / 2)``, the true image centre
    (between the two middle pixels of an even size, so the mask is symmetric under flips); the original code's centre
    is half a pixel off it.

    Shape:
        ``x0``: ``(B, C, H, W)``; ``t``: ``int`` or ``(B,)``; output: ``(B, C, H, W)``.
    """

    def __init__(
        self,
        num_steps: int,
        sigmas: list[float] | None = None,
        schedule: SigmaSchedule = "linear",
        sigma: float = 1.1,
        sigma_step: float | None = 0.1,
        rate: float = 0.01,
        center: CenterMode = "center",
        fill: float | Literal["random"] = 0.5,
        fill_range: tuple[float, float] = (0.25, 0.75),
        reverse: bool = False,
        quantize: bool = False,
        channels: int | None = None,
    ) -> None:
        super().__init__(num_steps, channels)
        who = type(self).__name__
        if center not in ("center", "random"):
            raise ValueError(f"{who}: center must be 'center' or 'random', got {center!r}")
        if isinstance(fill, str):
            if fill != "random":
                raise ValueError(f"{who}: fill must be a number or 'random', got {fill!r}")
        elif isinstance(fill, bool) or not isinstance(fill, (int, float)):
            raise TypeError(f"{who}: fill must be a number or 'random', got {type(fill).__name__}")
        low, high = (float(v) for v in fill_range)
        if not low <= high:
            raise ValueError(f"{who}: fill_range must be (low, high) with low <= high, got {fill_range!r}")
        self.center = center
        self.fill = fill if isinstance(fill, str) else float(fill)
        self.fill_range = (low, high)
        self.reverse = bool(reverse)
        self.quantize = bool(quantize)
        self.param_keys = tuple(k for k, on in (("center", center == "random"), ("fill", fill == "random")) if on)
        schedule_values = sigma_schedule(self.num_steps, sigmas, schedule, sigma, sigma_step, rate)
        self.register_buffer("sigmas", schedule_values.to(torch.float32))

    def unknown_params_reason(self) -> str | None:
        reasons = []
        if "center" in self.param_keys:
            reasons.append("its masks are centred at a random pixel per image (center='random') and the centre of a "
                           "given image is unknown; re-degrading at another centre explains nothing. Models trained "
                           "with centred masks (center='center') are supported")
        if "fill" in self.param_keys:
            reasons.append("its fill colour is drawn at random per image (fill='random') and is unknown for a given "
                           "image")
        return f"{type(self).__name__}: " + "; and ".join(reasons) if reasons else None

    def make_params(self, x0: Tensor, generator: torch.Generator | None = None, **context: Tensor) -> Params:
        self._check_context(context)
        batch, channels, height, width = x0.shape
        params: Params = {}
        if self.center == "random":
            rows = randint(height, (batch,), generator, x0)
            cols = randint(width, (batch,), generator, x0)
            params["center"] = torch.stack([rows, cols], dim=1)
        if self.fill == "random":
            low, high = self.fill_range
            params["fill"] = low + (high - low) * rand((batch, channels, 1, 1), generator, x0)
        return params

    def keep_table(self, height: int, width: int, half_y: bool, half_x: bool, device: torch.device) -> Tensor:
        """Cached :func:`mask_keep_table` for this size, centring and device."""
        return self._cached(
            ("keep", height, width, half_y, half_x, str(device)),
            lambda: mask_keep_table(self.sigmas.to(device), height, width, half_y, half_x, self.reverse),
        )

    def degrade(self, x0: Tensor, t: Tensor, params: Params) -> Tensor:
        batch, _, height, width = x0.shape
        center = params.get("center")
        ay, half_y = _offsets(height, None if center is None else center[:, 0], x0.device)
        ax, half_x = _offsets(width, None if center is None else center[:, 1], x0.device)
        table = self.keep_table(height, width, half_y, half_x, x0.device)
        fill = params["fill"].to(x0.dtype) if "fill" in params else self.fill
        return _apply_mask(x0, t, table, ay.expand(batch, -1), ax.expand(batch, -1), fill)

    def observe(self, y: Tensor, t: Tensor) -> Tensor:
        """8-bit rounding at levels ``t >= 1`` when ``quantize`` (else the identity)."""
        return observe_8bit(y, t, self.quantize)

    def check_params(self, params, x: Tensor) -> Params:
        params = super().check_params(params, x)
        if "center" in params:
            params["center"] = _check_center(params["center"], x)
        if "fill" in params and params["fill"].shape != (x.shape[0], x.shape[1], 1, 1):
            raise ValueError(
                f"GaussianMask: params['fill'] must have shape {(x.shape[0], x.shape[1], 1, 1)}, "
                f"got {tuple(params['fill'].shape)}"
            )
        return params

    def extra_repr(self) -> str:
        return (
            f"num_steps={self.num_steps}, center={self.center!r}, fill={self.fill!r}, reverse={self.reverse}, "
            f"quantize={self.quantize}"
        )
