"""Image operators built on kornia, as degradations: each a pure function (the twin) and a :class:`Transform`.

Every twin takes one severity per image and works on a whole batch of mixed levels in one call:

=================  ====================================================================  ===========================
operator           ``D(x, t)``                                                           kornia / per-sample levels
=================  ====================================================================  ===========================
``MotionBlur``     a line kernel of length ``L_t`` (fractional lengths: a blend of the   ``filters.get_motion_kernel
                   two nearest odd kernels) at a random or given angle and direction      2d`` (one size per call:
                                                                                          **grouped by level**, tiny
                                                                                          kernels), then one
                                                                                          ``filters.filter2d`` with
                                                                                          per-image kernels
``DefocusBlur``    a uniform disk of radius ``r_t`` (anti-aliased, 9x9 samples per tap)   ``filters.filter2d``,
                                                                                          per-image kernels
``JPEG``           JPEG encode-decode at quality ``q_t``                                 ``enhance.jpeg_codec_differ
                                                                                          entiable``, per-image
                                                                                          quality
``Rotate``         rotation by ``a_t`` degrees about the centre (sign random or fixed)   ``geometry.transform.rotate``
``Zoom``           zoom into the centre by a factor ``z_t``                              ``geometry.transform.scale``
``Posterize``      ``b_t`` bits: ``round(2^b_t)`` grey levels per channel                ``enhance.posterize``
                                                                                          (``rounding="truncate"``,
                                                                                          grouped by bit depth)
``ContrastLoss``   blend with the mean grey: contrast factor ``c_t``                     ``enhance.adjust_contrast_
                                                                                          with_mean_subtraction``
``Elastic``        a fixed random displacement field (drawn once), RMS ``d_t`` pixels    ``filters.gaussian_blur2d``
                                                                                          smooths the field once (in
                                                                                          ``make_params``), as
                                                                                          ``geometry.transform.elastic
                                                                                          _transform2d`` does per call
=================  ====================================================================  ===========================

All but the motion blur's kernel construction take per-image parameters directly; kornia's motion kernel has one
size per call, so :func:`motion_blur` builds the kernels of each distinct length in the batch (a loop over the
levels present, never over images) and filters the whole batch in one call.  Each twin is registered under its
name for :class:`Transform` configs (``function: jpeg``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

from colddiff._checks import randn
from colddiff.degradations.base import Params, check_image, observe_8bit
from colddiff.degradations.transform import Transform, register_transform
from colddiff.schedules import SeveritySchedule

__all__ = [
    "motion_blur", "motion_kernels", "defocus_blur", "disk_kernels", "jpeg", "rotate", "zoom", "posterize", "contrast",
    "elastic", "elastic_field", "elastic_noise",
    "MotionBlur", "DefocusBlur", "JPEG", "Rotate", "Zoom", "Posterize", "ContrastLoss", "Elastic",
]

Border = Literal["reflect", "replicate", "circular", "constant"]
Padding = Literal["zeros", "border", "reflection"]
Rounding = Literal["nearest", "truncate"]
_BORDERS = ("reflect", "replicate", "circular", "constant")
_PADDINGS = ("zeros", "border", "reflection")
#: sub-samples per axis of each disk-kernel tap (odd, so a tap's centre is one of them)
DISK_SUPERSAMPLING = 9
#: values per call of kornia's JPEG codec on CPU (larger batches are coded in chunks of whole images)
JPEG_CPU_CHUNK = 2**20


# ------------------------------------------------------------------------------------------------ helpers
def _per_sample(value: float | Tensor, x: Tensor, name: str, who: str) -> Tensor:
    """A float or a ``()``, ``(1,)`` or ``(B,)`` tensor as a ``(B,)`` tensor in ``x``'s dtype and device."""
    batch = x.shape[0]
    if isinstance(value, Tensor):
        v = value.to(device=x.device, dtype=x.dtype)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        v = torch.tensor(float(value), device=x.device, dtype=x.dtype)
    else:
        raise TypeError(f"{who}: {name} must be a number or a tensor of one value per image, got "
                        f"{type(value).__name__}")
    if v.ndim == 0 or v.shape == (1,):
        return v.reshape(1).expand(batch)
    if v.shape != (batch,):
        raise ValueError(f"{who}: {name} must be a number or have shape ({batch},) (one per image), got "
                         f"{tuple(v.shape)}")
    return v


def _check_choice(value: str, allowed: tuple[str, ...], name: str, who: str) -> str:
    if value not in allowed:
        raise ValueError(f"{who}: {name} must be one of {allowed}, got {value!r}")
    return value


def _odd_below(length: float) -> int:
    """The largest odd integer ``<= length`` (``length >= 1``)."""
    return 1 + 2 * math.floor((length - 1) / 2 + 1e-6)


def _kernel_size_for(length: float) -> int:
    """Size of the square kernel that holds a line of (fractional) ``length``."""
    odd = _odd_below(length)
    return odd if length - odd <= 1e-6 else odd + 2


