"""Restoration networks ``R(x_t, t) -> x0_hat``, and the contract any network must meet to be used by colddiff.

* :class:`ConvNeXtUNet` (:mod:`colddiff.nets.convnext`): the official code's ConvNeXt U-Net with linear attention
  (MNIST, CelebA, AFHQ, generation).
* :class:`DDPMUNet` (:mod:`colddiff.nets.ddpm`): Ho et al.'s DDPM U-Net (CIFAR-10).
* Shared layers live in :mod:`colddiff.nets.layers`; :class:`UNet` is the deprecated class that used to be both.

Any other ``nn.Module`` that meets :class:`RestorationNetwork` plugs into
:class:`~colddiff.module.ColdDiffusion` (``network=``, or ``class_path`` in a config).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from colddiff.nets.convnext import ConvNeXtUNet
from colddiff.nets.ddpm import DDPMUNet
from colddiff.nets.unet import UNet

__all__ = ["RestorationNetwork", "ConvNeXtUNet", "DDPMUNet", "UNet"]


@runtime_checkable
class RestorationNetwork(Protocol):
    """The contract of a restoration network ``R(x_t, t) ≈ x0``.

    Required:

    * it is a ``torch.nn.Module`` (its parameters are trained, copied into the EMA and saved in checkpoints);
    * ``forward(x_t, t)``: ``x_t`` a float tensor ``(B, C, H, W)`` with values in ``[0, 1]`` (colddiff's one value
      range; map it to your network's own range inside ``forward``), ``t`` a ``(B,)`` long tensor of levels in
      ``[0, T]``; returns the estimate of ``x0`` in ``[0, 1]`` units, shape ``(B, out_channels, H, W)``, unclamped.

    Optional attributes, read by the module and the tools when present:

    * ``in_channels``, ``out_channels`` (``int``): checked against the data's channels when the model is built;
    * ``check_input_size(height, width)``: raise ``ValueError`` for a size the network cannot take (checked at
      construction for the training size);
    * ``size_multiple`` (``int``): image sides must be multiples of it; ``sample.py restore`` pads other sizes to it.

    Networks built by colddiff record their arguments (:class:`colddiff._config.RecordsInit`), so checkpoints
    rebuild them from their config; a network that does not must be passed again when loading
    (``ColdDiffusion.load_from_checkpoint(path, network=...)``).
    """

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor: ...
