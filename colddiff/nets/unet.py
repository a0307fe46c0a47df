"""``UNet``: the one class that used to express both U-Nets, kept so that configs and checkpoints written before the
split still build.

``UNet(block="convnext", ...)`` now returns a :class:`~colddiff.nets.ConvNeXtUNet` and ``UNet(block="resnet", ...)`` a
:class:`~colddiff.nets.DDPMUNet`, with the same weights layout (an old checkpoint's ``state_dict`` loads unchanged),
and warns.  To convert a config, replace ``class_path: colddiff.nets.UNet`` by ``colddiff.nets.ConvNeXtUNet`` (or
``colddiff.nets.DDPMUNet`` for ``block: resnet``) and drop ``block``; give every other argument explicitly (the old
class had ConvNeXt defaults for both layouts: ``dim=64, dim_mults=[1, 2, 4, 8], dropout=0``).  Models saved from then
on record the new class.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

from torch import nn

from colddiff.nets.convnext import ConvNeXtUNet
from colddiff.nets.ddpm import DDPMUNet

__all__ = ["UNet"]


class UNet(nn.Module):
    """Deprecated: builds a :class:`ConvNeXtUNet` (``block="convnext"``) or a :class:`DDPMUNet` (``"resnet"``).

    Arguments and defaults are those of the former class (see the module docstring for how to convert).
    """

    def __new__(  # type: ignore[misc]
        cls,
        in_channels: int = 3,
        out_channels: int | None = None,
        dim: int = 64,
        dim_mults: Sequence[int] = (1, 2, 4, 8),
        num_blocks: int = 2,
        block: Literal["convnext", "resnet"] = "convnext",
        attention: Literal["linear", "full", "none"] | None = None,
        attention_resolutions: Sequence[int] | None = None,
        image_size: int | None = None,
        dropout: float = 0.0,
        time_dim: int | None = None,
        heads: int = 4,
        dim_head: int = 32,
    ) -> nn.Module:
        if block not in ("convnext", "resnet"):
            raise ValueError(f"UNet: block must be 'convnext' or 'resnet', got {block!r}")
        target = ConvNeXtUNet if block == "convnext" else DDPMUNet
        warnings.warn(
            f"colddiff.nets.UNet is deprecated: it now builds {target.__name__}; use class_path "
            f"colddiff.nets.{target.__name__} without 'block' (see colddiff/nets/unet.py)",
            DeprecationWarning, stacklevel=2,
        )
        return target(in_channels=in_channels, out_channels=out_channels, dim=dim, dim_mults=dim_mults,
                      num_blocks=num_blocks, attention=attention or ("linear" if block == "convnext" else "full"),
                      attention_resolutions=attention_resolutions, image_size=image_size, dropout=dropout,
                      time_dim=time_dim, heads=heads, dim_head=dim_head)