# ------------------------------------------------------------------------------------------------ motion blur
def _embedded_line(k: int, angle: Tensor, direction: Tensor, size: int) -> Tensor:
    """kornia's ``(n, k, k)`` motion kernels (``k = 1``: the identity), zero-padded to ``size x size``."""
    if k == 1:
        kernel = angle.new_zeros(angle.shape[0], 1, 1) + 1.0
    else:
        kernel = kornia.filters.get_motion_kernel2d(k, angle, direction)
    pad = (size - k) // 2
    return F.pad(kernel, (pad, pad, pad, pad))


def motion_kernels(length: Tensor, angle: Tensor, direction: Tensor) -> Tensor:
    """Per-image motion-blur kernels, all in one square size (the longest line's).

    A line of odd length ``k`` is :func:`kornia.filters.get_motion_kernel2d`'s kernel of size ``k``; a fractional
    length ``L = k + 2w`` (``0 <= w < 1``) blends the kernels of sizes ``k`` and ``k + 2``, ``(1 - w) K_k + w
    K_{k+2}``, so the blur grows continuously with ``L``; ``L = 1`` is the identity.  kornia takes one kernel size per
    call: the kernels are built once per distinct length (levels), never per image.

    Shape:
        ``length``, ``angle``, ``direction``: ``(B,)``; output: ``(B, K, K)``, ``K`` odd.
    """
    values = sorted(set(length.tolist()))
    size = max(_kernel_size_for(v) for v in values)
    kernels = length.new_zeros(length.shape[0], size, size)
    for value in values:
        index = (length == value).nonzero().flatten()
        k = _odd_below(value)
        w = min(max((value - k) / 2, 0.0), 1.0)
        a, d = angle.index_select(0, index), direction.index_select(0, index)
        kernel = _embedded_line(k, a, d, size)
        if w > 1e-6:
            kernel = (1 - w) * kernel + w * _embedded_line(k + 2, a, d, size)
        kernels[index] = kernel.to(kernels.dtype)
    return kernels


def motion_blur(x: Tensor, length: float | Tensor, angle: float | Tensor = 0.0, direction: float | Tensor = 0.0,
                border: Border = "reflect") -> Tensor:
    """Motion blur along a line of ``length`` pixels (per image), kornia's motion kernels.

    Args:
        x: images in ``[0, 1]``.
        length: line length in pixels, ``>= 1`` (1: the identity; fractional lengths blend the two nearest odd
            kernels, see :func:`motion_kernels`).
        angle: direction of the line in degrees, counter-clockwise (kornia's convention).
        direction: in ``[-1, 1]``: 0 a uniform line, towards ``+-1`` weighted to one end (kornia's convention).
        border: padding of :func:`kornia.filters.filter2d` (``reflect`` needs sides longer than half the kernel).

    Shape:
        ``x``: ``(B, C, H, W)``; ``length``, ``angle``, ``direction``: numbers or ``(B,)``; output: ``(B, C, H, W)``.

    Example:
        The blur of a bright point is a line of the given length:

        >>> x = torch.zeros(1, 1, 9, 9)
        >>> x[..., 4, 4] = 1.0
        >>> y = motion_blur(x, 5.0)
        >>> [round(v, 4) for v in y[0, 0, 4].tolist()]
        [0.0, 0.0, 0.2, 0.2, 0.2, 0.2, 0.2, 0.0, 0.0]
        >>> bool(y.sum(dim=-1)[0, 0, [0, 1, 2, 3, 5, 6, 7, 8]].eq(0).all())
        True
    """
    who = "motion_blur"
    x = check_image(x, who, "x")
    _check_choice(border, _BORDERS, "border", who)
    lengths = _per_sample(length, x, "length", who)
    kernels = motion_kernels(lengths, _per_sample(angle, x, "angle", who), _per_sample(direction, x, "direction", who))
    return kornia.filters.filter2d(x, kernels, border_type=border)


# ------------------------------------------------------------------------------------------------ defocus blur
def disk_kernels(radius: Tensor) -> Tensor:
    """Per-image uniform disks of ``radius`` pixels, normalised, anti-aliased by supersampling.

    A tap's weight is the fraction of its ``9 x 9`` sub-samples (the pixel's centre among them) within the disk, so
    radius 0 is the identity and the kernel grows with the radius; the size holds the largest disk.

    Shape:
        ``radius``: ``(B,)``; output: ``(B, K, K)`` with ``K = 2 ceil(max r + 1/2) - 1``.
    """
    s = DISK_SUPERSAMPLING
    reach = max(math.ceil(float(radius.max()) + 0.5) - 1, 0)
    taps = torch.arange(-reach, reach + 1, dtype=torch.float64, device=radius.device)
    sub = (torch.arange(s, dtype=torch.float64, device=radius.device) - (s - 1) / 2) / s
    coords = (taps[:, None] + sub[None, :]).flatten()
    inside = (coords[:, None] ** 2 + coords[None, :] ** 2)[None] <= radius.double()[:, None, None] ** 2
    size = 2 * reach + 1
    coverage = inside.double().reshape(-1, size, s, size, s).mean(dim=(2, 4))
    return (coverage / coverage.sum(dim=(1, 2), keepdim=True)).to(radius.dtype)


