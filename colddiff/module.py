"""The Lightning module: trains the restoration network with its objective (:mod:`colddiff.objectives`), keeps
the EMA of its weights (the paper: decay 0.995 every 10 steps from step 2000), validates (loss, PSNR/SSIM of direct
and sampled reconstructions).  The EMA network is the one of :attr:`ColdDiffusion.pipeline`, the torch-only
:class:`~colddiff.pipeline.Pipeline` that validation, sampling, generation and export use."""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from colddiff._checks import check_positive_int
from colddiff._config import describe, describe_or_mark, model_kwargs
from colddiff._lightning import built_by_cli, fit_loop_dataloader
from colddiff.checkpoint import RNGState, apply_resume_changes
from colddiff.datasets import DatasetSource, unpack_batch
from colddiff.degradations.base import Degradation
from colddiff.ema import ema_update, power_ema_decay, power_ema_gamma
from colddiff.files import read_training_checkpoint
from colddiff.objectives import Objective, resolve_objective
from colddiff.pipeline import Pipeline, Reconstruction, compile_network
from colddiff.priors import Prior, PriorSample
from colddiff.sampling import SamplerName
from colddiff.schedules import level_values

__all__ = ["ColdDiffusion", "Reconstruction", "paper_adam", "NonFiniteLossError"]

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
# The return type must be a class for the CLI to build a scheduler from a config (``lr_scheduler: {class_path:
# torch.optim.lr_scheduler.CosineAnnealingLR, init_args: {T_max: ...}}``); every torch scheduler is an LRScheduler.
SchedulerFactory = Callable[[Optimizer], LRScheduler]


def paper_adam(params: Iterable[nn.Parameter]) -> Optimizer:
    """The paper's optimiser: Adam, learning rate 2e-5, no weight decay (fused on CUDA)."""
    params = list(params)
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.Adam(params, lr=2e-5, fused=fused or None)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


