"""Pluggable feature extractors for Fréchet / kernel distances and the replication audit.

Every extractor maps images in ``[0, 1]`` (``(B, C, H, W)``, 1 or 3 channels) to features ``(B, D)`` and has a
``name``.  Distances are reported as FID/KID only with the standard Inception-v3 network (``InceptionV3Features``);
with any other extractor they are reported under its own name, e.g. ``FD-resnet56``.

* :class:`InceptionV3Features`: torch-fidelity's FID Inception-v3 (pool3, 2048-d), inputs quantised to 8 bits and
  resized to 299 with TensorFlow-1-compatible bilinear interpolation (the standard FID protocol).  Weights from a
  local file (``weights_path``) or torch-fidelity's own download on a connected machine.
* :class:`CifarResNetFeatures`: the penultimate (64-d) features of a CIFAR-10 ResNet-20/32/44/56/110 with option-A
  shortcuts (e.g. the pretrained checkpoints of ``akamaster/pytorch_resnet_cifar10``).
* :class:`MnistClassifierFeatures`: the penultimate (128-d) features of colddiff's own MNIST classifier
  (:mod:`~colddiff.evaluation.mnist_classifier`, weights shipped in the package), for the digits; metric names
  ``FD-mnist-cnn`` / ``KD-mnist-cnn``.
* :class:`PixelFeatures`: the flattened pixels (centred), for pixel-space cosine similarity.
* :class:`ModuleFeatures`: wrap any ``nn.Module`` of your own.

Classifiers (``num_classes > 0``: the CIFAR ResNets and the MNIST classifier) also give class logits, through
:meth:`FeatureExtractor.logits` or, in one pass, :meth:`FeatureExtractor.features_and_logits`; ``forward`` always
returns the features only.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FeatureExtractor",
    "InceptionV3Features",
    "CifarResNet",
    "CifarResNetFeatures",
    "MnistClassifierFeatures",
    "PixelFeatures",
    "ModuleFeatures",
    "FeatureWeightsError",
    "build_extractor",
]


class FeatureWeightsError(RuntimeError):
    """The weights of a feature extractor are not available."""


class FeatureExtractor(nn.Module):
    """Base class: ``forward(images in [0, 1]) -> (B, D)`` features, with a ``name`` and ``num_features``.

    Classifiers set ``num_classes`` and override :meth:`features_and_logits`.
    """

    name: str = "features"
    num_features: int = 0
    #: number of classes of a classifier extractor (0: not a classifier, no logits)
    num_classes: int = 0
    #: True only for the standard FID network: distances are then called FID and KID
    is_fid_inception: bool = False
    #: how images are prepared for the network (for reports)
    preprocessing: str = "none"
    #: the channel counts the extractor takes (readers of image folders convert to one of these, or refuse)
    input_channels: tuple[int, ...] = (1, 3)

    def metric_names(self) -> tuple[str, str]:
        """``("FID", "KID")`` for the standard Inception network, else ``("FD-<name>", "KD-<name>")``."""
        return ("FID", "KID") if self.is_fid_inception else (f"FD-{self.name}", f"KD-{self.name}")

    @property
    def is_classifier(self) -> bool:
        """Whether :meth:`logits` is available."""
        return self.num_classes > 0

    def features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Features and class logits of the same images in one pass (classifiers only).

        Shape:
            ``(B, C, H, W)`` in ``[0, 1]`` -> ``((B, num_features), (B, num_classes))``.

        Raises:
            TypeError: the extractor is not a classifier.
        """
        raise TypeError(f"the {self.name!r} feature extractor is not a classifier: it has no class logits "
                        "(classifiers: mnist-cnn, resnet20/32/44/56/110)")

    def logits(self, images: Tensor) -> Tensor:
        """Class logits (classifiers only).

        Shape:
            ``(B, C, H, W)`` in ``[0, 1]`` -> ``(B, num_classes)``.
        """
        return self.features_and_logits(images)[1]

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)  # extractors never train (batch norm stays frozen)


def _to_rgb(images: Tensor) -> Tensor:
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise ValueError(f"feature extractors take 1- or 3-channel images, got {images.shape[1]} channels")
    return images


