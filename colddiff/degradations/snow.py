"""Snow (ImageNet-C style), as in the paper's "snowification".

A snow *field* is drawn once per sample in :meth:`Snow.make_params`: Gaussian noise ``N(field_mean, field_std)``
zoomed by ``zoom`` (ImageNet-C's ``clipped_zoom``: crop the centre, bilinear zoom, trim), together with a random
motion direction (horizontal or vertical).  Level ``t`` then uses its schedule values directly (the process is not
cumulative)::

    S_t = motion_blur(clip(field * (field >= threshold_t), 0, 1), std=blur_sigma_t, length=kernel_length)
    D(x, t) = clip(base_t(x) + S_t + rot180(S_t), 0, 1)

``base_t(x) = x`` with ``fix_brightness=True`` (the paper's setting), else ImageNet-C's brightening
``b_t x + (1 - b_t) max(x, 1.5 gray(x) + 0.5)``.  Schedules run linearly from their start at level 1 to their end
at level ``T``, as the original's ``linspace(start, end, T)`` indexed by step; ``D(x, 0) = x``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from colddiff._checks import rand, randn
from colddiff.degradations.base import LUMA_WEIGHTS, Degradation, Params, check_image, check_odd_kernel_size
from colddiff.schedules import level_linspace

__all__ = ["Snow", "snow", "snow_field", "SNOW_LEVELS"]

#: presets of the original code, by level: field mean, field std, zoom, motion-blur kernel length, and
#: (start, end) of the threshold, motion-blur std and brightness schedules.
SNOW_LEVELS: dict[int, dict] = {
    1: dict(field_mean=0.1, field_std=0.3, zoom=3.0, kernel_length=5,
            threshold=(0.7, 0.3), blur_sigma=(0.5, 5.0), brightness=(0.95, 0.7)),
    2: dict(field_mean=0.55, field_std=0.3, zoom=2.5, kernel_length=11,
            threshold=(1.15, 0.7), blur_sigma=(0.05, 12.0), brightness=(0.95, 0.55)),
    3: dict(field_mean=0.55, field_std=0.3, zoom=2.5, kernel_length=11,
            threshold=(1.15, 0.7), blur_sigma=(0.05, 16.0), brightness=(0.95, 0.4)),
    4: dict(field_mean=0.55, field_std=0.3, zoom=2.5, kernel_length=11,
            threshold=(1.15, 0.55), blur_sigma=(0.05, 20.0), brightness=(0.95, 0.3)),
}

def _clipped_zoom(field: Tensor, zoom: float) -> Tensor:
    """ImageNet-C's ``clipped_zoom``: centre crop of ``ceil(N / zoom)``, bilinear zoom, centre trim to ``N``."""
    height, width = field.shape[-2:]
    ch, cw = math.ceil(height / zoom), math.ceil(width / zoom)
    top, left = (height - ch) // 2, (width - cw) // 2
    crop = field[..., top : top + ch, left : left + cw]
    zh, zw = max(round(ch * zoom), height), max(round(cw * zoom), width)
    zoomed = F.interpolate(crop, size=(zh, zw), mode="bilinear", align_corners=True)
    trim_top, trim_left = (zh - height) // 2, (zw - width) // 2
    return zoomed[..., trim_top : trim_top + height, trim_left : trim_left + width]


def snow_field(
    shape: tuple[int, int, int],
    field_mean: float,
    field_std: float,
    zoom: float,
    generator: torch.Generator | None,
    like: Tensor,
) -> Tensor:
    """Draw zoomed Gaussian snow fields.

    Shape:
        ``shape``: ``(N, H, W)``; output: ``(N, 1, H, W)`` on ``like``'s device and dtype.
    """
    noise = randn((shape[0], 1, shape[1], shape[2]), generator, like)
    return _clipped_zoom(field_mean + field_std * noise, zoom)


