"""Training-time pictures: a PNG grid of restorations (or generated images) written into the run folder."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import Tensor

from colddiff._checks import check_positive_int
from colddiff.datasets import stack_items, unpack_batch
from colddiff.io import restoration_grid, save_png_atomic
from colddiff.sampling import SamplerName

if TYPE_CHECKING:
    from colddiff.module import ColdDiffusion

__all__ = ["SampleGrid", "SelectPriorSetting"]


class SampleGrid(L.Callback):
    """Write a PNG grid every ``every_n_steps`` optimiser steps and/or ``every_n_epochs`` epochs, and at the end.

    Restoration models: one row per image, columns ``x_T | direct | sampled | x0`` (fixed validation images and a
    fixed degradation draw, so grids are comparable across training).  Models with a generation prior: a grid of
    images generated from fixed prior draws.  Files go to ``<run folder>/grids/step_XXXXXXX.png`` (rank 0 only).

    Args:
        every_n_steps: optimiser-step interval (``None`` or 0: off).
        every_n_epochs: epoch interval (``None`` or 0: off).
        num_images: images (rows, or generated images).
        sampler: sampler for the grid (default: the model's).
        steps: sampling steps (default: the model's ``sample_steps``).
        seed: seed of the fixed degradation / prior draws.
        dirname: sub-folder of the run folder.
        scale: integer nearest-neighbour enlargement of every image in the PNG.
    """

    def __init__(self, every_n_steps: int | None = 1000, every_n_epochs: int | None = None, num_images: int = 8,
                 sampler: SamplerName | None = None, steps: int | None = None, seed: int = 0,
                 dirname: str = "grids", scale: int = 1) -> None:
        super().__init__()
        check_positive_int(num_images, "num_images", "SampleGrid")
        self.scale = check_positive_int(scale, "scale", "SampleGrid")
        self.every_n_steps, self.every_n_epochs = every_n_steps or 0, every_n_epochs or 0
        self.num_images, self.sampler, self.steps, self.seed, self.dirname = num_images, sampler, steps, seed, dirname
        self._images: Any = None
        self._last_step = -1

    def _folder(self, trainer: L.Trainer) -> Path:
        return Path(trainer.log_dir or trainer.default_root_dir) / self.dirname

    def _reference_batch(self, trainer: L.Trainer) -> Any:
        if self._images is None:
            datamodule = trainer.datamodule
            dataset = None
            if datamodule is not None and hasattr(datamodule, "dataset"):
                for split in ("val", "test", "train"):
                    try:
                        dataset = datamodule.dataset(split)
                        break
                    except ValueError:
                        continue
            if dataset is None:
                self._images = next(iter(trainer.train_dataloader))
            else:
                self._images = stack_items([dataset[i] for i in range(min(self.num_images, len(dataset)))])
        return self._images

    @torch.no_grad()
    def render(self, trainer: L.Trainer, module: ColdDiffusion) -> Tensor:
        """The grid images (before tiling) and the number of columns."""
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        if module.prior is not None:
            images, _ = module.generate(self.num_images, generator, sampler=self.sampler, steps=self.steps)
            return images
        x0, context = unpack_batch(self._reference_batch(trainer))
        x0 = x0[: self.num_images].to(module.device)
        context = {k: v[: self.num_images].to(module.device) for k, v in context.items()}
        result = module.reconstruct(x0, sampler=self.sampler, steps=self.steps, generator=generator, **context)
        return restoration_grid([result.degraded, result.direct, result.sampled, result.x0])

    def write(self, trainer: L.Trainer, module: ColdDiffusion) -> Path | None:
        """Render and save the grid of the current step (on rank 0; every rank must call this)."""
        folder = self._folder(trainer)  # trainer.log_dir is a collective under DDP: resolved on every rank
        return self._write(trainer, module, folder)

    @rank_zero_only
    def _write(self, trainer: L.Trainer, module: ColdDiffusion, folder: Path) -> Path:
        images = self.render(trainer, module)
        ncol = 4 if module.prior is None else max(1, math.ceil(math.sqrt(len(images))))
        return save_png_atomic(images, folder / f"step_{trainer.global_step:07d}.png", ncol, scale=self.scale)

    def _maybe_write(self, trainer: L.Trainer, module: ColdDiffusion) -> None:
        if trainer.global_step != self._last_step:
            self._last_step = trainer.global_step
            self.write(trainer, module)

    def on_train_batch_end(self, trainer: L.Trainer, module: ColdDiffusion, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._maybe_write(trainer, module)

    def on_train_epoch_end(self, trainer: L.Trainer, module: ColdDiffusion) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._maybe_write(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: ColdDiffusion) -> None:
        self._maybe_write(trainer, module)


class SelectPriorSetting(L.Callback):
    """Choose a setting of the model's start-state prior on held-out images at the end of training (a validation
    score), before the last checkpoint is written: by default :class:`~colddiff.priors.LowResKDEPrior`'s kernel
    ``bandwidth``.  :func:`colddiff.evaluation.select_prior_setting` generates ``num_images`` images per candidate
    (the same start draws, scaled) and keeps the candidate with the lowest Fréchet distance to the first
    ``reference_images`` images of the validation split in ``extractor``'s feature space.  The chosen value is set on
    the prior and recorded in the model's config (checkpoints and exports hold it; the table goes to the log and to
    ``<run folder>/prior_selection.json``).

    Why: the spread of the start states that suits a network depends on how long it trained (a network trained longer
    maps start states far from its training ones to worse images), so a fixed bandwidth that suits a short run makes
    longer runs worse (README, "Quality per CPU-minute").

    Args:
        name: the prior's attribute (an init argument of the prior).
        candidates: the values tried, in order (the first wins a tie).
        num_images: images generated per candidate.
        reference_images: validation images (at most) to compare with.
        extractor: feature extractor (:func:`colddiff.evaluation.build_extractor`: ``"mnist-cnn"`` for digits,
            ``"pixels"``, ``"resnet56"`` with ``extractor_weights``...).
        extractor_weights: weights file of the extractor, where it needs one.
        seed: seed of the start draws.
    """

    def __init__(self, name: str = "bandwidth", candidates: list[float] | None = None, num_images: int = 256,
                 reference_images: int = 1000, extractor: str = "pixels", extractor_weights: str | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        self.name = name
        self.candidates = [0.0, 0.025, 0.05, 0.1] if candidates is None else [float(v) for v in candidates]
        if not self.candidates:
            raise ValueError("SelectPriorSetting: give at least one candidate value")
        self.num_images = check_positive_int(num_images, "num_images", "SelectPriorSetting")
        self.reference_images = check_positive_int(reference_images, "reference_images", "SelectPriorSetting")
        self.extractor, self.extractor_weights, self.seed = extractor, extractor_weights, seed
        self.chosen: float | None = None
        self.table: list[dict[str, float]] = []

    def setup(self, trainer: L.Trainer, module: ColdDiffusion, stage: str) -> None:
        prior = module.prior
        if stage == "fit" and (prior is None or self.name not in getattr(prior, "_init_config", {})):
            raise ValueError(f"SelectPriorSetting: the model's prior ({type(prior).__name__}) has no init argument "
                             f"{self.name!r} to choose")

    def _reference(self, trainer: L.Trainer) -> Tensor:
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "dataset"):
            raise ValueError("SelectPriorSetting needs a colddiff data module with a validation split")
        dataset = datamodule.dataset("val")
        count = min(self.reference_images, len(dataset))
        return unpack_batch(stack_items([dataset[i] for i in range(count)]))[0]

    def select(self, trainer: L.Trainer, module: ColdDiffusion) -> float:
        """Run the selection now, set and record the chosen value; returns it."""
        from colddiff.evaluation import build_extractor, select_prior_setting

        extractor = build_extractor(self.extractor, self.extractor_weights)
        best, self.table = select_prior_setting(module.pipeline, self.name, self.candidates, self._reference(trainer),
                                                extractor, num=self.num_images, seed=self.seed,
                                                device=module.device)
        module.set_prior_setting(self.name, best)
        self.chosen = best
        summary = ", ".join(f"{row['value']:g}: FD {row['FD']:.2f}" for row in self.table)
        rank_zero_info(f"SelectPriorSetting: {self.name} = {best:g} at step {trainer.global_step} "
                       f"(FD-{self.extractor} on held-out images: {summary})")
        if trainer.is_global_zero:
            folder = Path(trainer.log_dir or trainer.default_root_dir)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "prior_selection.json").write_text(json.dumps(
                {"name": self.name, "chosen": best, "step": trainer.global_step, "extractor": self.extractor,
                 "num_images": self.num_images, "table": self.table}, indent=2))
        return best

    def on_train_batch_end(self, trainer: L.Trainer, module: ColdDiffusion, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # the last step (max_steps): checkpoint callbacks run after this one, so the last checkpoint holds the choice
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps and self.chosen is None:
            self.select(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: ColdDiffusion) -> None:
        if self.chosen is None:  # stopped another way (max_epochs, a time limit): choose for the in-memory model
            self.select(trainer, module)