class InceptionV3Features(FeatureExtractor):
    """The FID Inception-v3 (pool3 features, 2048-d) of torch-fidelity, with the standard FID preprocessing.

    Args:
        weights_path: the weights file ``pt_inception-2015-12-05-6726825d.pth``; ``None`` lets torch-fidelity
            download it (needs internet).
    """

    name, num_features, is_fid_inception = "inception-v3", 2048, True
    preprocessing = "RGB uint8, bilinear resize to 299 (TensorFlow-1 compatible, as the standard FID)"

    def __init__(self, weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        if weights_path is not None and not Path(weights_path).is_file():
            raise FeatureWeightsError(f"Inception-v3 weights file {str(weights_path)!r} does not exist")
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as err:  # pragma: no cover - torch-fidelity is a dependency
            raise FeatureWeightsError(f"FID needs torch-fidelity ({err})") from err
        try:
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                          feature_extractor_weights_path=None if weights_path is None
                                          else str(weights_path), antialias=False)
        except Exception as err:  # noqa: BLE001 - download / file errors from torch-fidelity
            raise FeatureWeightsError(
                "the standard Inception-v3 FID weights are not available "
                f"({type(err).__name__}: {err}). Pass the file pt_inception-2015-12-05-6726825d.pth with "
                "--inception-weights PATH, run once on a machine with internet (torch-fidelity downloads it), or "
                "use another extractor (reported as FD-<name>, not FID)"
            ) from err

    def forward(self, images: Tensor) -> Tensor:
        uint8 = torch.round(_to_rgb(images).clamp(0, 1) * 255).to(torch.uint8)
        return self.net(uint8).reshape(len(images), -1)


# ----------------------------------------------------------------------------------------- CIFAR ResNets
class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = (planes - in_planes) // 2 if (stride != 1 or in_planes != planes) else None

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet (6n + 2 layers, option-A shortcuts), as in ``akamaster/pytorch_resnet_cifar10``."""

    def __init__(self, depth: int = 56, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(_BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, num_classes)

    def features(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.features(x))


class CifarResNetFeatures(FeatureExtractor):
    """Penultimate features of a pretrained CIFAR-10 ResNet (inputs resized to 32x32, ImageNet normalisation).

    Args:
        weights_path: a state dict file (keys optionally prefixed ``module.``; a ``{"state_dict": ...}`` wrapper is
            accepted), loaded with ``weights_only=True``.
        depth: 20, 32, 44, 56 or 110.
    """

    num_features, num_classes = 64, 10
    preprocessing = "RGB, bilinear (antialiased) resize to 32, ImageNet normalisation"

    def __init__(self, weights_path: str | os.PathLike, depth: int = 56) -> None:
        super().__init__()
        from colddiff.io import load_checkpoint

        if not Path(weights_path).is_file():
            raise FeatureWeightsError(f"classifier weights file {str(weights_path)!r} does not exist")
        state = load_checkpoint(weights_path)
        state = state.get("state_dict", state)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        self.net = CifarResNet(depth)
        try:
            self.net.load_state_dict(state)
        except RuntimeError as err:
            raise FeatureWeightsError(f"{str(weights_path)!r} is not a CIFAR ResNet-{depth} state dict: {err}") \
                from err
        self.name = f"resnet{depth}"
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.eval()

    def _prepare(self, images: Tensor) -> Tensor:
        x = _to_rgb(images).float()
        if x.shape[-2:] != (32, 32):
            x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    def forward(self, images: Tensor) -> Tensor:
        """Penultimate features.

        Shape:
            ``(B, 1 or 3, H, W)`` in ``[0, 1]`` -> ``(B, 64)``.
        """
        return self.net.features(self._prepare(images))

    def features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Features and CIFAR-10 logits in one pass.

        Shape:
            ``(B, 1 or 3, H, W)`` in ``[0, 1]`` -> ``((B, 64), (B, 10))``.
        """
        features = self.net.features(self._prepare(images))
        return features, self.net.linear(features)