class ColdDiffusion(L.LightningModule):
    """Cold Diffusion training: a restoration network, its objective and EMA, optimisation and validation.

    Args:
        degradation, network, prior, image_size, channels, sampler, sample_steps, sample_noise, channels_last: the
            :class:`~colddiff.pipeline.Pipeline`'s (the network meets :class:`~colddiff.nets.RestorationNetwork`).
        objective: what the network predicts and how it learns (:mod:`colddiff.objectives`, by ``class_path`` in a
            config); default: the degradation's.  ``loss`` (``"l1"``/``"l2"``) is the former choice: x0-prediction
            with that loss (older configs and checkpoints); give one of the two.
        optimizer, lr_scheduler: ``params -> Optimizer`` (default :func:`paper_adam`), ``optimizer -> scheduler``
            (optional, stepped every optimiser step).
        ema_decay, ema_every, ema_start: EMA of the weights, updated every ``ema_every`` optimiser steps from step
            ``ema_start`` (a plain copy before).
        ema_sigma_rel: EDM2's power-function EMA instead (Karras et al., arXiv 2312.02696, sec. 3.1): the average
            weighs step ``tau`` by ``tau^gamma``, its width ``sigma_rel`` a fixed fraction of the run however long
            (0.05-0.15 in their paper), updated every step from the first; give it with ``ema_decay: null``,
            ``ema_every: 1`` and ``ema_start: 0`` (refused otherwise: those settings would be ignored).
        val_sample_batches, val_sample_steps: validation batches whose reconstructions are sampled (0: none), and
            their sampling steps (``None``: every level).
        prior_fit_images: images used to fit the prior at the start of training when it is not fitted yet.
        compile: ``torch.compile`` the training network (``True`` or a mode such as ``"reduce-overhead"``).
        nonfinite_loss: ``"raise"`` stops at a NaN/inf loss naming the step; ``"skip"`` skips such batches.
        seed: seed of the validation degradations, so validation is comparable across epochs.
        train_noise: noise-augmented training (Inverse Heat Dissipation, arXiv 2206.13397, their sigma = 0.01): the
            network sees ``D(x0, t) + sigma_t * eps`` (a number or ``T + 1`` per-level values; ``None``: none).
    """

    def __init__(
        self,
        degradation: Degradation,
        network: nn.Module,
        prior: Prior | None = None,
        image_size: int = 32,
        channels: int = 3,
        loss: Literal["l1", "l2"] | None = None,
        optimizer: OptimizerFactory = paper_adam,
        lr_scheduler: SchedulerFactory | None = None,
        ema_decay: float | None = 0.995,
        ema_every: int = 10,
        ema_start: int = 2000,
        sampler: SamplerName = "improved",
        sample_steps: int | None = None,
        val_sample_batches: int = 1,
        val_sample_steps: int | None = None,
        prior_fit_images: int = 10_000,
        channels_last: bool = False,
        compile: bool | CompileMode = False,
        nonfinite_loss: Literal["raise", "skip"] = "raise",
        seed: int = 0,
        train_noise: float | list[float] | None = None,
        sample_noise: float | list[float] | None = None,
        objective: Objective | None = None,
        ema_sigma_rel: float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(degradation, Degradation) or not isinstance(network, nn.Module):
            raise TypeError(f"degradation must be a colddiff Degradation and network an nn.Module, got "
                            f"{type(degradation).__name__} and {type(network).__name__}")
        objective = resolve_objective(objective, loss, degradation)
        if nonfinite_loss not in ("raise", "skip"):
            raise ValueError(f"nonfinite_loss must be 'raise' or 'skip', got {nonfinite_loss!r}")
        check_positive_int(ema_every, "ema_every")
        if ema_sigma_rel is not None:
            self.ema_gamma: float | None = power_ema_gamma(ema_sigma_rel)
            if ema_decay is not None or ema_every != 1 or ema_start != 0:
                raise ValueError(f"ema_sigma_rel={ema_sigma_rel} (the power-function EMA) updates the average every "
                                 f"step from the first with its own decay: give ema_decay: null, ema_every: 1, "
                                 f"ema_start: 0, got ema_decay={ema_decay}, ema_every={ema_every}, "
                                 f"ema_start={ema_start}")
        else:
            self.ema_gamma = None
            if ema_decay is None or not 0.0 <= ema_decay < 1.0 or ema_start < 0:
                raise ValueError(f"ema_decay must lie in [0, 1) (or be null with ema_sigma_rel) and ema_start be "
                                 f">= 0, got {ema_decay}, {ema_start}")
        check_positive_int(prior_fit_images, "prior_fit_images")
        self.network = network
        #: the inference half (the EMA network, objective, degradation, prior, sampler defaults): the one holder of
        #: those parts (this module's ``ema_network``, ``degradation``, ``prior``, ``objective`` are its); the state
        #: dict keeps its layout (``ema_network.*``, ``degradation.*``, ...: see ``_PIPELINE_KEYS``)
        self.pipeline = Pipeline(
            degradation=degradation, network=copy.deepcopy(network).requires_grad_(False).eval(), objective=objective,
            prior=prior, image_size=image_size, channels=channels, sampler=sampler, sample_steps=sample_steps,
            sample_noise=sample_noise, channels_last=channels_last)
        self._register_state_dict_hook(_flat_pipeline_keys)
        self._register_load_state_dict_pre_hook(_nested_pipeline_keys, with_module=True)
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self.ema_decay, self.ema_every, self.ema_start = ema_decay, ema_every, ema_start
        self.val_sample_batches, self.val_sample_steps = val_sample_batches, val_sample_steps
        self.prior_fit_images, self.compile_network = prior_fit_images, compile
        self.nonfinite_loss, self.seed = nonfinite_loss, seed
        #: model-config groups a resume changed on purpose (set by train.py; see on_load_checkpoint)
        self.resume_changes: set[str] = set()
        self.register_buffer("train_noise_std", None if train_noise is None else
                             level_values(train_noise, degradation.num_steps, "train_noise").float(), persistent=False)
        self._compiled: list[Callable] = []  # compiled training network, kept out of the module tree
        self.register_buffer("_nonfinite_at", torch.tensor(-1, dtype=torch.long), persistent=False)
        self.register_buffer("skipped_batches", torch.tensor(0, dtype=torch.long))
        self.val_metrics = nn.ModuleDict({f"{m}_{kind}": (PeakSignalNoiseRatio if m == "psnr" else
                                                          StructuralSimilarityIndexMeasure)(data_range=1.0)
                                          for kind in ("direct", "sampled") for m in ("psnr", "ssim")})
        self._save_config(locals())
        if channels_last:  # at construction, so a reloaded model runs the trained model's kernels (issue 18)
            self.network.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------------------- the pipeline's parts
    @property
    def ema_network(self) -> nn.Module:
        """The EMA copy of the network: the pipeline's network."""
        return self.pipeline.network

    @property
    def degradation(self) -> Degradation:
        return self.pipeline.degradation

    @property
    def prior(self) -> Prior | None:
        return self.pipeline.prior

    @property
    def objective(self) -> Objective:
        return self.pipeline.objective

    @property
    def image_size(self) -> int:
        return self.pipeline.image_size

    @property
    def channels(self) -> int:
        return self.pipeline.channels

    @property
    def channels_last(self) -> bool:
        return self.pipeline.channels_last

    def set_prior_setting(self, name: str, value: Any) -> None:
        """Change an init argument of the prior after it was built (e.g. a bandwidth chosen on held-out images,
        :class:`colddiff.callbacks.SelectPriorSetting`): the prior's attribute, its recorded config (exports) and this
        model's hyper-parameters (checkpoints) all take the new value."""
        prior = self.prior
        config = getattr(prior, "_init_config", None)
        if prior is None or config is None or name not in config:
            raise ValueError(f"the prior ({type(prior).__name__}) has no recorded init argument {name!r}")
        setattr(prior, name, value)
        config[name] = value
        recorded = self.hparams.get("prior")
        if isinstance(recorded, dict) and isinstance(recorded.get("init_args"), dict):
            recorded["init_args"][name] = value

    # ---------------------------------------------------------------------------------------------- set-up
    def _save_config(self, arguments: dict[str, Any]) -> None:
        """Hyper-parameters as a config (class paths, plain values): LightningCLI's when built by it, else ours.
        The objective is recorded as resolved (``loss`` as ``None``), so a reload never depends on defaults."""
        if built_by_cli():
            self.save_hyperparameters()
        else:
            keys = set(inspect.signature(type(self).__init__).parameters) - {"self", "optimizer", "lr_scheduler"}
            self.save_hyperparameters({k: describe_or_mark(v) if isinstance(v, nn.Module) else v
                                       for k, v in arguments.items() if k in keys})
        self.hparams["objective"], self.hparams["loss"] = describe(self.objective), None
        self.hparams["sampler"] = self.pipeline.sampler  # a plain str: checkpoints unpickle no colddiff class

    def train(self, mode: bool = True) -> ColdDiffusion:
        """Lightning toggles train/eval mode on the whole module; the EMA copy always stays in eval mode."""
        super().train(mode)
        self.ema_network.eval()
        return self

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.compile_network and not self._compiled:
            self._compiled.append(compile_network(self.network, None if self.compile_network is True
                                                  else self.compile_network))

    def on_fit_start(self) -> None:
        # the EMA copy is in eval mode on purpose; Lightning warns about eval-mode modules when the fit loop starts
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
        if self.prior is not None and not self.prior.is_fitted:
            datamodule = getattr(self.trainer, "datamodule", None)
            # colddiff's data modules are prior sources; any other training data: its dataset (as augmented)
            source = datamodule if hasattr(datamodule, "prior_images") else \
                DatasetSource(fit_loop_dataloader(self.trainer).dataset)
            self.prior.to(self.device).fit_from(source, limit=self.prior_fit_images)

    # ------------------------------------------------------------------------ network (inference: the pipeline's)
    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The training network's raw output at ``(x_t, t)`` (what the objective reads): the pipeline's
        :meth:`~colddiff.pipeline.Pipeline.run_network` (channels-last when configured) with the training network
        (compiled with ``compile``)."""
        return self.pipeline.run_network(x_t, t, self._compiled[0] if self._compiled else self.network)

    def _delegate(self, method: Callable, *args: Any, **kwargs: Any) -> Any:
        """A pipeline method in the trainer's precision (bf16-mixed training validates in bf16)."""
        trainer = self._trainer
        with trainer.precision_plugin.forward_context() if trainer is not None else contextlib.nullcontext():
            return method(*args, **kwargs)

    def restore(self, x_t: Tensor, t: Tensor) -> Tensor:
        """``x0_hat = R(x_t, t)`` with the EMA weights: :meth:`colddiff.pipeline.Pipeline.restore`."""
        return self.pipeline.restore(x_t, t)

    def sample(self, x_t: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """:meth:`colddiff.pipeline.Pipeline.sample`."""
        return self._delegate(self.pipeline.sample, x_t, *args, **kwargs)

    def reconstruct(self, x0: Tensor, level: int | None = None, **kwargs: Any) -> Reconstruction:
        """:meth:`colddiff.pipeline.Pipeline.reconstruct`."""
        return self._delegate(self.pipeline.reconstruct, x0, level, **kwargs)

    def generate(self, n: int, *args: Any, **kwargs: Any) -> tuple[Tensor, PriorSample]:
        """:meth:`colddiff.pipeline.Pipeline.generate`."""
        return self._delegate(self.pipeline.generate, n, *args, **kwargs)

    # -------------------------------------------------------------------------------------------- training
    def loss(self, batch: Any, generator: torch.Generator | None = None, ema: bool = False) -> Tensor:
        """The objective on a batch, with the training network or (``ema=True``) the EMA copy."""
        x0, context = unpack_batch(batch)
        self.pipeline.check_batch(x0)
        network = self.pipeline.run_network if ema else self.forward
        return self.objective.training_loss(network, self.degradation, x0, context, generator, self.train_noise_std)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        loss, batch_size = self.loss(batch), unpack_batch(batch)[0].shape[0]
        if self.nonfinite_loss == "skip" and not bool(torch.isfinite(loss)):  # opt-in: one host sync per step
            self.skipped_batches += 1  # returning None makes Lightning skip backward and the update
            self.log("train/skipped_batches", self.skipped_batches.float(), batch_size=batch_size)
            return None
        if self.nonfinite_loss == "raise":  # the first non-finite step, recorded on the device (no sync)
            bad = (self._nonfinite_at < 0) & ~torch.isfinite(loss)
            self._nonfinite_at.copy_(torch.where(bad, self.global_step, self._nonfinite_at))
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        return loss

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # the EMA follows each optimiser step here (once per step under gradient accumulation), before any
        # on_train_batch_end callback runs, so a checkpoint saved at step s holds the EMA of step s
        if self.global_step % self.ema_every == 0:
            self.update_ema(copy_only=self.global_step < self.ema_start)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            self.check_finite()

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteLossError` if a non-finite loss was seen (one host synchronisation)."""
        at = int(self._nonfinite_at) if self.nonfinite_loss == "raise" else -1  # "skip" drops such batches
        if at >= 0:
            raise NonFiniteLossError(
                f"training loss became NaN or infinite at global step {at}; lower the learning rate, check the data, "
                "use precision 32-true, or set model.nonfinite_loss: skip to skip such batches")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        apply_resume_changes(self, checkpoint, getattr(self, "resume_changes", set()))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:  # never write weights a NaN step corrupted
        self.check_finite()

    def update_ema(self, copy_only: bool = False) -> None:
        """``ema = decay * ema + (1 - decay) * weights`` (or a plain copy), for parameters and buffers; with
        ``ema_sigma_rel`` the decay is the power function's at this step (:func:`colddiff.ema.power_ema_decay`)."""
        if self.ema_gamma is not None:
            decay = power_ema_decay(self.global_step + 1, self.ema_gamma)  # the optimiser step just taken: 1, 2, ...
        else:
            decay = 0.0 if copy_only else self.ema_decay
        ema_update(self.ema_network, self.network, decay)

    def configure_callbacks(self) -> list[L.Callback]:
        """Callbacks every colddiff training run needs: the RNG states go into checkpoints."""
        return [RNGState()]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.network.parameters())
        scheduler = self.scheduler_factory and {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": scheduler} if scheduler else optimizer

    # ------------------------------------------------------------------------------------------ validation
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x0, context = unpack_batch(batch)
        generator = torch.Generator(device=x0.device).manual_seed(self.seed * 1_000_003 + batch_idx)
        self.log("val/loss", self.loss(batch, generator, ema=True), prog_bar=True, batch_size=x0.shape[0],
                 sync_dist=True)
        if batch_idx < self.val_sample_batches:
            result = self.reconstruct(x0, generator=generator, steps=self.val_sample_steps, **context)
            for kind, images in (("direct", result.direct), ("sampled", result.sampled)):
                for metric in ("psnr", "ssim"):
                    self.val_metrics[f"{metric}_{kind}"](images, x0)
                    self.log(f"val/{metric}_{kind}", self.val_metrics[f"{metric}_{kind}"], batch_size=x0.shape[0])

    # ------------------------------------------------------------------------------------------- loading
    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | os.PathLike, map_location: Any = None, hparams_file: Any = None,
        strict: bool | None = None, weights_only: bool | None = None, allow: Sequence[str] = (), **overrides: Any,
    ) -> ColdDiffusion:
        """Rebuild the training module from a checkpoint, safely (for inference, ``Pipeline.load`` reads only the
        EMA weights).  ``torch.load(weights_only=True)`` only; the config builds only colddiff components, the torch
        optimisers and schedulers, or classes in ``allow`` (checked before any import); the weights are checked
        against the config before the model is built; ``overrides`` replace recorded arguments (e.g. a network
        whose class does not record its arguments)."""
        if weights_only is False or hparams_file is not None:
            raise ValueError("colddiff reads checkpoints with weights_only=True only (weights_only=False would "
                             "unpickle arbitrary objects and could run code from the file), and rebuilds a model "
                             "from the checkpoint's own config (hparams_file is not supported)")
        hparams, state, source = read_training_checkpoint(checkpoint_path, allow, overrides, ("network", "ema_network"))
        model = cls(**model_kwargs(hparams, overrides, allow, source))
        model.load_state_dict(state, strict=True if strict is None else strict)
        return model.to(map_location) if map_location is not None else model


#: the pipeline's state-dict groups and their names in a training checkpoint (the layout since the first release)
_PIPELINE_KEYS = {"pipeline.network.": "ema_network.", "pipeline.degradation.": "degradation.",
                  "pipeline.objective.": "objective.", "pipeline.prior.": "prior."}


def _flat_pipeline_keys(module: nn.Module, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """State-dict hook: ``pipeline.network.*`` is written as ``ema_network.*``, ``pipeline.degradation.*`` as
    ``degradation.*`` (and the objective's and prior's likewise), so checkpoints keep their layout."""
    for key in list(state):
        for nested, flat in _PIPELINE_KEYS.items():
            if key.startswith(prefix + nested):
                state[prefix + flat + key[len(prefix + nested):]] = state.pop(key)
                break


def _nested_pipeline_keys(module: nn.Module, state: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load-state-dict pre-hook: the inverse of :func:`_flat_pipeline_keys`."""
    for key in list(state):
        for nested, flat in _PIPELINE_KEYS.items():
            if key.startswith(prefix + flat):
                state[prefix + nested + key[len(prefix + flat):]] = state.pop(key)
                break
