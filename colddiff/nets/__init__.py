"""Restoration networks ``R(x_t, t) -> x0_hat``."""

from colddiff.nets.unet import UNet

__all__ = ["UNet"]
