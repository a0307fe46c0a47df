"""Restoration networks ``R(x_t, t) -> x0_hat``, and the contract any network must meet to be used by colddiff.

* :class:`ConvNeXtUNet` (:mod:`colddiff.nets.convnext`): the official code's ConvNeXt U-Net with linear attention
  (MNIST, CelebA, AFHQ, generation).
* :class:`DDPMUNet` (:mod:`colddiff.nets.ddpm`): Ho et al.'s DDPM U-Net (CIFAR-10).
* Shared layers live in :mod:`colddiff.nets.layers`; :class:`UNet` is the deprecated class that used to be both.

Any other ``nn.Module`` that meets :class:`RestorationNetwork` plugs into
:class:`~colddiff.module.ColdDiffusion` and :class:`~colddiff.pipeline.Pipeline` (``network=``, or ``class_path`` in a
config).
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
      ``[0, T]``; returns what the model's objective reads (:mod:`colddiff.objectives`: the estimate of ``x0`` in
      ``[0, 1]`` units by default, or ε, v, a velocity), shape ``(B, out_channels, H, W)``, unclamped;
    * ``in_channels`` (``int``): the channels it takes, checked against the data's when the model is built;
    * ``image_size`` (``int``, or ``None`` for a network that takes any size): the size it was built for.

    A network without ``in_channels`` or ``image_size`` is refused with a message naming them.  Optional
    attributes, read by the module and the tools when present:

    * ``out_channels`` (``int``): checked against the data's channels;
    * ``check_input_size(height, width)``: raise ``ValueError`` for a size the network cannot take (checked at
      construction for the training size);
    * ``size_multiple`` (``int``): image sides must be multiples of it; ``sample.py restore`` pads other sizes to it.

    Networks built by colddiff record their arguments (:class:`colddiff._config.RecordsInit`), so checkpoints
    rebuild them from their config; a network that does not must be passed again when loading
    (``ColdDiffusion.load_from_checkpoint(path, network=...)``).
    """

    in_channels: int
    image_size: int | None

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor: ...
