"""The restoration evaluation (the paper's Tables 1-4) as a function: a model and data in, a table out.

Rows Degraded (``x_t``), Direct (``R(x_t, t)``) and Sampled (the sampler's final image); columns SSIM, PSNR, RMSE
and, with a feature extractor, a Fréchet distance (FID only with the standard Inception-v3, else ``FD-<name>``).
``evaluate.py restoration`` is this function plus argument parsing and printing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from colddiff._checks import check_finite_output, check_positive_int
from colddiff.datasets import unpack_batch, with_partners
from colddiff.evaluation.features import FeatureExtractor
from colddiff.evaluation.metrics import RestorationMetrics, quantize
from colddiff.pipeline import Pipeline, as_pipeline
from colddiff.sampling import Precision, SamplerName, autocast

__all__ = ["RestorationReport", "evaluate_restoration", "markdown_table"]


def _fmt(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.2f}"


def markdown_table(rows: dict[str, dict[str, float]], columns: Sequence[str]) -> str:
    """A Markdown table: one row per entry of ``rows``, the given metric columns."""
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(values[c]) for c in columns) + " |")
    return "\n".join(lines)


@dataclass
class RestorationReport:
    """The table (``rows[row][metric]``), its columns, and the protocol it was measured with."""

    rows: dict[str, dict[str, float]]
    columns: list[str]
    protocol: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        p = self.protocol
        title = (f"Restoration of {p['images']} images, {p['degradation']} at level {p['level']}/{p['num_steps']}, "
                 f"{p['sampler']} sampler")
        return f"{title}\n\n{markdown_table(self.rows, self.columns)}\n"


@torch.no_grad()
def evaluate_restoration(
    model: Pipeline | Any,
    dataset: Dataset,
    *,
    level: int | None = None,
    sampler: SamplerName | None = None,
    steps: int | None = None,
    noise: float | None = None,
    extractor: FeatureExtractor | None = None,
    partners: Dataset | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    seed: int = 0,
    device: torch.device | str | None = None,
    precision: Precision = "32",
    progress: bool = False,
) -> RestorationReport:
    """Degrade every image of ``dataset`` to ``level``, restore it, and measure Degraded / Direct / Sampled.

    Images are quantised to 8 bits before the degradation and before every metric; the degradation's random params
    (and mixing partners, drawn from ``partners``) come from a generator seeded with ``seed``.

    Args:
        model: a :class:`~colddiff.pipeline.Pipeline` (or a training module: its pipeline, the EMA network).
        dataset: clean images (items as colddiff's batch format allows: tensors or ``{"image", ...}`` dicts).
        level: the degradation level (default ``T``).
        sampler, steps, noise: the sampler, its levels and its sampling noise (defaults: the model's).
        extractor: adds a Fréchet-distance column in its feature space.
        partners: partner images for mixing models whose batches carry none.
        batch_size, num_workers: the data loader's.
        seed: seed of the degradation params.
        device: where to run (default: the model's device).
        precision: the network's precision (``"32"``, ``"bf16"``, ``"16"``).
        progress: show a progress bar.

    Returns:
        A :class:`RestorationReport`; ``rows["Sampled"]["PSNR"]`` etc., every row with ``N`` images.

    Raises:
        NonFiniteOutputError: the model produced NaN or infinite values (a corrupt or out-of-range model).
    """
    check_positive_int(batch_size, "batch_size")
    model = as_pipeline(model)
    device = torch.device(device) if device is not None else model.device
    model = model.to(device)
    T = model.degradation.num_steps
    level = T if level is None else level
    sampler = sampler or model.sampler
    metrics = RestorationMetrics(device, extractor)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False, num_workers=num_workers)
    seen = 0
    for batch in tqdm(loader, desc="restoration", disable=not progress):
        x0, context = unpack_batch(batch)
        x0 = quantize(x0.to(device))
        context = with_partners(context, model.degradation.context_keys, partners, len(x0), generator,
                                "pass partners= (evaluate.py: --partner-root)")
        context = {k: v.to(device) for k, v in context.items()}
        with autocast(device, precision):
            result = model.reconstruct(x0, level, sampler=sampler, steps=steps, generator=generator, noise=noise,
                                       **context)
        check_finite_output(result.direct, "direct restorations")
        check_finite_output(result.sampled, "sampled restorations")
        metrics.update("Degraded", result.degraded, x0, targets_are_new=True)
        metrics.update("Direct", result.direct, x0)
        metrics.update("Sampled", result.sampled, x0)
        seen += len(x0)
    if seen != len(dataset):  # every image, none skipped
        raise RuntimeError(f"evaluated {seen} images but the dataset has {len(dataset)}")
    rows = metrics.compute()
    columns = ([extractor.metric_names()[0]] if extractor is not None else []) + ["SSIM", "PSNR", "RMSE"]
    protocol = {
        "images": seen, "degradation": type(model.degradation).__name__, "level": level, "num_steps": T,
        "sampler": sampler, "steps": steps or "all levels", "noise": noise, "seed": seed,
        "quantisation": "8-bit (round(255 x) / 255) for every image before metrics",
        "SSIM": "Gaussian window 11, sigma 1.5, data range 1, mean over images",
        "PSNR": "per image (data range 1), mean over images", "RMSE": "over all pixels, [0, 1] units",
        "features": None if extractor is None else extractor.name, "precision": precision,
    }
    return RestorationReport(rows, columns, protocol)