def defocus_blur(x: Tensor, radius: float | Tensor, border: Border = "reflect") -> Tensor:
    """Defocus (disk) blur of ``radius`` pixels per image: :func:`disk_kernels` with :func:`kornia.filters.filter2d`.

    Shape:
        ``x``: ``(B, C, H, W)``; ``radius``: a number or ``(B,)``; output: ``(B, C, H, W)``.

    Example:
        A bright point becomes a disk (mass kept): radius 2 covers the 5x5 taps but the corners; radius 0 is the
        identity:

        >>> x = torch.zeros(1, 1, 7, 7)
        >>> x[..., 3, 3] = 1.0
        >>> y = defocus_blur(x, 2.0)
        >>> round(y.sum().item(), 5), (y[0, 0] > 0).sum().item(), torch.equal(defocus_blur(x, 0.0), x)
        (1.0, 21, True)
    """
    who = "defocus_blur"
    x = check_image(x, who, "x")
    _check_choice(border, _BORDERS, "border", who)
    return kornia.filters.filter2d(x, disk_kernels(_per_sample(radius, x, "radius", who)), border_type=border)


# ------------------------------------------------------------------------------------------------ JPEG
def jpeg(x: Tensor, quality: float | Tensor) -> Tensor:
    """JPEG encode-decode at ``quality`` (per image): :func:`kornia.enhance.jpeg_codec_differentiable`.

    kornia's codec takes RGB images whose sides are multiples of 16 (4:2:0 chroma subsampling of 8x8 blocks), with
    one quality per image: a batch is one call (on CPU, batches of more than ``JPEG_CPU_CHUNK`` values are coded in
    chunks of whole images, which stay in cache: 32 RGB 128x128 images took 149 ms in one call and 89 ms in
    chunks of 16, one thread).
    Other sizes are padded by edge replication at the bottom and right, as JPEG encoders fill their last blocks,
    and cropped back; grayscale images are coded as RGB with the channel repeated (so the chroma is flat) and
    returned as their luma.  The output is clamped to ``[0, 1]`` and not rounded to 8 bits.  Quality 100 is close
    to, not equal to, the identity.

    Args:
        x: RGB or grayscale images in ``[0, 1]`` (1 or 3 channels).
        quality: JPEG quality in ``[0, 100]`` (lower: stronger compression).

    Shape:
        ``x``: ``(B, C, H, W)``, ``C`` 1 or 3, any ``H, W``; ``quality``: a number or ``(B,)``; output: same as ``x``.

    Example:
        >>> x = torch.rand(2, 1, 20, 28)
        >>> y = jpeg(x, torch.tensor([90.0, 10.0]))
        >>> y.shape, bool((y[1] - x[1]).abs().mean() > (y[0] - x[0]).abs().mean())
        (torch.Size([2, 1, 20, 28]), True)
    """
    who = "jpeg"
    x = check_image(x, who, "x")
    channels = x.shape[1]
    if channels not in (1, 3):
        raise ValueError(f"{who}: JPEG codes RGB (3 channels) or grayscale (1 channel) images, got {channels} "
                         f"channels (shape {tuple(x.shape)})")
    q = _per_sample(quality, x, "quality", who)
    height, width = x.shape[-2:]
    rgb = x if channels == 3 else x.repeat(1, 3, 1, 1)
    pad_h, pad_w = -height % 16, -width % 16
    if pad_h or pad_w:
        rgb = F.pad(rgb, (0, pad_w, 0, pad_h), mode="replicate")
    step = x.shape[0]
    if rgb.device.type == "cpu" and rgb.numel() > JPEG_CPU_CHUNK:
        step = max(1, JPEG_CPU_CHUNK // rgb[0].numel())
    out = torch.cat([kornia.enhance.jpeg_codec_differentiable(rgb[i : i + step], q[i : i + step])
                     for i in range(0, x.shape[0], step)])[..., :height, :width]
    if channels == 1:
        out = kornia.color.rgb_to_grayscale(out)
    return out.clamp(0.0, 1.0)


# ------------------------------------------------------------------------------------------------ geometry
def rotate(x: Tensor, angle: float | Tensor, sign: float | Tensor = 1.0, padding: Padding = "zeros") -> Tensor:
    """Rotation by ``sign * angle`` degrees (counter-clockwise) about the image centre, bilinear:
    :func:`kornia.geometry.transform.rotate` (``align_corners=True``); uncovered corners by ``padding``.

    Shape:
        ``x``: ``(B, C, H, W)``; ``angle``, ``sign``: numbers or ``(B,)``; output: ``(B, C, H, W)``.

    Example:
        A quarter turn of a square image is :func:`torch.rot90`:

        >>> x = torch.rand(1, 1, 6, 6)
        >>> torch.allclose(rotate(x, 90.0), torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5)
        True
    """
    who = "rotate"
    x = check_image(x, who, "x")
    _check_choice(padding, _PADDINGS, "padding", who)
    degrees = _per_sample(angle, x, "angle", who) * _per_sample(sign, x, "sign", who)
    return kornia.geometry.transform.rotate(x, degrees, mode="bilinear", padding_mode=padding, align_corners=True)


def zoom(x: Tensor, factor: float | Tensor, padding: Padding = "zeros") -> Tensor:
    """Zoom into the image centre by ``factor`` (per image; 1 is the identity, 2 shows the central half enlarged),
    bilinear: :func:`kornia.geometry.transform.scale` (``align_corners=True``).

    Shape:
        ``x``: ``(B, C, H, W)``; ``factor``: a number or ``(B,)``; output: ``(B, C, H, W)``.

    Example:
        Zooming a 5x5 image by 2 puts its central 3x3 pixels at the even positions:

        >>> x = torch.rand(1, 1, 5, 5)
        >>> torch.allclose(zoom(x, 2.0)[..., ::2, ::2], x[..., 1:4, 1:4], atol=1e-6)
        True
    """
    who = "zoom"
    x = check_image(x, who, "x")
    _check_choice(padding, _PADDINGS, "padding", who)
    return kornia.geometry.transform.scale(x, _per_sample(factor, x, "factor", who), mode="bilinear",
                                           padding_mode=padding, align_corners=True)


# ------------------------------------------------------------------------------------------------ tones
def posterize(x: Tensor, bits: float | Tensor, rounding: Rounding = "nearest") -> Tensor:
    """Posterize to ``bits`` bits per channel (per image).

    ``rounding="nearest"`` (default) maps each value to the nearest of ``n = round(2^bits)`` evenly spaced grey
    levels from 0 to 1, ``round(x (n - 1)) / (n - 1)``: 1 bit gives ``{0, 1}``, 8 bits the 8-bit image, and
    fractional bits give the levels in between, so the operator grows continuously with the level.
    ``rounding="truncate"`` is :func:`kornia.enhance.posterize` (as torchvision's): keep the top ``round(bits)``
    bits of the truncated 8-bit value, which darkens (1 bit gives ``{0, 128/255}``).

    Shape:
        ``x``: ``(B, C, H, W)``; ``bits``: a number or ``(B,)``; output: ``(B, C, H, W)``.

    Example:
        >>> x = torch.linspace(0, 1, 6).reshape(1, 1, 1, 6)
        >>> posterize(x, 1.0).flatten().tolist()
        [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
        >>> posterize(x, 1.0, rounding="truncate").flatten().tolist()
        [0.0, 0.0, 0.0, 0.501960813999176, 0.501960813999176, 0.501960813999176]
    """
    who = "posterize"
    x = check_image(x, who, "x")
    _check_choice(rounding, ("nearest", "truncate"), "rounding", who)
    b = _per_sample(bits, x, "bits", who)
    if rounding == "truncate":  # kornia's per-image tensor path is ~2x slower than its whole-batch int path
        whole = b.round().long()
        values = sorted(set(whole.tolist()))
        if len(values) == 1:
            return kornia.enhance.posterize(x, values[0])
        out = torch.empty_like(x)
        for value in values:  # grouped by bit depth (level), never by image
            index = (whole == value).nonzero().flatten()
            out[index] = kornia.enhance.posterize(x.index_select(0, index), value)
        return out
    steps = (torch.round(torch.exp2(b)).clamp_min(2.0) - 1.0)[:, None, None, None]
    return torch.round(x.clamp(0.0, 1.0) * steps) / steps


def contrast(x: Tensor, factor: float | Tensor) -> Tensor:
    """Contrast ``factor`` per image (1 the identity, 0 the mean grey): each image blended with the mean of its
    grayscale image, :func:`kornia.enhance.adjust_contrast_with_mean_subtraction` (Pillow's definition; RGB luma,
    other channel counts the mean over channels), clamped to ``[0, 1]``.

    Shape:
        ``x``: ``(B, C, H, W)``; ``factor``: a number or ``(B,)``; output: ``(B, C, H, W)``.

    Example:
        >>> x = torch.tensor([[[[0.0, 1.0]]]])
        >>> contrast(x, 0.5).flatten().tolist(), contrast(x, 0.0).flatten().tolist()
        ([0.25, 0.75], [0.5, 0.5])
    """
    who = "contrast"
    x = check_image(x, who, "x")
    return kornia.enhance.adjust_contrast_with_mean_subtraction(x, _per_sample(factor, x, "factor", who))


# ------------------------------------------------------------------------------------------------ elastic
def _smoothing_size(sigma: float) -> int:
    """Odd Gaussian kernel size covering ``+- 3 sigma``."""
    return 2 * math.ceil(3 * sigma) + 1


def _check_sigma(sigma: Any, who: str) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"{who}: sigma must be a positive number (pixels), got {sigma!r}")
    return float(sigma)


