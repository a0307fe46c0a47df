"""Shared fixtures: one factory per degradation operator, built from ``num_steps`` alone where the API allows."""

from __future__ import annotations

import os

import pytest
import torch

import colddiff.degradations as cd

# One intra-op thread: the tests use tiny tensors, where threads only add synchronisation, and on a busy shared
# machine (other processes on the cores) two threads made every FFT ~250x slower (47 ms instead of 0.18 ms for a
# 4x3x32x32 rfft2 + irfft2; tests/test_degradations.py 52 s with 2 threads, 17 s with 1, at load 7 on 2 cores).
# COLDDIFF_TEST_THREADS overrides it.
torch.set_num_threads(int(os.environ.get("COLDDIFF_TEST_THREADS", "1")))

T = 5  # levels used by the generic suite (small, so per-level loops stay fast; 2**5 divides 32)


def fade_to_grey(x: torch.Tensor, severity: torch.Tensor, grey: float | torch.Tensor = 0.5) -> torch.Tensor:
    """A user's own transform for :class:`~colddiff.degradations.Transform`: keep a fraction ``severity`` of the
    image, the rest a grey level (a number, or one per image)."""
    s = severity[:, None, None, None]
    g = grey[:, None, None, None] if isinstance(grey, torch.Tensor) else grey
    return s * x + (1 - s) * g


def _operators() -> dict[str, callable]:
    return {
        "GaussianBlur": lambda T: cd.GaussianBlur(T),
        "GaussianBlur-reflect-mean": lambda T: cd.GaussianBlur(T, kernel_size=5, schedule="linear", sigma=0.5,
                                                               border="reflect", final_mean=True),
        "GaussianMask": lambda T: cd.GaussianMask(T),
        "GaussianMask-random": lambda T: cd.GaussianMask(T, center="random", fill="random"),
        "GaussianMask-reverse": lambda T: cd.GaussianMask(T, sigma=0.5, sigma_step=0.5, fill="random",
                                                          reverse=True),
        "Pixelate": lambda T: cd.Pixelate(T),
        "Pixelate-linear": lambda T: cd.Pixelate(T, schedule="linear"),
        "Snow": lambda T: cd.Snow(T),
        "Snow-shared-bright": lambda T: cd.Snow(T, level=4, shared=True, fix_brightness=False),
        "Desaturate": lambda T: cd.Desaturate(T),
        "Mix": lambda T: cd.Mix(T),
        "GaussianNoise": lambda T: cd.GaussianNoise(T),
        "GaussianNoise-linear": lambda T: cd.GaussianNoise(T, schedule="linear"),
        "FlowNoise": lambda T: cd.FlowNoise(T),
        "Interpolation-InDI": lambda T: cd.Interpolation(T, cd.GaussianBlur(6, kernel_size=5), noise_std=0.01),
        "BlurNoise-IHDM": lambda T: cd.BlurNoise(T, heat_schedule="log", heat_sigma_max=4.0, noise="none",
                                                 min_scale=0.0),
        "BlurNoise": lambda T: cd.BlurNoise(T),
        "BlurNoise-ratio": lambda T: cd.BlurNoise(T, heat_schedule="ratio", blur_to_noise=0.5, min_scale=0.0),
        "BlurNoise-kernel-fixed": lambda T: cd.BlurNoise(T, blur="kernel", kernel_size=5, schedule="linear",
                                                         sigma=0.5, border="reflect", reestimate=False),
        "Compose": lambda T: cd.Compose([cd.GaussianBlur(T), cd.GaussianNoise(T)]),
        "Transform-own-function-random": lambda T: cd.Transform(T, function=fade_to_grey, clean=1.0, end=0.0,
                                                                random={"grey": ["uniform", 0.2, 0.8]}),
        "Transform-registered-name": lambda T: cd.Transform(T, function="defocus_blur", end=2.0,
                                                            options={"border": "replicate"}),
        "MotionBlur": lambda T: cd.MotionBlur(T),
        "MotionBlur-fixed-weighted-circular": lambda T: cd.MotionBlur(T, max_length=7.5, angle=30.0, direction=0.5,
                                                                      border="circular"),
        "MotionBlur-random-direction": lambda T: cd.MotionBlur(T, max_length=5.0, direction=None),
        "DefocusBlur": lambda T: cd.DefocusBlur(T),
        "JPEG": lambda T: cd.JPEG(T),
        "JPEG-exponential": lambda T: cd.JPEG(T, min_quality=5.0, schedule="exponential"),
        "Rotate": lambda T: cd.Rotate(T),
        "Rotate-random-direction": lambda T: cd.Rotate(T, max_angle=45.0, random_direction=True,
                                                       padding="reflection"),
        "Zoom": lambda T: cd.Zoom(T),
        "Posterize": lambda T: cd.Posterize(T),
        "Posterize-truncate": lambda T: cd.Posterize(T, rounding="truncate"),
        "ContrastLoss": lambda T: cd.ContrastLoss(T),
        "Elastic": lambda T: cd.Elastic(T),
    }


OPERATORS = _operators()


def context_for(op: cd.Degradation, x0: torch.Tensor, seed: int = 123) -> dict:
    """Context an operator needs beyond the images (the mixing partner)."""
    if "partner" in op.context_keys:
        g = torch.Generator().manual_seed(seed)
        return {"partner": torch.rand(x0.shape, generator=g).to(x0)}
    return {}


def smooth_images(batch: int = 4, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Natural-ish test images in [0, 1]: smooth random fields plus edges (not white noise)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, channels, size // 4, size // 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    edges = (torch.rand(batch, 1, size // 8, size // 8, generator=g) > 0.5).float()
    x = 0.7 * x + 0.3 * torch.nn.functional.interpolate(edges, size=(size, size), mode="nearest")
    return x.clamp(0, 1)


@pytest.fixture(params=sorted(OPERATORS), ids=sorted(OPERATORS))
def op_name(request) -> str:
    return request.param


@pytest.fixture
def op(op_name) -> cd.Degradation:
    return OPERATORS[op_name](T)


def pytest_collection_modifyitems(config, items):
    """``slow`` tests (real data, longer runs) run only when asked for with ``-m slow``: the default suite stays
    fast."""
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
