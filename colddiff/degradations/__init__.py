"""colddiff's degradation library: deterministic, pluggable image degradations ``D(x0, t)``.

Every operator is an :class:`~colddiff.degradations.base.Degradation` (an ``nn.Module``) built from ``num_steps``
alone, with a pure-function twin in :mod:`colddiff.degradations.functional`.  Images are ``(B, C, H, W)`` floats in
``[0, 1]``; ``t`` is an int or one level per sample, ``0 <= t <= num_steps``; ``D(x0, 0) == x0``.  All randomness
is drawn by ``make_params`` and passed explicitly.  Importing this package does not import Lightning.

Any batched function ``f(x, severity, **kwargs)`` becomes a degradation with :class:`Transform`; the operators built
on kornia (:class:`MotionBlur`, :class:`DefocusBlur`, :class:`JPEG`, :class:`Rotate`, :class:`Zoom`,
:class:`Posterize`, :class:`ContrastLoss`, :class:`Elastic`) are such transforms, and configs name functions only
through :func:`register_transform` or an explicit allow-list (:func:`allowed_callables`).

Example:
    >>> import torch
    >>> from colddiff.degradations import GaussianBlur
    >>> blur = GaussianBlur(num_steps=50, kernel_size=11, schedule="linear", sigma=0.35, sigma_step=0.01)
    >>> x0 = torch.rand(8, 3, 32, 32)
    >>> x_t = blur(x0, torch.randint(0, 51, (8,)))
"""

from colddiff._config import allowed_callables
from colddiff.degradations.base import Degradation, Params
from colddiff.degradations.blur import GaussianBlur
from colddiff.degradations.blur_noise import BlurNoise
from colddiff.degradations.compose import Compose
from colddiff.degradations.desaturate import Desaturate
from colddiff.degradations.interpolate import Interpolation
from colddiff.degradations.kornia_ops import (
    JPEG,
    ContrastLoss,
    DefocusBlur,
    Elastic,
    MotionBlur,
    Posterize,
    Rotate,
    Zoom,
)
from colddiff.degradations.mask import GaussianMask
from colddiff.degradations.mix import Mix
from colddiff.degradations.noise import FlowNoise, GaussianNoise
from colddiff.degradations.pixelate import Pixelate
from colddiff.degradations.snow import Snow
from colddiff.degradations.transform import Transform, register_transform, registered_transforms

__all__ = [
    "Degradation",
    "Params",
    "GaussianBlur",
    "GaussianMask",
    "Pixelate",
    "Snow",
    "Desaturate",
    "Mix",
    "GaussianNoise",
    "FlowNoise",
    "BlurNoise",
    "Compose",
    "Interpolation",
    "Transform",
    "MotionBlur",
    "DefocusBlur",
    "JPEG",
    "Rotate",
    "Zoom",
    "Posterize",
    "ContrastLoss",
    "Elastic",
    "register_transform",
    "registered_transforms",
    "allowed_callables",
]
