"""Pure-function twins of the degradation operators (kornia / torchvision v2 style).

Each module in :mod:`colddiff.degradations` maps a level ``t`` to its parameters and calls the same code as these
functions; the test suite checks they agree.
"""

from colddiff.degradations.blur import gaussian_blur, gaussian_kernel1d
from colddiff.degradations.blur_noise import blur_noise, heat_blur
from colddiff.degradations.desaturate import desaturate, grayscale
from colddiff.degradations.interpolate import interpolate
from colddiff.degradations.kornia_ops import (
    contrast,
    defocus_blur,
    disk_kernels,
    elastic,
    elastic_field,
    elastic_noise,
    jpeg,
    motion_blur,
    motion_kernels,
    posterize,
    rotate,
    zoom,
)
from colddiff.degradations.mask import gaussian_mask
from colddiff.degradations.mix import mix
from colddiff.degradations.noise import flow_noise, gaussian_noise
from colddiff.degradations.pixelate import pixelate
from colddiff.degradations.snow import snow, snow_field

__all__ = [
    "gaussian_blur",
    "gaussian_kernel1d",
    "gaussian_mask",
    "pixelate",
    "snow",
    "snow_field",
    "desaturate",
    "grayscale",
    "mix",
    "gaussian_noise",
    "flow_noise",
    "blur_noise",
    "heat_blur",
    "interpolate",
    "motion_blur",
    "motion_kernels",
    "defocus_blur",
    "disk_kernels",
    "jpeg",
    "rotate",
    "zoom",
    "posterize",
    "contrast",
    "elastic",
    "elastic_field",
    "elastic_noise",
]