class MnistClassifierFeatures(FeatureExtractor):
    """Penultimate (128-d) features and 10 logits of colddiff's MNIST classifier (:class:`MnistCNN`).

    Trained on the 60,000 official MNIST training images (see :mod:`colddiff.evaluation.mnist_classifier` for the
    recipe, test accuracy and the weights' sha256).  Inputs are 1-channel images in ``[0, 1]``; other sizes than
    28x28 are resized (bilinear, antialiased).  3-channel images are rejected: MNIST is grayscale, and a silent
    conversion would hide a mix-up of data sets; convert explicitly (``images.mean(1, keepdim=True)``) if you mean it.

    Args:
        weights_path: a safetensors state dict of :class:`MnistCNN`; default: the weights shipped with colddiff.
    """

    name, num_features, num_classes = "mnist-cnn", 128, 10
    preprocessing = "1 channel, bilinear (antialiased) resize to 28, MNIST mean/std normalisation"
    input_channels = (1,)

    def __init__(self, weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from colddiff.evaluation.mnist_classifier import MNIST_CLASSIFIER_WEIGHTS, MnistCNN

        path = Path(weights_path) if weights_path is not None else MNIST_CLASSIFIER_WEIGHTS
        if not path.is_file():
            raise FeatureWeightsError(f"MNIST classifier weights file {str(path)!r} does not exist")
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise FeatureWeightsError(f"{str(path)!r} is not a safetensors file: {err}") from err
        self.net = MnistCNN()
        try:
            self.net.load_state_dict(state)
        except RuntimeError as err:
            raise FeatureWeightsError(f"{str(path)!r} is not a colddiff MNIST classifier state dict: {err}") from err
        self.weights_path = path
        self.eval()

    def _prepare(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 1:
            shape = tuple(images.shape)
            hint = (" (3 channels: MNIST is grayscale; convert explicitly with images.mean(1, keepdim=True) if these "
                    "are grayscale digits stored as RGB)") if images.ndim == 4 and images.shape[1] == 3 else ""
            raise ValueError(f"the mnist-cnn extractor takes 1-channel images (B, 1, H, W), got {shape}{hint}")
        x = images.float()
        if x.shape[-2:] != (28, 28):
            x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
        return x

    def forward(self, images: Tensor) -> Tensor:
        """Penultimate features.

        Shape:
            ``(B, 1, H, W)`` in ``[0, 1]`` -> ``(B, 128)``.
        """
        return self.net.features(self._prepare(images))

    def features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Features and digit logits in one pass.

        Shape:
            ``(B, 1, H, W)`` in ``[0, 1]`` -> ``((B, 128), (B, 10))``.
        """
        features = self.net.features(self._prepare(images))
        return features, self.net.linear(features)


class PixelFeatures(FeatureExtractor):
    """The flattened pixels minus their per-image mean (cosine similarity of centred images)."""

    name = "pixels"

    def forward(self, images: Tensor) -> Tensor:
        flat = images.float().flatten(1)
        return flat - flat.mean(dim=1, keepdim=True)


class ModuleFeatures(FeatureExtractor):
    """Any module of your own as an extractor: ``module(images in [0, 1]) -> (B, D)``."""

    def __init__(self, module: nn.Module, name: str) -> None:
        super().__init__()
        self.module, self.name = module, name

    def forward(self, images: Tensor) -> Tensor:
        return self.module(images).flatten(1)


def build_extractor(kind: str, weights: str | os.PathLike | None = None) -> FeatureExtractor:
    """An extractor by name.

    Args:
        kind: ``"inception"`` (standard FID network; weights from ``weights`` or torch-fidelity's download),
            ``"resnet20"`` … ``"resnet110"`` (CIFAR-10 ResNets; ``weights`` required), ``"mnist-cnn"`` (alias
            ``"mnist"``: colddiff's MNIST classifier; ``weights`` optional, default the packaged file) or
            ``"pixels"``.
        weights: the weights file, where the extractor takes one.
    """
    if kind == "inception":
        return InceptionV3Features(weights)
    if kind in ("mnist-cnn", "mnist"):
        return MnistClassifierFeatures(weights)
    if kind.startswith("resnet") and kind[6:].isdigit():
        if weights is None:
            raise FeatureWeightsError(f"the {kind} extractor needs its weights file: pass --extractor-weights PATH")
        return CifarResNetFeatures(weights, int(kind[6:]))
    if kind == "pixels":
        return PixelFeatures()
    raise ValueError(f"unknown feature extractor {kind!r}: use inception, resnet20/32/44/56/110, mnist-cnn or pixels")
