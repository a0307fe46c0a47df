"""Naive baselines that follow the original Cold Diffusion implementation's approach, for side-by-side timing.

The original code applies ``D(x, t)`` by running ``t`` per-step operators one after another (a ``k x k`` depthwise
convolution per blur step, a mask product per fade step, a resize pair per pixelation step, a 1x1 convolution per
desaturation step), recomputes the snow layers of every level whenever a new snow pattern is drawn, and in
Algorithm 2 recomputes both ``D(x0_hat, s)`` and ``D(x0_hat, s - 1)`` from scratch at every step: ``O(T)`` operator
steps per call and ``O(T^2)`` per sampled image.  These functions reproduce that cost with the same mathematics as
colddiff's operators (so outputs agree), in fp32, without compilation.

The operators built on kornia have no original implementation; their baseline, :func:`kornia_loop`, is what a user
would otherwise write for a batch of per-image levels: the kornia call looped over the images.
"""

from __future__ import annotations

import functools
import math

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

import colddiff.degradations as cd
from colddiff.degradations.blur import gaussian_kernel1d
from colddiff.degradations.functional import disk_kernels
from colddiff.degradations.mask import mask_keep_table


def blur_step(op: cd.GaussianBlur, x: Tensor, i: int) -> Tensor:
    """Step ``i`` of the blur: one padded ``k x k`` depthwise convolution, as the original's ``nn.Conv2d``."""
    kernel = gaussian_kernel1d(op.sigmas[i : i + 1].double(), op.kernel_size)[0].to(x)
    c, k = x.shape[1], op.kernel_size
    p = (k - 1) // 2
    weight = (kernel[:, None] * kernel[None, :])[None, None].expand(c, 1, k, k)
    return F.conv2d(F.pad(x, (p, p, p, p), mode=op.border), weight, groups=c)


def iterated_blur(op: cd.GaussianBlur, x: Tensor, t: int) -> Tensor:
    """``t`` blur steps one after another (exact: as the original, only training inputs are rounded to 8 bits, in
    :func:`naive_q_sample`)."""
    out = x
    for i in range(t):
        out = blur_step(op, out, i)
    if op.final_mean and t == op.num_steps:
        out = x.mean(dim=(-2, -1), keepdim=True).expand_as(x)
    return out


def naive_q_sample(op: cd.GaussianBlur, x: Tensor, t: Tensor) -> Tensor:
    """The original training-time ``q_sample``: run the per-step blurs over the whole batch up to ``max(t)`` and
    keep each sample at its own level (``O(max t)`` convolutions per batch)."""
    out, current = x.clone(), x
    for level in range(1, int(t.max()) + 1):
        current = blur_step(op, current, level - 1)
        selected = current
        if op.final_mean and level == op.num_steps:
            selected = x.mean(dim=(-2, -1), keepdim=True).expand_as(x)
        if op.quantize:
            selected = torch.round(selected * 255) / 255
        out = torch.where((t == level)[:, None, None, None], selected, out)
    return out


@functools.lru_cache(maxsize=8)
def _step_masks(op: cd.GaussianMask, height: int, width: int, device: str) -> list[Tensor]:
    """The per-step centred masks, built once (the original precomputes its fade kernels too)."""
    return [
        mask_keep_table(op.sigmas[i : i + 1], height, width, height % 2 == 0, width % 2 == 0)[1].to(device)
        for i in range(op.num_steps)
    ]


def iterated_mask(op: cd.GaussianMask, x: Tensor, t: int) -> Tensor:
    """``t`` multiplications by the per-step (centred) masks, moving masked pixels to the fill value."""
    steps = _step_masks(op, x.shape[-2], x.shape[-1], str(x.device))
    out = x
    for step in steps[:t]:
        step = step.to(x.dtype)
        out = step * out + (1 - step) * op.fill
    return out


def iterated_pixelate(op: cd.Pixelate, x: Tensor, t: int) -> Tensor:
    """``t`` area-down / nearest-up resize pairs."""
    size = x.shape[-1]
    out = x
    for i in range(t):
        low = size // 2 ** (i + 1) if op.schedule == "halving" else size - (i + 1)
        out = F.interpolate(F.interpolate(out, size=low, mode="area"), size=size, mode="nearest-exact")
    return out


def iterated_desaturate(op: cd.Desaturate, x: Tensor, t: int) -> Tensor:
    """``t`` 1x1-convolution blends towards the channel mean."""
    c = x.shape[1]
    out, remaining, diff = x, 1.0, 1.0 / op.num_steps
    for _ in range(t):
        factor = max(0.0, 1 - diff / remaining) if remaining > 0 else 0.0
        remaining *= factor
        weight = factor * torch.eye(c, device=x.device) + (1 - factor) * torch.full((c, c), 1 / c, device=x.device)
        out = F.conv2d(out, weight[:, :, None, None].to(x))
    return out