def _motion_blur(layer: Tensor, sigma: Tensor, vertical: Tensor, length: int) -> Tensor:
    """Per-sample 1-D Gaussian motion blur along rows or columns (zero padding, "same" size).

    Shape:
        ``layer``: ``(B, 1, H, W)``; ``sigma``, ``vertical``: ``(B,)``.
    """
    batch, _, height, width = layer.shape
    offsets = torch.arange(length, device=layer.device, dtype=layer.dtype) - length // 2
    safe = sigma.clamp_min(1e-12)[:, None]
    kernel = torch.exp(-(offsets[None, :] ** 2) / (2 * safe**2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    delta = (offsets == 0).to(layer.dtype).expand(batch, length)
    vertical = vertical[:, None]
    k_rows = torch.where(vertical, delta, kernel)  # blur along the width for horizontal snow
    k_cols = torch.where(vertical, kernel, delta)
    flat = layer.reshape(1, batch, height, width)
    pad = length // 2
    flat = F.conv2d(flat, k_rows.reshape(batch, 1, 1, length), padding=(0, pad), groups=batch)
    flat = F.conv2d(flat, k_cols.reshape(batch, 1, length, 1), padding=(pad, 0), groups=batch)
    return flat.reshape(batch, 1, height, width)


def _brighten(x: Tensor, brightness: Tensor) -> Tensor:
    if x.shape[1] == 3:
        weights = torch.tensor(LUMA_WEIGHTS, device=x.device, dtype=x.dtype)[None, :, None, None]
        gray = (x * weights).sum(dim=1, keepdim=True)
    else:
        gray = x.mean(dim=1, keepdim=True)
    b = brightness[:, None, None, None]
    return b * x + (1 - b) * torch.maximum(x, gray * 1.5 + 0.5)


def snow(
    x: Tensor,
    field: Tensor,
    vertical: Tensor,
    threshold: Tensor,
    blur_sigma: Tensor,
    brightness: Tensor | None = None,
    kernel_length: int = 11,
) -> Tensor:
    """Functional twin of :class:`Snow` at given per-sample schedule values.

    Args:
        x: images in ``[0, 1]``.
        field: zoomed snow fields (see :func:`snow_field`).
        vertical: motion direction per sample (``True``: vertical).
        threshold: field values below it are no snow.
        blur_sigma: motion-blur standard deviation.
        brightness: ImageNet-C brightening coefficient, or ``None`` to keep the image's brightness.
        kernel_length: odd motion-blur kernel length.

    Shape:
        ``x``: ``(B, C, H, W)``; ``field``: ``(B, 1, H, W)``; ``vertical``, ``threshold``, ``blur_sigma``,
        ``brightness``: ``(B,)``; output: ``(B, C, H, W)``.

    Example:
        Snow only brightens, stays in ``[0, 1]``, and a threshold above every field value adds none:

        >>> x = torch.full((1, 3, 16, 16), 0.3)
        >>> field = torch.linspace(0, 1.5, 256).reshape(1, 1, 16, 16)
        >>> vertical, sigma = torch.tensor([False]), torch.tensor([2.0])
        >>> y = snow(x, field, vertical, threshold=torch.tensor([0.7]), blur_sigma=sigma)
        >>> y.shape, bool((y >= x).all() and y.max() <= 1 and y.max() > 0.3)
        (torch.Size([1, 3, 16, 16]), True)
        >>> torch.equal(snow(x, field, vertical, threshold=torch.tensor([2.0]), blur_sigma=sigma), x)
        True
    """
    who = "snow"
    x = check_image(x, who, "x")
    kernel_length = check_odd_kernel_size(kernel_length, who)
    batch = x.shape[0]
    if field.shape != (batch, 1, *x.shape[-2:]):
        raise ValueError(f"{who}: field must have shape {(batch, 1, *x.shape[-2:])}, got {tuple(field.shape)}")
    for name, value in (("vertical", vertical), ("threshold", threshold), ("blur_sigma", blur_sigma),
                        ("brightness", brightness)):
        if value is not None and value.shape != (batch,):
            raise ValueError(f"{who}: {name} must have shape ({batch},), got {tuple(value.shape)}")
    return _apply_snow(x, field, vertical.bool(), threshold, blur_sigma, brightness, kernel_length)


def _apply_snow(x, field, vertical, threshold, blur_sigma, brightness, kernel_length) -> Tensor:
    field = field.to(x.dtype)
    layer = torch.where(field < threshold.to(x.dtype)[:, None, None, None], torch.zeros_like(field), field)
    layer = _motion_blur(layer.clamp(0.0, 1.0), blur_sigma.to(x.dtype), vertical, kernel_length)
    base = x if brightness is None else _brighten(x, brightness.to(x.dtype))
    return (base + layer + layer.flip(-2, -1)).clamp(0.0, 1.0)


class Snow(Degradation):
    """ImageNet-C-style snow ``D(x, t)`` with a random snow field per sample (or one shared by the batch).

    Args:
        num_steps: ``T`` (the paper: 200).
        level: preset of the original code (1 to 4; the paper used 3 for CIFAR-10 and 4 for CelebA).
        field_mean, field_std, zoom, kernel_length, threshold, blur_sigma, brightness: override the preset;
            ``threshold``, ``blur_sigma`` and ``brightness`` are ``(start, end)`` pairs of linear schedules.
        fix_brightness: keep the image's brightness (the paper's setting); ``False`` applies ImageNet-C's
            brightening schedule.
        shared: one snow field and direction for the whole batch instead of one per sample.
        channels: accepted channel count, or ``None`` for any.

    Shape:
        ``x0``: ``(B, C, H, W)``; ``t``: ``int`` or ``(B,)``; output: ``(B, C, H, W)``.
    """

    param_keys = ("field", "vertical")

    def __init__(
        self,
        num_steps: int,
        level: int = 3,
        field_mean: float | None = None,
        field_std: float | None = None,
        zoom: float | None = None,
        kernel_length: int | None = None,
        threshold: tuple[float, float] | None = None,
        blur_sigma: tuple[float, float] | None = None,
        brightness: tuple[float, float] | None = None,
        fix_brightness: bool = True,
        shared: bool = False,
        channels: int | None = None,
    ) -> None:
        super().__init__(num_steps, channels)
        who = type(self).__name__
        if level not in SNOW_LEVELS:
            raise ValueError(f"{who}: level must be one of {sorted(SNOW_LEVELS)}, got {level!r}")
        preset = dict(SNOW_LEVELS[level])
        overrides = dict(field_mean=field_mean, field_std=field_std, zoom=zoom, kernel_length=kernel_length,
                         threshold=threshold, blur_sigma=blur_sigma, brightness=brightness)
        preset.update({k: v for k, v in overrides.items() if v is not None})
        if not preset["field_std"] >= 0:
            raise ValueError(f"{who}: field_std must be >= 0, got {preset['field_std']}")
        if not preset["zoom"] >= 1:
            raise ValueError(f"{who}: zoom must be >= 1, got {preset['zoom']}")
        for name in ("threshold", "blur_sigma", "brightness"):
            pair = preset[name]
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise ValueError(f"{who}: {name} must be a (start, end) pair, got {pair!r}")
        if min(preset["blur_sigma"]) <= 0:
            raise ValueError(f"{who}: blur_sigma must be > 0, got {preset['blur_sigma']}")
        if not all(0 <= b <= 1 for b in preset["brightness"]):
            raise ValueError(f"{who}: brightness must lie in [0, 1], got {preset['brightness']}")
        self.level = level
        self.field_mean = float(preset["field_mean"])
        self.field_std = float(preset["field_std"])
        self.zoom = float(preset["zoom"])
        self.kernel_length = check_odd_kernel_size(preset["kernel_length"], who)
        self.fix_brightness = bool(fix_brightness)
        self.shared = bool(shared)
        T = self.num_steps
        self.register_buffer("threshold", level_linspace(T, *preset["threshold"], clean=math.inf).float())
        self.register_buffer("blur_sigma", level_linspace(T, *preset["blur_sigma"], clean=1.0).float())
        self.register_buffer("brightness", level_linspace(T, *preset["brightness"], clean=1.0).float())

    def unknown_params_reason(self) -> str | None:
        return (f"{type(self).__name__}: the snow field and its direction are drawn at random per image; the snow in "
                "a given image is unknown and cannot be redrawn to match, so re-degrading cannot explain it")

    def make_params(self, x0: Tensor, generator: torch.Generator | None = None, **context: Tensor) -> Params:
        self._check_context(context)
        batch, _, height, width = x0.shape
        draws = 1 if self.shared else batch
        field = snow_field((draws, height, width), self.field_mean, self.field_std, self.zoom, generator, x0)
        vertical = rand((draws,), generator, x0) > 0.5
        return {"field": field.expand(batch, -1, -1, -1), "vertical": vertical.expand(batch)}

    def degrade(self, x0: Tensor, t: Tensor, params: Params) -> Tensor:
        brightness = None if self.fix_brightness else self.brightness.index_select(0, t)
        y = _apply_snow(
            x0,
            params["field"],
            params["vertical"].bool(),
            self.threshold.index_select(0, t),
            self.blur_sigma.index_select(0, t),
            brightness,
            self.kernel_length,
        )
        return torch.where(t[:, None, None, None] == 0, x0, y)

    def check_params(self, params, x: Tensor) -> Params:
        params = super().check_params(params, x)
        expected = (x.shape[0], 1, *x.shape[-2:])
        if params["field"].shape != expected:
            raise ValueError(f"Snow: params['field'] must have shape {expected}, got {tuple(params['field'].shape)}")
        if params["vertical"].shape != (x.shape[0],):
            raise ValueError(f"Snow: params['vertical'] must have shape ({x.shape[0]},), "
                             f"got {tuple(params['vertical'].shape)}")
        return params

    def extra_repr(self) -> str:
        return (f"num_steps={self.num_steps}, level={self.level}, fix_brightness={self.fix_brightness}, "
                f"shared={self.shared}")
