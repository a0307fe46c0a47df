"""Training-data replication audit: how close are generated images to their nearest training images?

Following Somepalli et al. ("Diffusion Art or Digital Forgery?", 2022) and Carlini et al. ("Extracting Training Data
from Diffusion Models", 2023), for every generated image the audit finds, by exact search over the whole training
set, its nearest training images under three measures:

* ``l2``: the pixel-space root-mean-square distance (``[0, 1]`` units);
* ``patch_l2``: Carlini et al.'s patch-wise distance: the images are cut into a ``grid x grid`` array of
  non-overlapping patches and the distance is the *largest* RMS distance between corresponding patches (a near-copy
  must match everywhere, not only on average);
* ``cosine``: cosine similarity of features from a pluggable extractor (Somepalli et al. used self-supervised copy
  detection features; any :mod:`~colddiff.evaluation.features` extractor works).

It also reports Carlini et al.'s calibrated score ``patch_l2(x, nn_1) / (alpha * mean_{i <= n} patch_l2(x, nn_i))``
over the ``n`` nearest training images: a generation much closer to one training image than to its other neighbours
is a likely copy when the score is at most ``delta``.  ``n``, ``alpha``, ``delta`` and the grid are options; the
defaults (50, 0.5, 1/3, 4) are our reading of Carlini et al., section 5.

The search streams the training set in chunks through the device and keeps a running top-``n`` per generated image
(exact: distances from float64 matrix products by default), so memory stays ``O(N_generated * n)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from colddiff.datasets import unpack_batch
from colddiff.evaluation.features import FeatureExtractor
from colddiff.evaluation.metrics import quantize
from colddiff.io import atomic_write_bytes, restoration_grid, save_png_atomic

__all__ = ["AuditConfig", "AuditResult", "nearest_training_images", "write_audit"]


@dataclass
class AuditConfig:
    """Options of the replication audit."""

    neighbours: int = 50  #: n, the nearest training images kept per generated image (Carlini's calibration set)
    alpha: float = 0.5  #: Carlini's calibration factor
    delta: float = 1 / 3  #: calibrated-score threshold for a likely copy
    grid: int = 4  #: patches per side for patch_l2
    cosine_threshold: float = 0.95  #: feature cosine similarity above which a generation counts as a replica
    exact: bool = True  #: float64 distance matrices (exact ranking); False: float32 (faster on consumer GPUs)


@dataclass
class AuditResult:
    """Per generated image: nearest training indices and scores for each measure (``(N, n)`` tensors)."""

    l2_index: Tensor
    l2: Tensor
    patch_index: Tensor
    patch_l2: Tensor
    cosine_index: Tensor | None
    cosine: Tensor | None
    calibrated: Tensor
    config: AuditConfig
    train_size: int
    summary: dict[str, Any] = field(default_factory=dict)


def _merge(best_values: Tensor | None, best_index: Tensor | None, values: Tensor, index: Tensor, k: int,
           largest: bool) -> tuple[Tensor, Tensor]:
    if best_values is not None:
        values, index = torch.cat([best_values, values], dim=1), torch.cat([best_index, index], dim=1)
    k = min(k, values.shape[1])
    top, position = values.topk(k, dim=1, largest=largest)
    return top, index.gather(1, position)


def _patches(images: Tensor, grid: int) -> list[Tensor]:
    """The ``grid x grid`` non-overlapping patches of each image, flattened: ``grid**2`` tensors ``(B, P_i)``."""
    height, width = images.shape[-2:]
    rows = [round(i * height / grid) for i in range(grid + 1)]
    cols = [round(j * width / grid) for j in range(grid + 1)]
    return [images[..., rows[i]:rows[i + 1], cols[j]:cols[j + 1]].flatten(1)
            for i in range(grid) for j in range(grid)]


def _sq_distances(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared differences between the rows of ``a`` ``(N, P)`` and ``b`` ``(M, P)``: ``(N, M)``."""
    d2 = a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1)[None, :] - 2.0 * (a @ b.T)
    return d2.clamp_min(0.0) / a.shape[1]


