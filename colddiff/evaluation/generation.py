"""The generation evaluation as functions: generate images with a model, and score generated images against a
reference set in the feature space of an extractor.

Distances are FID/KID only with the standard Inception-v3 network; with any other extractor they are reported under
its own name (``FD-<name>``, ``KD-<name>``).  ``evaluate.py generation`` is these functions plus argument parsing and
printing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from colddiff._checks import check_finite_output, check_positive_int
from colddiff.datasets import unpack_batch
from colddiff.evaluation.features import FeatureExtractor
from colddiff.evaluation.metrics import (
    CachedFeatures,
    ReferenceCache,
    class_entropy,
    extract_features,
    extract_features_and_logits,
    frechet_distance,
    generation_metrics,
    quantize,
)
from colddiff.evaluation.restoration import markdown_table
from colddiff.pipeline import Pipeline, as_pipeline
from colddiff.sampling import Precision, SamplerName, autocast

__all__ = ["GenerationReport", "generate_images", "reference_features", "evaluate_generation",
           "select_prior_setting"]


@torch.no_grad()
def generate_images(
    model: Pipeline | Any,
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

    Raises:
        NonFiniteOutputError: the model produced NaN or infinite values (a corrupt or out-of-range model).
    """
    check_positive_int(num, "num")
    check_positive_int(batch_size, "batch_size")
    model = as_pipeline(model)
    if model.prior is None:
        raise ValueError(f"this model has no start-state prior (degradation {type(model.degradation).__name__}), so "
                         "it cannot generate; evaluate it with evaluate_restoration")
    if not model.prior.is_fitted:
        raise ValueError(f"the model's {type(model.prior).__name__} is not ready: fit it first (Prior.fit_from; "
                         "sample.py generate --fit-prior, or --partner-root for mixing models)")
    device = torch.device(device) if device is not None else model.device
    model = model.to(device)
    levels = model.sampling_steps(sampler, steps)
    batches = -(-num // batch_size)
    with tqdm(total=batches * levels, desc="generate", disable=not progress) as bar, autocast(device, precision):
        images, draw = model.generate(num, torch.Generator().manual_seed(seed), sampler=sampler, steps=steps,
                                      callback=lambda info: bar.update(1), batch_size=batch_size, noise=noise)
    check_finite_output(images, "generated images")
    records = [{"index": i, "seed": seed, "start_state": p} for i, p in enumerate(draw.provenance)]
    return quantize(images).cpu(), records


@torch.no_grad()
def select_prior_setting(
    model: Pipeline | Any,
    name: str,
    candidates: Sequence[float],
    reference: Tensor,
    extractor: FeatureExtractor,
    *,
    num: int = 256,
    seed: int = 0,
    batch_size: int = 128,
    device: torch.device | str | None = None,
) -> tuple[float, list[dict[str, Any]]]:
    """Choose a setting of the model's prior by a validation score, and set it: for each candidate value of the
    prior's attribute ``name`` (e.g. :class:`~colddiff.priors.LowResKDEPrior`'s ``bandwidth``), ``num`` images
    generated from the same seed (the same start draws, scaled: a paired comparison), their Fréchet distance to the
    held-out ``reference`` images in ``extractor``'s feature space; the lowest wins (ties: the first candidate).

    The right spread of a start-state prior depends on the trained network as much as on the data: a network trained
    longer maps start states near its training ones to sharper images and those further away to worse ones, so a
    fixed spread that suits a short run hurts a long one (README, Generation).  Choosing it on held-out images after
    training follows the network.

    Returns:
        The chosen value and one row per candidate ``{"value", "FD"}``; the prior keeps the chosen value.
    """
    model = as_pipeline(model)
    if model.prior is None or not hasattr(model.prior, name):
        raise ValueError(f"select_prior_setting: the model's prior ({type(model.prior).__name__}) has no setting "
                         f"{name!r}")
    values = [float(v) for v in candidates]
    if not values:
        raise ValueError("select_prior_setting: give at least one candidate value")
    device = torch.device(device) if device is not None else model.device
    real = extract_features(extractor, reference.split(batch_size), device)
    rows = []
    for value in values:
        setattr(model.prior, name, value)
        images, _ = generate_images(model, num, seed=seed, batch_size=batch_size, device=device)
        fake = extract_features(extractor, images.split(batch_size), device)
        rows.append({"value": value, "FD": frechet_distance(real, fake)})
    best = min(rows, key=lambda row: row["FD"])["value"]
    setattr(model.prior, name, best)
    return best, rows


@torch.no_grad()
def reference_features(
    extractor: FeatureExtractor,
    dataset: Dataset,
    *,
    reference_id: str,
    split: str = "",
    cache: ReferenceCache | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> CachedFeatures:
    """Features (and a classifier's logits) of a reference dataset, from ``cache`` when it holds features of the
    same content, else computed (and stored in ``cache``).  ``.describe()`` says which."""
    size, channels = _shape_of(dataset)

    def compute() -> tuple[Tensor, Tensor | None]:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        batches = (unpack_batch(b)[0] for b in tqdm(loader, desc="reference", disable=not progress))
        return extract_features_and_logits(extractor, batches, device)

    if cache is not None:
        return cache.load_or_compute(dataset, extractor, compute, dataset_id=reference_id, split=split, size=size,
                                     channels=channels)
    features, logits = compute()
    return CachedFeatures(features, logits, "", None, False, "")


def _shape_of(dataset: Dataset) -> tuple[int, int]:
    if len(dataset) == 0:
        raise ValueError("the reference dataset is empty")
    image = unpack_batch(dataset[0])[0]
    return int(image.shape[-1]), int(image.shape[0])


@dataclass
class GenerationReport:
    """The scores (``rows["generated"][metric]``, and ``rows["real vs real (floor)"]``), their columns, and the
    protocol."""

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


def _scores(reference: CachedFeatures, features: Tensor, logits: Tensor | None, fd: str, kd: str,
            kid_subsets: int, kid_subset_size: int, seed: int) -> dict[str, float]:
    metrics = generation_metrics(reference.features, features, kid_subsets=kid_subsets,
                                 kid_subset_size=kid_subset_size, seed=seed)
    row = {fd: metrics["FD"], kd: metrics["KD"], f"{kd} std": metrics["KD_std"], "precision": metrics["precision"],
           "recall": metrics["recall"], "N": metrics["N_fake"]}
    if logits is not None:
        row["class entropy"] = class_entropy(logits)["entropy_fraction"]
    return row


@torch.no_grad()
def evaluate_generation(
    generated: Tensor,
    reference: Dataset,
    extractor: FeatureExtractor,
    *,
    floor: Dataset | None = None,
    reference_id: str = "reference",
    split: str = "",
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
    """Score ``generated`` images against a ``reference`` dataset in the feature space of ``extractor``.

    Rows: ``generated`` and, with ``floor`` (real images the reference does not hold, e.g. the test split when the
    reference is the training split), ``real vs real (floor)``: the same metrics for as many real images as there
    are generated ones (precision and recall depend on the set sizes), i.e. what a perfect generator would score.
    Columns: Fréchet and kernel distance (``FID``/``KID`` only with the standard Inception-v3, else
    ``FD-<name>``/``KD-<name>``), improved precision and recall (k = 3), and for a classifier extractor the entropy of
    the predicted-class histogram as a fraction of ``log K`` (1: every class equally often).

    Args:
        generated: ``(N, C, H, W)`` images in ``[0, 1]`` (quantised to 8 bits here), at the reference's size.
        reference: the reference images (quantised to 8 bits here).
        extractor: the feature space.
        floor: held-out real images for the floor row (``None``: no floor).
        reference_id, split: a description of the reference for the report and the cache key.
        cache: reference-feature cache keyed on content (``None``: always computed).
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
    fd, kd = extractor.metric_names()
    ref = reference_features(extractor, reference, reference_id=reference_id, split=split, cache=cache,
                             batch_size=batch_size, num_workers=num_workers, device=device, progress=progress)
    scores = dict(kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed)
    features, logits = extract_features_and_logits(extractor, generated.split(batch_size), device)
    rows = {"generated": _scores(ref, features, logits, fd, kd, **scores)}
    report_protocol = {"generated": "images", **(protocol or {})}
    if floor is not None:
        count = min(len(floor), len(generated))
        real = torch.stack([unpack_batch(floor[i])[0] for i in range(count)])
        if tuple(real.shape[1:]) != (channels, size, size):
            raise ValueError(f"floor images are {tuple(real.shape[1:])}, the reference images {(channels, size, size)}")
        real_features, real_logits = extract_features_and_logits(extractor, real.split(batch_size), device)
        rows = {"real vs real (floor)": _scores(ref, real_features, real_logits, fd, kd, **scores), **rows}
        report_protocol["floor"] = f"{count} held-out real images vs the same reference"
    columns = [fd, kd, f"{kd} std", "precision", "recall"] + (["class entropy"] if logits is not None else [])
    report_protocol.update({
        "N_generated": len(generated), "reference": reference_id, "N_reference": len(reference),
        "image_size": size, "channels": channels, "extractor": extractor.name,
        "extractor_preprocessing": extractor.preprocessing,
        "quantisation": "8-bit (round(255 x) / 255) before feature extraction, generated and reference alike",
        "KID": f"polynomial kernel, {kid_subsets} subsets of {min(kid_subset_size, len(generated))}, seed {seed}",
        "precision/recall": "improved precision and recall (Kynkäänniemi et al. 2019), k = 3",
        "class entropy": "entropy of the predicted-class histogram / log K" if logits is not None else "n/a",
        "reference_features": ref.describe() if cache is not None else "computed (no cache)",
    })
    return GenerationReport(rows, columns, report_protocol)