def _noise_and_field(x: Tensor, sigma: float, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    sigma = _check_sigma(sigma, "elastic_field")
    batch, _, height, width = x.shape
    noise = randn((batch, 2, height, width), generator, x)
    k = _smoothing_size(sigma)
    smooth = kornia.filters.gaussian_blur2d(noise, (k, k), (sigma, sigma), border_type="constant")
    rms = smooth.pow(2).sum(dim=1).mean(dim=(1, 2)).sqrt().clamp_min(torch.finfo(x.dtype).tiny)[:, None, None, None]
    return noise / rms, smooth / rms


def elastic_field(x: Tensor, sigma: float = 4.0, generator: torch.Generator | None = None) -> Tensor:
    """A random displacement field for :func:`elastic`: Gaussian noise smoothed by a Gaussian of ``sigma`` pixels
    (:func:`kornia.filters.gaussian_blur2d`, zero borders: the smoothing of
    :func:`kornia.geometry.transform.elastic_transform2d`), scaled per image to a root-mean-square length of 1.

    Shape:
        ``x``: ``(B, C, H, W)`` (for the batch, size, device and dtype); output: ``(B, 2, H, W)``, channel 0 the
        ``x`` (width) and channel 1 the ``y`` (height) displacement, in pixels.
    """
    return _noise_and_field(x, sigma, generator)[1]


def elastic_noise(x: Tensor, sigma: float = 4.0, generator: torch.Generator | None = None) -> Tensor:
    """The unsmoothed noise behind :func:`elastic_field` (the same draw for the same generator state): what
    :func:`kornia.geometry.transform.elastic_transform2d` takes, scaled so that its smoothing is the unit-RMS field.

    Shape:
        ``x``: ``(B, C, H, W)``; output: ``(B, 2, H, W)``.
    """
    return _noise_and_field(x, sigma, generator)[0]


def elastic(x: Tensor, displacement: float | Tensor, field: Tensor, padding: Padding = "border") -> Tensor:
    """Elastic distortion: each pixel samples the image ``displacement * field`` pixels away (per image; bilinear,
    outside samples by ``padding``), with ``field`` a smooth unit-RMS field (:func:`elastic_field`).

    This is :func:`kornia.geometry.transform.elastic_transform2d` (``align_corners=False``) with the smoothing done
    once, when the field is drawn: the displacement is linear in the noise, so every level is a scaled copy of the
    same smoothed field and a call costs one ``grid_sample`` (the test suite checks the two agree).

    Shape:
        ``x``: ``(B, C, H, W)``; ``displacement``: a number or ``(B,)``; ``field``: ``(B, 2, H, W)``; output:
        ``(B, C, H, W)``.

    Example:
        >>> x = torch.rand(2, 1, 16, 16)
        >>> field = elastic_field(x, sigma=3.0, generator=torch.Generator().manual_seed(0))
        >>> y = elastic(x, torch.tensor([0.0, 2.0]), field)
        >>> torch.allclose(y[0], x[0], atol=1e-6), bool((y[1] - x[1]).abs().mean() > 0.01)
        (True, True)
    """
    who = "elastic"
    x = check_image(x, who, "x")
    _check_choice(padding, _PADDINGS, "padding", who)
    batch, _, height, width = x.shape
    if not isinstance(field, Tensor) or field.shape != (batch, 2, height, width):
        got = tuple(field.shape) if isinstance(field, Tensor) else type(field).__name__
        raise ValueError(f"{who}: field must have shape {(batch, 2, height, width)}, got {got}")
    d = _per_sample(displacement, x, "displacement", who)
    to_grid = torch.tensor([2.0 / width, 2.0 / height], dtype=x.dtype, device=x.device)  # pixels -> [-1, 1] units
    shift = (field.to(x.dtype) * d[:, None, None, None]).permute(0, 2, 3, 1) * to_grid
    identity = torch.eye(2, 3, dtype=x.dtype, device=x.device).expand(batch, 2, 3)
    grid = F.affine_grid(identity, [batch, 1, height, width], align_corners=False)
    return F.grid_sample(x, grid + shift, mode="bilinear", padding_mode=padding, align_corners=False)


def _draw_elastic_field(x0: Tensor, generator: torch.Generator | None, sigma: float = 4.0) -> Params:
    return {"field": elastic_field(x0, sigma, generator)}


# ------------------------------------------------------------------------------------------------ registry
register_transform("motion_blur", motion_blur, clean=1.0, end=11.0, low=1.0,
                   description="motion blur, severity: line length in pixels")
register_transform("defocus_blur", defocus_blur, clean=0.5, end=3.0, low=0.0,
                   description="defocus (disk) blur, severity: radius in pixels")
register_transform("jpeg", jpeg, clean=100.0, end=10.0, low=1.0, high=100.0,
                   description="JPEG compression, severity: quality")
register_transform("rotate", rotate, clean=0.0, end=90.0, description="rotation, severity: degrees")
register_transform("zoom", zoom, clean=1.0, end=2.0, low=1e-3, description="zoom, severity: magnification")
register_transform("posterize", posterize, clean=8.0, end=1.0, low=1.0, high=8.0,
                   description="posterize, severity: bits per channel")
register_transform("contrast", contrast, clean=1.0, end=0.0, low=0.0,
                   description="contrast loss, severity: contrast factor")
register_transform("elastic", elastic, clean=0.0, end=3.0, low=0.0, draw=_draw_elastic_field, param_keys=("field",),
                   draw_options=("sigma",), description="elastic distortion, severity: RMS displacement in pixels")


# ------------------------------------------------------------------------------------------------ operators
class MotionBlur(Transform):
    """Motion blur ``D(x, t)``: a line kernel of length ``L_t`` from 1 (level 0) to ``max_length`` (level ``T``).

    Args:
        num_steps: ``T``.
        max_length: line length at level ``T`` in pixels (fractional lengths blend odd kernels, see
            :func:`motion_kernels`).
        angle: the line's angle in degrees, or ``None`` to draw one per image in :meth:`make_params` (uniform in
            ``[0, 180)``, or ``[0, 360)`` when the direction is not 0).
        direction: kornia's ``[-1, 1]`` weighting along the line (0: uniform), or ``None`` to draw it per image.
        border: padding (``reflect``, ``replicate``, ``circular``, ``constant``).
        schedule: ``"linear"`` or ``"exponential"`` from 1 to ``max_length``.
        lengths: ``T + 1`` given lengths (overrides ``max_length`` and ``schedule``).
        channels: accepted channel count, or ``None`` for any.

    Shape:
        ``x0``: ``(B, C, H, W)``; ``t``: ``int`` or ``(B,)``; output: ``(B, C, H, W)``.
    """

    def __init__(self, num_steps: int, max_length: float = 11.0, angle: float | None = None,
                 direction: float | None = 0.0, border: Border = "reflect", schedule: SeveritySchedule = "linear",
                 lengths: list[float] | None = None, channels: int | None = None) -> None:
        who = type(self).__name__
        _check_choice(border, _BORDERS, "border", who)
        if direction is not None and not -1.0 <= float(direction) <= 1.0:
            raise ValueError(f"{who}: direction must lie in [-1, 1] or be None (random), got {direction!r}")
        options: dict[str, Any] = {"border": border}
        random: dict[str, list[Any]] = {}
        if angle is None:
            random["angle"] = ["uniform", 0.0, 180.0 if direction == 0.0 else 360.0]
        else:
            options["angle"] = float(angle)
        if direction is None:
            random["direction"] = ["uniform", -1.0, 1.0]
        else:
            options["direction"] = float(direction)
        super().__init__(num_steps, "motion_blur", schedule, clean=1.0, end=max_length, severities=lengths,
                         options=options, random=random, channels=channels)

    def check_image_size(self, height: int, width: int) -> None:
        """``reflect`` and ``circular`` padding need image sides longer than half the largest kernel."""
        size = _kernel_size_for(float(self.severity.max()))
        if self.options["border"] in ("reflect", "circular") and min(height, width) <= size // 2:
            raise ValueError(f"{type(self).__name__}: a {size}x{size} motion kernel needs image sides longer than "
                             f"{size // 2} pixels, got {height}x{width}")

    def unknown_params_reason(self) -> str | None:
        if not self.random:
            return None
        return (f"{type(self).__name__}: the blur's {' and '.join(self.random)} are drawn at random per image and a "
                "given image's are unknown (give angle= and direction= to make the operator deterministic)")


class DefocusBlur(Transform):
    """Defocus blur ``D(x, t)``: a uniform disk of radius ``r_t`` from 1/2 (level 0) to ``max_radius`` (level ``T``),
    deterministic.

    A disk of radius ``<= 1/2`` lies inside the centre pixel and :func:`disk_kernels` makes it the identity, so the
    schedule starts there: every level ``t >= 1`` blurs.

    Args:
        num_steps: ``T``.
        max_radius: disk radius at level ``T`` in pixels.
        border: padding (``reflect``, ``replicate``, ``circular``, ``constant``).
        schedule: ``"linear"`` or ``"exponential"`` from 1/2 to ``max_radius``.
        radii: ``T + 1`` given radii (overrides ``max_radius`` and ``schedule``).
        channels: accepted channel count, or ``None`` for any.

    Shape:
        ``x0``: ``(B, C, H, W)``; ``t``: ``int`` or ``(B,)``; output: ``(B, C, H, W)``.
    """

    def __init__(self, num_steps: int, max_radius: float = 3.0, border: Border = "reflect",
                 schedule: SeveritySchedule = "linear", radii: list[float] | None = None,
                 channels: int | None = None) -> None:
        _check_choice(border, _BORDERS, "border", type(self).__name__)
        super().__init__(num_steps, "defocus_blur", schedule, clean=0.5, end=max_radius, severities=radii,
                         options={"border": border}, channels=channels)

    def check_image_size(self, height: int, width: int) -> None:
        """``reflect`` and ``circular`` padding need image sides longer than half the largest kernel."""
        size = 2 * max(math.ceil(float(self.severity.max()) + 0.5) - 1, 0) + 1
        if self.options["border"] in ("reflect", "circular") and min(height, width) <= size // 2:
            raise ValueError(f"{type(self).__name__}: a {size}x{size} disk kernel needs image sides longer than "
                             f"{size // 2} pixels, got {height}x{width}")


class JPEG(Transform):
    """JPEG compression ``D(x, t)``: quality ``q_t`` from 100 (level 0) down to ``min_quality`` (level ``T``),
    kornia's differentiable codec (deterministic, so the level of a given image can be estimated; by an exhaustive
    scan of the levels, see :meth:`level_search_grid`).

    Any image size works (padded to multiples of 16 and cropped back, see :func:`jpeg`); grayscale images are coded
    with the channel repeated.  Only level 0 is the identity: quality 100 still rounds the DCT coefficients.

    Args:
        num_steps: ``T``.
        min_quality: the quality at level ``T`` (in ``[1, 100]``).
        schedule: ``"linear"`` (default) or ``"exponential"`` in quality from 100 to ``min_quality``.
        qualities: ``T + 1`` given qualities (overrides ``min_quality`` and ``schedule``).
        quantize: the observed images (training inputs, start states) are rounded to 8 bits at ``t >= 1``, like a
            decoded JPEG file; the exact :meth:`degrade` of the samplers is not.
        channels: 1, 3 or ``None`` (either).

    Shape:
        ``x0``: ``(B, C, H, W)``, ``C`` 1 or 3; ``t``: ``int`` or ``(B,)``; output: ``(B, C, H, W)``.
    """

    def __init__(self, num_steps: int, min_quality: float = 10.0, schedule: SeveritySchedule = "linear",
                 qualities: list[float] | None = None, quantize: bool = False, channels: int | None = None) -> None:
        if channels not in (None, 1, 3):
            raise ValueError(f"{type(self).__name__}: channels must be 1, 3 or None, got {channels!r}")
        super().__init__(num_steps, "jpeg", schedule, clean=100.0, end=min_quality, severities=qualities,
                         channels=channels)
        self.quantize = bool(quantize)

    def check_input(self, x: Any, name: str = "x0") -> Tensor:
        x = super().check_input(x, name)
        if x.shape[1] not in (1, 3):
            raise ValueError(f"{type(self).__name__}: JPEG codes RGB (3 channels) or grayscale (1 channel) images, "
                             f"got {x.shape[1]} channels (shape {tuple(x.shape)})")
        return x

    def observe(self, y: Tensor, t: Tensor) -> Tensor:
        """8-bit rounding at levels ``t >= 1`` when ``quantize`` (else the identity)."""
        return observe_8bit(y, t, self.quantize)

    def level_search_grid(self, candidates: int) -> int | None:
        """An exhaustive scan: a lower quality is not a further degradation of a higher one (it rounds other DCT
        coefficients), so the residual of a given image is a narrow minimum at its level, which a coarse grid misses
        (on the dejpeg digits the default O(log T) search found 54% of the levels exactly, the scan 81%)."""
        return candidates


class Rotate(Transform):
    """Rotation ``D(x, t)`` by ``a_t`` degrees about the centre, from 0 to ``max_angle``; corners by ``padding``.

    Args:
        num_steps: ``T``.
        max_angle: angle at level ``T`` in degrees (counter-clockwise).
        random_direction: draw the sense of rotation per image in :meth:`make_params` (``sign`` ``+-1``) instead of
            always counter-clockwise.
        padding: ``zeros``, ``border`` or ``reflection``.
        schedule: ``"linear"``.
        angles: ``T + 1`` given angles (overrides ``max_angle`` and ``schedule``).
        channels: accepted channel count, or ``None`` for any.

    Shape:
        ``x0``: ``(B, C, H, W)``; ``t``: ``int`` or ``(B,)``; output: ``(B, C, H, W)``.
    """

    def __init__(self, num_steps: int, max_angle: float = 90.0, random_direction: bool = False,
                 padding: Padding = "zeros", schedule: SeveritySchedule = "linear", angles: list[float] | None = None,
                 channels: int | None = None) -> None:
        _check_choice(padding, _PADDINGS, "padding", type(self).__name__)
        super().__init__(num_steps, "rotate", schedule, clean=0.0, end=max_angle, severities=angles,
                         options={"padding": padding},
                         random={"sign": ["choice", -1.0, 1.0]} if random_direction else None, channels=channels)

    def unknown_params_reason(self) -> str | None:
        if not self.random:
            return None
        return (f"{type(self).__name__}: the sense of rotation is drawn at random per image and a given image's is "
                "unknown (random_direction=False rotates every image counter-clockwise)")


class Zoom(Transform):
    """Zoom ``D(x, t)`` into the centre by ``z_t``, from 1 (level 0) to ``max_zoom`` (deterministic).

    Args:
        num_steps: ``T``.
        max_zoom: magnification at level ``T`` (``> 1`` zooms in; the outer ``1 - 1/z`` of the image is lost).
        padding: ``zeros``, ``border`` or ``reflection`` (used only when zooming out).
        schedule: ``"linear"`` or ``"exponential"`` (evenly spaced magnification ratios) from 1 to ``max_zoom``.
        factors: ``T + 1`` given factors (overrides ``max_zoom`` and ``schedule``).
        channels: accepted channel count, or ``None`` for any.

    Shape:
        ``x0``: ``(B, C, H, W)``; ``t``: ``int`` or ``(B,)``; output: ``(B, C, H, W)``.
    """

    def __init__(self, num_steps: int, max_zoom: float = 2.0, padding: Padding = "zeros",
                 schedule: SeveritySchedule = "linear", factors: list[float] | None = None,
                 channels: int | None = None) -> None:
        _check_choice(padding, _PADDINGS, "padding", type(self).__name__)
        super().__init__(num_steps, "zoom", schedule, clean=1.0, end=max_zoom, severities=factors,
                         options={"padding": padding}, channels=channels)


class Posterize(Transform):
    """Posterization ``D(x, t)`` to ``b_t`` bits, from 8 (level 0) down to ``min_bits`` (deterministic).

    Args:
        num_steps: ``T``.
        min_bits: bits at level ``T`` (in ``[1, 8]``).
        rounding: ``"nearest"`` (evenly spaced levels from 0 to 1, fractional bits allowed) or ``"truncate"``
            (kornia's and torchvision's top-bits posterize, whole bits only), see :func:`posterize`.
        schedule: ``"linear"`` or ``"exponential"`` from 8 to ``min_bits``.
        bits: ``T + 1`` given bit depths (overrides ``min_bits`` and ``schedule``).
        channels: accepted channel count, or ``None`` for any.

    Shape:
        ``x0``: ``(B, C, H, W)``; ``t``: ``int`` or ``(B,)``; output: ``(B, C, H, W)``.
    """

    def __init__(self, num_steps: int, min_bits: float = 1.0, rounding: Rounding = "nearest",
                 schedule: SeveritySchedule = "linear", bits: list[float] | None = None,
                 channels: int | None = None) -> None:
        _check_choice(rounding, ("nearest", "truncate"), "rounding", type(self).__name__)
        super().__init__(num_steps, "posterize", schedule, clean=8.0, end=min_bits, severities=bits,
                         options={"rounding": rounding}, channels=channels)


class ContrastLoss(Transform):
    """Contrast loss ``D(x, t)``: contrast factor ``c_t`` from 1 (level 0) to ``min_contrast`` (level ``T``; 0: the
    mean grey image), deterministic.

    Args:
        num_steps: ``T``.
        min_contrast: contrast factor at level ``T`` (in ``[0, 1)``).
        schedule: ``"linear"`` (``"exponential"`` needs ``min_contrast > 0``).
        factors: ``T + 1`` given factors (overrides ``min_contrast`` and ``schedule``).
        channels: accepted channel count, or ``None`` for any.

    Shape:
        ``x0``: ``(B, C, H, W)``; ``t``: ``int`` or ``(B,)``; output: ``(B, C, H, W)``.
    """

    def __init__(self, num_steps: int, min_contrast: float = 0.0, schedule: SeveritySchedule = "linear",
                 factors: list[float] | None = None, channels: int | None = None) -> None:
        super().__init__(num_steps, "contrast", schedule, clean=1.0, end=min_contrast, severities=factors,
                         channels=channels)


class Elastic(Transform):
    """Elastic distortion ``D(x, t)``: one random displacement field per image (drawn in :meth:`make_params`),
    smoothed by a Gaussian of ``sigma`` pixels and scaled to an RMS displacement of ``d_t`` pixels, from 0 (level 0)
    to ``max_displacement`` (level ``T``).

    Args:
        num_steps: ``T``.
        max_displacement: RMS displacement at level ``T`` in pixels.
        sigma: smoothness of the field in pixels.
        padding: samples outside the image: ``zeros``, ``border`` or ``reflection``.
        schedule: ``"linear"``.
        displacements: ``T + 1`` given RMS displacements (overrides ``max_displacement`` and ``schedule``).
        channels: accepted channel count, or ``None`` for any.

    Shape:
        ``x0``: ``(B, C, H, W)``; ``t``: ``int`` or ``(B,)``; output: ``(B, C, H, W)``; ``params["field"]``:
        ``(B, 2, H, W)``.
    """

    def __init__(self, num_steps: int, max_displacement: float = 3.0, sigma: float = 4.0,
                 padding: Padding = "border", schedule: SeveritySchedule = "linear",
                 displacements: list[float] | None = None, channels: int | None = None) -> None:
        who = type(self).__name__
        _check_choice(padding, _PADDINGS, "padding", who)
        super().__init__(num_steps, "elastic", schedule, clean=0.0, end=max_displacement, severities=displacements,
                         options={"sigma": _check_sigma(sigma, who), "padding": padding}, channels=channels)

    def check_params(self, params: Any, x: Tensor) -> Params:
        params = super().check_params(params, x)
        expected = (x.shape[0], 2, *x.shape[-2:])
        if params["field"].shape != expected:
            raise ValueError(f"{type(self).__name__}: params['field'] must have shape {expected}, got "
                             f"{tuple(params['field'].shape)}")
        return params

    def unknown_params_reason(self) -> str | None:
        return (f"{type(self).__name__}: the displacement field is drawn at random per image and a given image's is "
                "unknown, so re-degrading a restoration cannot reproduce its distortion")