@torch.no_grad()
def nearest_training_images(
    generated: Tensor,
    train_batches: Iterable[Tensor],
    extractor: FeatureExtractor | None = None,
    config: AuditConfig | None = None,
    device: torch.device | str = "cpu",
) -> AuditResult:
    """Exact nearest-neighbour search of ``generated`` images among streamed training images.

    Args:
        generated: ``(N, C, H, W)`` images in ``[0, 1]`` (quantised to 8 bits here).
        train_batches: the training images in a fixed order, as batches ``(M_i, C, H, W)``; their positions in the
            stream are the indices reported.
        extractor: feature extractor for cosine similarity (``None``: no cosine measure).
        config: options.
        device: where the search runs.

    Returns:
        an :class:`AuditResult` (scores sorted best first).
    """
    config = config or AuditConfig()
    if config.neighbours < 1 or config.grid < 1:
        raise ValueError(f"neighbours and grid must be >= 1, got {config.neighbours}, {config.grid}")
    device = torch.device(device)
    dtype = torch.float64 if config.exact else torch.float32
    gen = quantize(generated.to(device))
    gen_flat = gen.flatten(1).to(dtype)
    gen_patches = [p.to(dtype) for p in _patches(gen, config.grid)]
    gen_features = None
    if extractor is not None:
        extractor = extractor.to(device).eval()
        gen_features = torch.nn.functional.normalize(extractor(gen).float(), dim=1)
    best: dict[str, tuple[Tensor | None, Tensor | None]] = {"l2": (None, None), "patch": (None, None),
                                                           "cosine": (None, None)}
    offset = 0
    k = config.neighbours
    for batch in train_batches:
        train = quantize(batch.to(device))
        if train.shape[1:] != gen.shape[1:]:
            raise ValueError(f"training images have shape {tuple(train.shape[1:])}, generated images "
                             f"{tuple(gen.shape[1:])}: audit them at the same size and channels")
        index = torch.arange(offset, offset + len(train), device=device).expand(len(gen), -1)
        l2 = _sq_distances(gen_flat, train.flatten(1).to(dtype)).sqrt()
        best["l2"] = _merge(*best["l2"], l2, index, k, largest=False)
        patch = None
        for gp, tp in zip(gen_patches, _patches(train, config.grid)):
            d = _sq_distances(gp, tp.to(dtype))
            patch = d if patch is None else torch.maximum(patch, d)
        best["patch"] = _merge(*best["patch"], patch.sqrt(), index, k, largest=False)
        if gen_features is not None:
            features = torch.nn.functional.normalize(extractor(train).float(), dim=1)
            best["cosine"] = _merge(*best["cosine"], gen_features @ features.T, index, k, largest=True)
        offset += len(train)
    if offset == 0:
        raise ValueError("the training set is empty")
    patch_values, patch_index = best["patch"]
    calibration = config.alpha * patch_values.mean(dim=1)
    calibrated = torch.where(calibration > 0, patch_values[:, 0] / calibration.clamp_min(1e-12),
                             torch.zeros_like(calibration))
    result = AuditResult(
        l2_index=best["l2"][1].cpu(), l2=best["l2"][0].float().cpu(), patch_index=patch_index.cpu(),
        patch_l2=patch_values.float().cpu(), cosine_index=None if gen_features is None else best["cosine"][1].cpu(),
        cosine=None if gen_features is None else best["cosine"][0].float().cpu(), calibrated=calibrated.float().cpu(),
        config=config, train_size=offset,
    )
    result.summary = _summary(result)
    return result


def _quantiles(values: Tensor) -> dict[str, float]:
    q = torch.quantile(values.double(), torch.tensor([0.0, 0.01, 0.05, 0.5, 0.95, 1.0], dtype=torch.float64))
    return dict(zip(("min", "p01", "p05", "median", "p95", "max"), (round(float(v), 6) for v in q)))


