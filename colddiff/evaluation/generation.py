"""The generation evaluation as functions: generate images with a model, and score generated images against a
reference set in the feature space of an extractor.

Distances are FID/KID only with the standard Inception-v3 network; with any other extractor they are reported under
its own name (``FD-<name>``, ``KD-<name>``).  ``evaluate.py generation`` is these functions plus argument parsing and
printing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from colddiff._checks import check_positive_int
from colddiff.datasets import unpack_batch
from colddiff.evaluation.features import FeatureExtractor
from colddiff.evaluation.metrics import ReferenceCache, extract_features, frechet_distance, kernel_distance, quantize
from colddiff.evaluation.restoration import markdown_table
from colddiff.sampling import Precision, SamplerName, autocast, timesteps

if TYPE_CHECKING:
    from colddiff.module import ColdDiffusion

__all__ = ["GenerationReport", "generate_images", "reference_features", "evaluate_generation", "preprocessing"]


@torch.no_grad()
def generate_images(
    model: ColdDiffusion,
    num: int,
    *,
    seed: int = 0,
    sampler: SamplerName | None = None,
    steps: int | None = None,
    noise: float | None = None,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    precision: Precision = "32",
    progress: bool = False,
) -> tuple[Tensor, list[dict[str, Any]]]:
    """``num`` images from the model's prior, 8-bit quantised, and one provenance record per image.

    The start states are drawn in one draw from a generator seeded with ``seed``, so the seed alone fixes the
    images, whatever ``batch_size``.

    Returns:
        Images ``(num, C, H, W)`` on the CPU and records ``{"index", "seed", "start_state"}``.
    """
    check_positive_int(num, "num")
    check_positive_int(batch_size, "batch_size")
    if model.prior is None:
        raise ValueError(f"this model has no start-state prior (degradation {type(model.degradation).__name__}), so "
                         "it cannot generate; evaluate it with evaluate_restoration")
    if not model.prior.is_fitted:
        raise ValueError(f"the model's {type(model.prior).__name__} is not ready: fit it first (Prior.fit_from; "
                         "sample.py generate --fit-prior, or --partner-root for mixing models)")
    device = torch.device(device) if device is not None else model.device
    model = model.to(device)
    levels = 1 if (sampler or model.sampler) == "direct" else \
        len(timesteps(model.degradation.num_steps, steps if steps is not None else model.sample_steps)) - 1
    batches = -(-num // batch_size)
    with tqdm(total=batches * levels, desc="generate", disable=not progress) as bar, autocast(device, precision):
        images, draw = model.generate(num, torch.Generator().manual_seed(seed), sampler=sampler, steps=steps,
                                      callback=lambda info: bar.update(1), batch_size=batch_size, noise=noise)
    records = [{"index": i, "seed": seed, "start_state": p} for i, p in enumerate(draw.provenance)]
    return quantize(images).cpu(), records


def preprocessing(extractor: FeatureExtractor) -> str:
    """How the extractor prepares images (written into every report)."""
    if extractor.is_fid_inception:
        return "RGB uint8, bilinear resize to 299 (TensorFlow-1 compatible, as the standard FID)"
    if extractor.name.startswith("resnet"):
        return "RGB, bilinear (antialiased) resize to 32, ImageNet normalisation"
    return "none"


@torch.no_grad()
def reference_features(
    extractor: FeatureExtractor,
    dataset: Dataset,
    *,
    reference_id: str,
    cache: ReferenceCache | None = None,
    description: dict[str, Any] | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[Tensor, str]:
    """Features of a reference dataset, from ``cache`` when it holds them (else computed and stored).

    Returns:
        The features ``(N, D)`` and how they were obtained (``"cache"`` or ``"computed"``).
    """
    size, channels = _shape_of(dataset)
    key = cache.key(reference_id, "", size, channels, extractor, len(dataset)) if cache is not None else None
    if cache is not None:
        features = cache.get(key)
        if features is not None:
            return features.to(device), "cache"
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    features = extract_features(extractor, (unpack_batch(b)[0] for b in tqdm(loader, desc="reference",
                                                                               disable=not progress)), device)
    if cache is not None:
        cache.put(key, features, {"dataset": reference_id, "size": size, "extractor": extractor.name,
                                  "count": len(dataset), **(description or {})})
    return features, "computed"


def _shape_of(dataset: Dataset) -> tuple[int, int]:
    if len(dataset) == 0:
        raise ValueError("the reference dataset is empty")
    image = unpack_batch(dataset[0])[0]
    return int(image.shape[-1]), int(image.shape[0])


@dataclass
class GenerationReport:
    """The scores (``rows["generated"][metric]``), their columns, and the protocol."""

    rows: dict[str, dict[str, float]]
    columns: list[str]
    protocol: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        p = self.protocol
        return "\n".join([
            f"Generation: {p['N_generated']} images ({p['generated']}) vs {p['N_reference']} images of "
            f"{p['reference']}, features {p['extractor']}", "", markdown_table(self.rows, self.columns), "",
            "Protocol: " + "; ".join(f"{k}: {v}" for k, v in p.items()),
        ])


@torch.no_grad()
def evaluate_generation(
    generated: Tensor,
    reference: Dataset,
    extractor: FeatureExtractor,
    *,
    reference_id: str = "reference",
    cache: ReferenceCache | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    protocol: dict[str, Any] | None = None,
) -> GenerationReport:
    """Fréchet and kernel distances between ``generated`` images and a ``reference`` dataset.

    Args:
        generated: ``(N, C, H, W)`` images in ``[0, 1]`` (quantised to 8 bits here), at the reference's size.
        reference: the reference images (quantised to 8 bits here).
        extractor: the feature space.
        reference_id: a description of the reference for the report and the cache key.
        cache: reference-feature cache (``None``: always computed).
        kid_subsets, kid_subset_size, seed: the kernel distance's random subsets.
        batch_size, num_workers, device, progress: how features are computed.
        protocol: extra entries for the report's protocol (e.g. the sampler used).
    """
    if generated.ndim != 4 or len(generated) < 2:
        raise ValueError(f"need at least 2 generated images (N, C, H, W), got shape {tuple(generated.shape)}")
    size, channels = _shape_of(reference)
    if tuple(generated.shape[1:]) != (channels, size, size):
        raise ValueError(f"generated images are {tuple(generated.shape[1:])} but the reference images are "
                         f"{(channels, size, size)}: compare images of the same size and channels")
    fd_name, kd_name = extractor.metric_names()
    ref, origin = reference_features(extractor, reference, reference_id=reference_id, cache=cache,
                                     batch_size=batch_size, num_workers=num_workers, device=device, progress=progress)
    fake = extract_features(extractor, generated.split(batch_size), torch.device(device))
    fd = frechet_distance(ref, fake)
    kd_mean, kd_std = kernel_distance(ref, fake, kid_subsets, kid_subset_size, seed=seed)
    rows = {"generated": {fd_name: fd, kd_name: kd_mean, f"{kd_name} std": kd_std}}
    report_protocol = {
        "generated": "images", **(protocol or {}), "N_generated": len(generated), "reference": reference_id,
        "N_reference": len(reference), "image_size": size, "channels": channels, "extractor": extractor.name,
        "extractor_preprocessing": preprocessing(extractor),
        "quantisation": "8-bit (round(255 x) / 255) before feature extraction, generated and reference alike",
        "KID": f"polynomial kernel, {kid_subsets} subsets of {min(kid_subset_size, len(generated))}, seed {seed}",
        "reference_features": origin,
    }
    return GenerationReport(rows, [fd_name, kd_name, f"{kd_name} std"], report_protocol)
