"""The paper settings the benchmarks measure, built the way the configs build them."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

import colddiff.degradations as cd
from colddiff.nets import ConvNeXtUNet, DDPMUNet


@dataclass
class Setup:
    name: str
    image_size: int
    channels: int

    def degradation(self) -> cd.GaussianBlur:
        raise NotImplementedError

    def network(self, tiny: bool = False) -> nn.Module:
        raise NotImplementedError


class Cifar10Deblur(Setup):
    """configs/deblur_cifar10.yaml: 32x32, DDPM U-Net, blur T 50, kernel 11, reflect."""

    def __init__(self) -> None:
        super().__init__("CIFAR-10 deblurring (32², DDPM U-Net, T 50)", 32, 3)

    def degradation(self) -> cd.GaussianBlur:
        return cd.GaussianBlur(50, kernel_size=11, schedule="linear", sigma=0.35, sigma_step=0.01, border="reflect")

    def network(self, tiny: bool = False) -> nn.Module:
        if tiny:
            return DDPMUNet(dim=32, dim_mults=(1, 2, 2, 2), num_blocks=1, attention_resolutions=(16,), image_size=32)
        return DDPMUNet(dim=128, dim_mults=(1, 2, 2, 2), num_blocks=2, attention_resolutions=(16,), dropout=0.1,
                        image_size=32)


class CelebABlurGeneration(Setup):
    """configs/generate_blur_celeba128.yaml: 128x128, ConvNeXt U-Net, blur T 300, kernel 27, circular."""

    def __init__(self) -> None:
        super().__init__("CelebA-128 blur generation (128², ConvNeXt U-Net, T 300)", 128, 3)

    def degradation(self) -> cd.GaussianBlur:
        return cd.GaussianBlur(300, kernel_size=27, schedule="exponential", sigma=1.0, rate=0.01, border="circular",
                               final_mean=True, quantize=True)

    def network(self, tiny: bool = False) -> nn.Module:
        if tiny:
            return ConvNeXtUNet(dim=8, dim_mults=(1, 2, 4, 8), num_blocks=1, attention="none", image_size=128)
        return ConvNeXtUNet(dim=64, dim_mults=(1, 2, 4, 8), num_blocks=2, image_size=128)


SETUPS = {"cifar10": Cifar10Deblur, "celeba128": CelebABlurGeneration}