def _summary(result: AuditResult) -> dict[str, Any]:
    n = len(result.l2)
    summary: dict[str, Any] = {
        "generated": n,
        "training_images": result.train_size,
        "nearest_l2": _quantiles(result.l2[:, 0]),
        "nearest_patch_l2": _quantiles(result.patch_l2[:, 0]),
        "calibrated_score": _quantiles(result.calibrated),
        "fraction_likely_copies": float((result.calibrated <= result.config.delta).float().mean()),
        "fraction_exact_copies": float((result.l2[:, 0] < 0.5 / 255).float().mean()),
    }
    if result.cosine is not None:
        summary["nearest_cosine"] = _quantiles(result.cosine[:, 0])
        summary["fraction_above_cosine_threshold"] = float(
            (result.cosine[:, 0] >= result.config.cosine_threshold).float().mean())
    return summary


def ranking(result: AuditResult) -> Tensor:
    """Generated indices from most to least replicated: by cosine similarity if measured, else patch distance."""
    if result.cosine is not None:
        return result.cosine[:, 0].argsort(descending=True)
    return result.patch_l2[:, 0].argsort()


def write_audit(result: AuditResult, out: Path, generated: Tensor, train_dataset: Any,
                provenance: Sequence[dict] | None = None, top: int = 16, extractor_name: str | None = None,
                scale: int = 1) -> dict[str, Path]:
    """Write ``replication.json`` (every pair), ``replication_hist.png`` and ``replication_pairs.png``."""
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(len(result.l2)):
        record: dict[str, Any] = {
            "generated": i,
            "nearest_l2": {"train_index": int(result.l2_index[i, 0]), "l2": float(result.l2[i, 0])},
            "nearest_patch_l2": {"train_index": int(result.patch_index[i, 0]),
                                 "patch_l2": float(result.patch_l2[i, 0])},
            "calibrated_score": float(result.calibrated[i]),
            "neighbours_by_patch_l2": [[int(j), round(float(d), 6)]
                                       for j, d in zip(result.patch_index[i], result.patch_l2[i])],
        }
        if result.cosine is not None:
            record["nearest_cosine"] = {"train_index": int(result.cosine_index[i, 0]),
                                        "cosine": float(result.cosine[i, 0])}
        if provenance is not None and i < len(provenance):
            record["provenance"] = provenance[i]
        records.append(record)
    payload = {
        "protocol": {
            **asdict(result.config),
            "measures": ["l2 (pixel RMS, [0, 1])", f"patch_l2 (max RMS over a {result.config.grid}x"
                         f"{result.config.grid} patch grid)", "calibrated_score (Carlini et al.)"]
            + ([f"cosine ({extractor_name} features)"] if result.cosine is not None else []),
            "quantisation": "8-bit (round(255 x) / 255) for generated and training images",
            "search": "exact, over every training image",
        },
        "summary": result.summary,
        "pairs": records,
    }
    paths = {"json": out / "replication.json"}
    atomic_write_bytes(json.dumps(payload, indent=2).encode(), paths["json"])
    order = ranking(result)[: max(1, top)]
    nearest = result.cosine_index[:, 0] if result.cosine is not None else result.patch_index[:, 0]
    train_images = torch.stack([unpack_batch(train_dataset[int(nearest[i])])[0] for i in order])
    pairs_per_row = min(4, len(order))  # each pair: generated | nearest training image
    paths["pairs"] = save_png_atomic(restoration_grid([quantize(generated[order].cpu()), train_images]),
                                     out / "replication_pairs.png", nrow=2 * pairs_per_row, scale=scale)
    paths["histogram"] = _histogram(result, out / "replication_hist.png", extractor_name)
    return paths


def _histogram(result: AuditResult, path: Path, extractor_name: str | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("nearest patch-wise L2 distance", result.patch_l2[:, 0], None),
              ("calibrated score (Carlini et al.)", result.calibrated, result.config.delta)]
    if result.cosine is not None:
        panels.insert(0, (f"nearest cosine similarity ({extractor_name})", result.cosine[:, 0],
                          result.config.cosine_threshold))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2))
    for ax, (title, values, threshold) in zip(axes, panels):
        ax.hist(values.numpy(), bins=max(10, min(60, int(math.sqrt(len(values))) * 2)), color="#4472c4")
        if threshold is not None:
            ax.axvline(threshold, color="#c00000", linestyle="--", label=f"threshold {threshold:.3g}")
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("generated images", fontsize=8)
    fig.suptitle(f"{len(result.l2)} generated vs {result.train_size} training images", fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