def snow_all_levels(op: cd.Snow, x: Tensor, t: int, params: dict) -> Tensor:
    """The original draws a snow pattern by building the layers of all ``T`` levels, then indexes level ``t``."""
    layers = [op.degrade(x, torch.full((x.shape[0],), level, device=x.device), params)
              for level in range(1, op.num_steps + 1)]
    return layers[t - 1]


def naive_degrade(op: cd.Degradation, x: Tensor, t: int, params: dict) -> Tensor:
    """``D(x, t)`` the original way for any operator (closed-form ones, mixing and noise, are closed form there too)."""
    if isinstance(op, cd.GaussianBlur):
        return iterated_blur(op, x, t)
    if isinstance(op, cd.GaussianMask):
        return iterated_mask(op, x, t)
    if isinstance(op, cd.Pixelate):
        return iterated_pixelate(op, x, t)
    if isinstance(op, cd.Desaturate):
        return iterated_desaturate(op, x, t)
    if isinstance(op, cd.Snow):
        return snow_all_levels(op, x, t, params)
    return op.degrade(x, torch.full((x.shape[0],), t, device=x.device), params)


def naive_sample_improved(restore, op: cd.Degradation, x_t: Tensor, params: dict) -> Tensor:
    """Algorithm 2 as the original code runs it: both degraded terms recomputed from scratch, ``O(T^2)``."""
    x = x_t
    for s in range(op.num_steps, 0, -1):
        x0_hat = restore(x, torch.full((x.shape[0],), s, device=x.device, dtype=torch.long))
        x = x - naive_degrade(op, x0_hat, s, params) + naive_degrade(op, x0_hat, s - 1, params)
    return x


def kornia_loop(op: cd.Transform, x: Tensor, t: Tensor, params: dict) -> Tensor:
    """``D(x, t)`` for the kornia operators as a user would otherwise write it: the kornia call looped over the
    images, each with its own level's parameter (a Python scalar where kornia takes one), and level 0 kept.

    Same mathematics as colddiff's operators (the test suite checks they agree), fp32, no compilation.  For
    :class:`~colddiff.degradations.Elastic`, ``params`` also holds ``"noise"``, the unsmoothed noise of the field
    (:func:`~colddiff.degradations.functional.elastic_noise` from the same generator state), which
    ``kornia.geometry.transform.elastic_transform2d`` smooths at every call.
    """
    out = []
    options = op.options
    for b in range(x.shape[0]):
        image, level = x[b : b + 1], int(t[b])
        s = op.severity[level : level + 1].to(x)
        if level == 0:
            out.append(image)
            continue
        if isinstance(op, cd.MotionBlur):  # whole odd lengths: kornia's kernel size
            angle, direction = (params[k][b : b + 1] if k in params else torch.tensor([options[k]]).to(x)
                                for k in ("angle", "direction"))
            y = kornia.filters.motion_blur(image, int(round(s.item())), angle, direction,
                                           border_type=options["border"])
        elif isinstance(op, cd.DefocusBlur):  # kornia has no disk kernel: the user builds one per image
            y = kornia.filters.filter2d(image, disk_kernels(s), border_type=options["border"])
        elif isinstance(op, cd.JPEG):
            y = kornia.enhance.jpeg_codec_differentiable(image, s)
        elif isinstance(op, cd.Rotate):
            y = kornia.geometry.transform.rotate(image, s, padding_mode=options["padding"])
        elif isinstance(op, cd.Zoom):
            y = kornia.geometry.transform.scale(image, s, padding_mode=options["padding"])
        elif isinstance(op, cd.Posterize):  # kornia's posterize: whole bits, the top-bits rounding
            y = kornia.enhance.posterize(image, int(round(s.item())))
        elif isinstance(op, cd.ContrastLoss):
            y = kornia.enhance.adjust_contrast_with_mean_subtraction(image, float(s))
        elif isinstance(op, cd.Elastic):  # kornia smooths the raw noise at every call (params["noise"]: see below)
            height, width = image.shape[-2:]
            scale = torch.tensor([2.0 / width, 2.0 / height]).to(x)[None, :, None, None]
            sigma = op.draw_options["sigma"]
            k = 2 * math.ceil(3 * sigma) + 1
            noise = params["noise"][b : b + 1] * s * scale
            y = kornia.geometry.transform.elastic_transform2d(image, noise, (k, k), (sigma, sigma), (1.0, 1.0),
                                                              padding_mode=options["padding"])
        else:
            raise TypeError(f"kornia_loop: no kornia call for {type(op).__name__}")
        out.append(y.clamp(0.0, 1.0))
    return torch.cat(out)
