"""Restoration and generation metrics, computed with torchmetrics.

Protocol (also written into every report):

* all images are quantised to 8 bits (``round(255 x) / 255``) before any metric, as saved PNGs would be;
* SSIM: Gaussian window 11, sigma 1.5, data range 1, averaged over images; PSNR: per image, averaged; RMSE: over all
  pixels of the split, in ``[0, 1]`` units;
* Fréchet and kernel distances are computed on features of a :mod:`~colddiff.evaluation.features` extractor, by
  torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` (fed the features through an identity
  extractor); they are called FID/KID only with the standard Inception-v3 network.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torchmetrics import MeanSquaredError
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from colddiff.evaluation.features import FeatureExtractor

__all__ = [
    "quantize",
    "RestorationMetrics",
    "frechet_distance",
    "kernel_distance",
    "extract_features",
    "ReferenceCache",
    "extractor_fingerprint",
]


def quantize(images: Tensor) -> Tensor:
    """8-bit quantisation of ``[0, 1]`` images: ``round(255 x) / 255`` (clamped)."""
    return torch.round(images.float().clamp(0, 1) * 255) / 255


class _Identity(nn.Module):
    """Hands precomputed features to torchmetrics' FID/KID."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """Fréchet distance between two feature sets ``(N, D)`` (torchmetrics' FID computation)."""
    _check_features(real, fake)
    metric = FrechetInceptionDistance(feature=_Identity(real.shape[1]), normalize=True).to(real.device)
    metric.update(real.double(), real=True)
    metric.update(fake.double().to(real.device), real=False)
    return float(metric.compute())


def kernel_distance(real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """Kernel (MMD, cubic polynomial kernel) distance between feature sets: mean and std over random subsets.

    ``subset_size`` is capped at the smaller set's size.  Seeded, so the same inputs give the same value.
    """
    _check_features(real, fake)
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"kernel distance needs at least 2 samples per set, got {len(real)} and {len(fake)}")
    metric = KernelInceptionDistance(feature=_Identity(real.shape[1]), subsets=subsets, subset_size=size,
                                     normalize=True).to(real.device)
    metric.update(real.double(), real=True)
    metric.update(fake.double().to(real.device), real=False)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        mean, std = metric.compute()
    finally:
        torch.random.set_rng_state(state)
    return float(mean), float(std)


def _check_features(real: Tensor, fake: Tensor) -> None:
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 samples per set, got {len(real)} and {len(fake)}")


@torch.no_grad()
def extract_features(extractor: FeatureExtractor, images: Iterable[Tensor], device: torch.device) -> Tensor:
    """Features of 8-bit-quantised image batches, on ``device``, concatenated: ``(N, D)`` float32."""
    extractor = extractor.to(device).eval()
    chunks = [extractor(quantize(batch.to(device))).float() for batch in images]
    if not chunks:
        raise ValueError("no images to extract features from")
    return torch.cat(chunks)


class RestorationMetrics:
    """SSIM, PSNR and RMSE (and a Fréchet distance with an extractor) for named rows of restored images.

    Usage: ``update(row, images, targets)`` for every batch and row (e.g. ``"Degraded"``, ``"Direct"``,
    ``"Sampled"``), then :meth:`compute`.  Images and targets are quantised to 8 bits here.
    """

    def __init__(self, device: torch.device | str = "cpu", extractor: FeatureExtractor | None = None) -> None:
        self.device = torch.device(device)
        self.extractor = extractor.to(self.device).eval() if extractor is not None else None
        self.rows: dict[str, dict[str, Any]] = {}
        self.target_features: list[Tensor] = []
        self.count: dict[str, int] = {}

    def _row(self, name: str) -> dict[str, Any]:
        if name not in self.rows:
            self.rows[name] = {
                "SSIM": StructuralSimilarityIndexMeasure(data_range=1.0, gaussian_kernel=True, kernel_size=11,
                                                         sigma=1.5).to(self.device),
                "PSNR": PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3), reduction="elementwise_mean")
                .to(self.device),
                "RMSE": MeanSquaredError(squared=False).to(self.device),
                "features": [],
            }
            self.count[name] = 0
        return self.rows[name]

    @torch.no_grad()
    def update(self, name: str, images: Tensor, targets: Tensor, targets_are_new: bool = False) -> None:
        """Add a batch of one row; pass ``targets_are_new=True`` once per batch to collect target features."""
        images, targets = quantize(images.to(self.device)), quantize(targets.to(self.device))
        if images.shape != targets.shape:
            raise ValueError(f"images {tuple(images.shape)} and targets {tuple(targets.shape)} differ in shape")
        row = self._row(name)
        row["SSIM"].update(images, targets)
        row["PSNR"].update(images, targets)
        row["RMSE"].update(images, targets)
        self.count[name] += len(images)
        if self.extractor is not None:
            row["features"].append(self.extractor(images).float())
            if targets_are_new:
                self.target_features.append(self.extractor(targets).float())

    def compute(self) -> dict[str, dict[str, float]]:
        """``{row: {"SSIM", "PSNR", "RMSE", ["FID" or "FD-<name>"], "N"}}``."""
        results: dict[str, dict[str, float]] = {}
        targets = torch.cat(self.target_features) if self.target_features else None
        for name, row in self.rows.items():
            values = {metric: float(row[metric].compute()) for metric in ("SSIM", "PSNR", "RMSE")}
            if self.extractor is not None and targets is not None:
                fd_name = self.extractor.metric_names()[0]
                values[fd_name] = frechet_distance(targets, torch.cat(row["features"]))
            values["N"] = self.count[name]
            results[name] = values
        return results


def extractor_fingerprint(extractor: FeatureExtractor) -> str:
    """A short hash of an extractor's name and weights (for cache keys)."""
    digest = hashlib.sha1(extractor.name.encode())
    for key, tensor in sorted(extractor.state_dict().items()):
        digest.update(key.encode())
        digest.update(repr(float(tensor.float().sum())).encode())
    return digest.hexdigest()[:12]


class ReferenceCache:
    """Reference-set features, cached on disk per (dataset, split, size, extractor, count).

    Files are safetensors (no pickle) in ``folder`` (default ``$COLDDIFF_CACHE`` or ``~/.cache/colddiff``).
    """

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        default = os.environ.get("COLDDIFF_CACHE", Path.home() / ".cache" / "colddiff")
        self.folder = Path(folder or default) / "reference"

    def key(self, dataset_id: str, split: str, size: int, channels: int, extractor: FeatureExtractor,
            count: int) -> str:
        description = json.dumps([dataset_id, split, size, channels, extractor.name,
                                  extractor_fingerprint(extractor), count])
        readable = f"{extractor.name}-{split}-{size}px-n{count}"
        return f"{readable}-{hashlib.sha1(description.encode()).hexdigest()[:16]}"

    def get(self, key: str) -> Tensor | None:
        path = self.folder / f"{key}.safetensors"
        return load_file(str(path))["features"] if path.is_file() else None

    def put(self, key: str, features: Tensor, description: dict[str, Any]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{key}.safetensors"
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({"features": features.detach().float().cpu().contiguous()}, str(tmp),
                  metadata={k: str(v) for k, v in description.items()})
        os.replace(tmp, path)
        return path
