"""colddiff's feature extractors in torch-fidelity's feature-extractor registry.

After :func:`register_torch_fidelity_extractors`, ``torch_fidelity.calculate_metrics`` can use colddiff's
classifiers by name, e.g. ``calculate_metrics(input1=generated, input2=real, feature_extractor="colddiff-mnist-cnn",
fid=True, kid=True, prc=True)`` (``feature_extractor_weights_path`` for the ResNets).  Such numbers equal those of
:func:`colddiff.evaluation.metrics.generation_metrics` on the same images; the key ``frechet_inception_distance``
then holds ``FD-mnist-cnn``, not an FID.

torch-fidelity feeds ``uint8`` images ``(B, C, H, W)`` (its folder and image data sets are RGB); the adapter maps
them to ``[0, 1]``.  For the 1-channel MNIST classifier an RGB image is converted explicitly to its single channel
when its three channels are equal (a grayscale image stored as RGB) and rejected otherwise.

Registration changes torch-fidelity's global registry, so it is never done on import; call the function once.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from colddiff.evaluation.features import FeatureExtractor, build_extractor

__all__ = ["TorchFidelityExtractor", "register_torch_fidelity_extractors", "TORCH_FIDELITY_NAMES"]

#: colddiff extractor name -> torch-fidelity registry name
TORCH_FIDELITY_NAMES = {kind: f"colddiff-{kind}" for kind in
                        ("mnist-cnn", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110")}


class TorchFidelityExtractor(FeatureExtractorBase):
    """torch-fidelity's interface around a colddiff classifier: ``uint8 (B, C, H, W)`` -> ``("features",
    "logits")`` (those requested, in the requested order).

    Subclasses set ``kind`` (a :func:`~colddiff.evaluation.features.build_extractor` name).  Fréchet, kernel
    distance and precision/recall use ``"features"``; the Inception Score would use ``"logits"``.

    Args:
        name: the registry name.
        features_list: the requested outputs.
        feature_extractor_weights_path: the weights file (``None``: the extractor's default, where it has one).
    """

    kind: ClassVar[str] = ""

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs: object) -> None:
        super().__init__(name, features_list)
        self.extractor: FeatureExtractor = build_extractor(self.kind, feature_extractor_weights_path)
        self.single_channel = self.kind == "mnist-cnn"

    @staticmethod
    def get_provided_features_list() -> tuple[str, str]:
        return "features", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "logits" if metric == "isc" else "features"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> Tensor:
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """Shape: ``uint8 (B, C, H, W)`` -> a tuple of ``(B, D)`` features and/or ``(B, K)`` logits."""
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"{self.name} expects uint8 images (B, C, H, W) from torch-fidelity, got {got}")
        if self.single_channel and images.shape[1] == 3:
            if not (torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])):
                raise ValueError(f"{self.name} takes grayscale digits; got RGB images whose channels differ")
            images = images[:, :1]  # grayscale stored as RGB (torch-fidelity's folder reader): take one channel
        features, logits = self.extractor.features_and_logits(images.float() / 255)
        outputs = {"features": features, "logits": logits}
        return tuple(outputs[name] for name in self.features_list)


def register_torch_fidelity_extractors() -> dict[str, str]:
    """Register colddiff's classifiers in torch-fidelity's registry (idempotent).

    Returns:
        ``{colddiff name: torch-fidelity name}``, e.g. ``{"mnist-cnn": "colddiff-mnist-cnn", ...}``.

    Raises:
        ValueError: one of the names is already taken by another class.
    """
    for kind, name in TORCH_FIDELITY_NAMES.items():
        existing = FEATURE_EXTRACTORS_REGISTRY.get(name)
        if existing is not None:
            if not (isinstance(existing, type) and issubclass(existing, TorchFidelityExtractor)
                    and existing.kind == kind):
                raise ValueError(f"torch-fidelity's feature extractor {name!r} is already registered as {existing}")
            continue
        cls = type(f"TorchFidelity_{kind.replace('-', '_')}", (TorchFidelityExtractor,), {"kind": kind})
        register_feature_extractor(name, cls)
    return dict(TORCH_FIDELITY_NAMES)
