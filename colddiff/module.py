"""The Lightning module: trains ``R(x_t, t) ≈ x0`` and samples with the paper's algorithms.

Training step: ``t ~ U{1..T}`` per sample, ``params = D.make_params(x0)``, ``x_t = D(x0, t, params)``,
loss ``|R(x_t, t) - x0|`` (L1, or L2).  An exponential moving average (EMA) of the network's weights (the paper:
decay 0.995 every 10 optimiser steps from step 2000, a plain copy before) is used for validation, sampling and
export.  Validation logs the loss and the PSNR/SSIM of direct (``R(x_T, T)``) and sampled reconstructions.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from colddiff._checks import check_positive_int, randn
from colddiff._config import describe_or_mark, model_kwargs
from colddiff._lightning import built_by_cli, fit_loop_dataloader
from colddiff.datasets import DatasetSource, unpack_batch
from colddiff.degradations.base import Degradation
from colddiff.io import load_checkpoint
from colddiff.priors import Prior, PriorSample
from colddiff.sampling import SAMPLERS, SamplerName, sample
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


@dataclass
class Reconstruction:
    """What :meth:`ColdDiffusion.reconstruct` returns; every image batch ``(B, C, H, W)`` is clamped to ``[0, 1]``.

    Attributes:
        x0: the clean images.
        degraded: ``x_t = D(x0, level)`` (as the degradation observes it, e.g. 8-bit for quantising operators).
        direct: the one-shot restoration ``R(x_t, level)``.
        sampled: the sampler's final image.
        params: the degradation's params used for ``degraded`` and by the samplers.
        level: the level ``t`` of ``degraded``.
    """

    x0: Tensor
    degraded: Tensor
    direct: Tensor
    sampled: Tensor
    params: dict[str, Tensor]
    level: int


class ColdDiffusion(L.LightningModule):
    """Cold Diffusion: a restoration network trained to invert a degradation, and its samplers.

    Args:
        degradation: the operator ``D`` (any :class:`~colddiff.degradations.Degradation`).
        network: ``R(x_t, t) -> x0_hat`` (e.g. :class:`~colddiff.nets.UNet`).
        prior: start-state distribution for unconditional generation (optional).
        image_size, channels: the training images (checked against every batch and the components).
        loss: ``"l1"`` (the paper) or ``"l2"``.
        optimizer: a callable ``params -> Optimizer`` (default :func:`paper_adam`).
        lr_scheduler: optional callable ``optimizer -> scheduler`` (stepped every optimiser step).
        ema_decay, ema_every, ema_start: EMA of the weights, updated every ``ema_every`` optimiser steps from step
            ``ema_start`` (a plain copy before).
        sampler: default sampler, ``"naive"``, ``"improved"`` or ``"direct"``.
        sample_steps: default number of sampling steps (``None``: every level).
        val_sample_batches: validation batches whose reconstructions are sampled (sampling costs ``T`` network
            calls; 0 disables).
        val_sample_steps: sampling steps during validation (``None``: every level).
        prior_fit_images: images used to fit the prior at the start of training when it is not fitted yet.
        channels_last: run the network in channels-last memory format.
        compile: ``torch.compile`` the network for training: ``True`` (default mode) or a mode such as
            ``"reduce-overhead"`` (CUDA graphs); falls back to eager execution where compilation is unavailable.
        nonfinite_loss: ``"raise"`` stops training at a NaN/inf loss with a message naming the step; ``"skip"``
            skips such batches (the update is dropped) and counts them in ``train/skipped_batches``.
        seed: seed of the validation degradations (levels, random params), so validation is comparable across
            epochs.
        train_noise: noise-augmented training (Inverse Heat Dissipation, Rissanen et al., arXiv 2206.13397: the
            forward process ``q(u_k | u_0) = N(F(t_k) u_0, sigma^2 I)``, their sigma = 0.01): the network sees
            ``D(x0, t) + sigma_t * eps``.  A number (the same ``sigma`` at every level ``t >= 1``) or ``T + 1``
            per-level values; ``None``: none (the paper's deterministic training).
        sample_noise: default sampling noise ``delta`` of the samplers (see :mod:`colddiff.sampling`): a number or
            ``T + 1`` per-level values; ``None``: deterministic sampling.
    """

    def __init__(
        self,
        degradation: Degradation,
        network: nn.Module,
        prior: Prior | None = None,
        image_size: int = 32,
        channels: int = 3,
        loss: Literal["l1", "l2"] = "l1",
        optimizer: OptimizerFactory = paper_adam,
        lr_scheduler: SchedulerFactory | None = None,
        ema_decay: float = 0.995,
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
    ) -> None:
        super().__init__()
        if not isinstance(degradation, Degradation):
            raise TypeError(f"degradation must be a colddiff Degradation, got {type(degradation).__name__}")
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be an nn.Module, got {type(network).__name__}")
        if prior is not None and not isinstance(prior, Prior):
            raise TypeError(f"prior must be a colddiff Prior or None, got {type(prior).__name__}")
        if loss not in ("l1", "l2"):
            raise ValueError(f"loss must be 'l1' or 'l2', got {loss!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if nonfinite_loss not in ("raise", "skip"):
            raise ValueError(f"nonfinite_loss must be 'raise' or 'skip', got {nonfinite_loss!r}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}")
        check_positive_int(ema_every, "ema_every")
        if ema_start < 0:
            raise ValueError(f"ema_start must be >= 0, got {ema_start}")
        check_positive_int(image_size, "image_size")
        check_positive_int(channels, "channels")
        check_positive_int(prior_fit_images, "prior_fit_images")
        self._check_components(degradation, network, image_size, channels)

        self.degradation = degradation
        self.network = network
        self.ema_network = copy.deepcopy(network).requires_grad_(False).eval()
        self.prior = prior
        self.image_size, self.channels = image_size, channels
        self.loss_name = loss
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self.ema_decay, self.ema_every, self.ema_start = ema_decay, ema_every, ema_start
        self.sampler, self.sample_steps = sampler, sample_steps
        self.val_sample_batches, self.val_sample_steps = val_sample_batches, val_sample_steps
        self.prior_fit_images = prior_fit_images
        self.channels_last, self.compile_network = channels_last, compile
        self.nonfinite_loss, self.seed = nonfinite_loss, seed
        #: model-config groups a resume changed on purpose (set by train.py; see on_load_checkpoint)
        self.resume_changes: set[str] = set()
        self.register_buffer("train_noise_std", None if train_noise is None else
                             level_values(train_noise, degradation.num_steps, "train_noise").float(), persistent=False)
        self.sample_noise = None if sample_noise is None else \
            level_values(sample_noise, degradation.num_steps, "sample_noise").tolist()
        self._compiled: list[Callable] = []  # compiled networks are kept out of the module tree and the state dict
        self._compiled_ema: list[Callable] = []
        self.register_buffer("_nonfinite_at", torch.tensor(-1, dtype=torch.long), persistent=False)
        self.register_buffer("skipped_batches", torch.tensor(0, dtype=torch.long))
        self.val_metrics = nn.ModuleDict({
            "psnr_direct": PeakSignalNoiseRatio(data_range=1.0),
            "ssim_direct": StructuralSimilarityIndexMeasure(data_range=1.0),
            "psnr_sampled": PeakSignalNoiseRatio(data_range=1.0),
            "ssim_sampled": StructuralSimilarityIndexMeasure(data_range=1.0),
        })
        self._save_config(locals())
        self._apply_memory_format()

    # ---------------------------------------------------------------------------------------------- set-up
    @staticmethod
    def _check_components(degradation: Degradation, network: nn.Module, image_size: int, channels: int) -> None:
        if degradation.channels is not None and degradation.channels != channels:
            raise ValueError(f"the degradation expects {degradation.channels} channels but channels={channels}")
        degradation.check_image_size(image_size, image_size)
        check = getattr(network, "check_input_size", None)
        if check is not None:
            check(image_size, image_size)
        for name in ("in_channels", "out_channels"):
            value = getattr(network, name, None)
            if value is not None and value != channels:
                raise ValueError(f"the network's {name} is {value} but the images have channels={channels}")

    def _save_config(self, arguments: dict[str, Any]) -> None:
        """Hyper-parameters as a config (class paths, plain values): LightningCLI's when built by it, else ours."""
        if built_by_cli():
            self.save_hyperparameters()
            return
        config: dict[str, Any] = {}
        parameters = inspect.signature(type(self).__init__).parameters
        for key, value in arguments.items():
            if key not in parameters or key in ("self", "optimizer", "lr_scheduler"):
                continue
            config[key] = describe_or_mark(value) if isinstance(value, nn.Module) else value
        self.save_hyperparameters(config)

    def train(self, mode: bool = True) -> ColdDiffusion:
        """Lightning toggles train/eval mode on the whole module; the EMA copy always stays in eval mode."""
        super().train(mode)
        self.ema_network.eval()
        return self

    def _apply_memory_format(self) -> None:
        """Lay the weights out channels-last when ``channels_last`` is set, at construction, so that a trained
        model and the same model reloaded from its checkpoint or export run the same convolution kernels (loading
        copies into the existing tensors and keeps their layout).  Channels-last and contiguous weights give results
        that differ in the last bits, which a user's "same checkpoint, same seed, same images" cannot tolerate."""
        if self.channels_last:
            self.network.to(memory_format=torch.channels_last)
            self.ema_network.to(memory_format=torch.channels_last)

    def configure_model(self) -> None:
        self._apply_memory_format()  # idempotent: the layout was set at construction

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.compile_network and not self._compiled:
            mode = None if self.compile_network is True else self.compile_network
            self._compiled.append(_compile(self.network, mode))

    def on_fit_start(self) -> None:
        # the EMA copy is in eval mode on purpose; Lightning warns about eval-mode modules when the fit loop starts
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
        if self.prior is not None and not self.prior.is_fitted:
            datamodule = getattr(self.trainer, "datamodule", None)
            # colddiff's data modules are prior sources; any other training data: its dataset (as augmented)
            source = datamodule if hasattr(datamodule, "prior_images") else \
                DatasetSource(fit_loop_dataloader(self.trainer).dataset)
            self.prior.to(self.device).fit_from(source, limit=self.prior_fit_images)

    # --------------------------------------------------------------------------------------------- network
    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        """``R(x_t, t)`` with the training weights."""
        return self.network(x_t, t)

    def restore(self, x_t: Tensor, t: Tensor) -> Tensor:
        """``R(x_t, t)`` with the EMA weights (used by validation, sampling and export)."""
        return self._run(self.ema_network, self._compiled_ema, x_t, t)

    def _run(self, network: nn.Module, compiled: list[Callable], x_t: Tensor, t: Tensor) -> Tensor:
        """A network call in the configured memory format, through its compiled version when there is one."""
        if self.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        return (compiled[0] if compiled else network)(x_t, t)

    def compile_for_sampling(self, mode: CompileMode | None = "reduce-overhead") -> None:
        """``torch.compile`` the EMA network used by :meth:`restore` (sampling has fixed shapes: with
        ``reduce-overhead`` the T network calls replay CUDA graphs).  Falls back to eager where unavailable."""
        self._compiled_ema[:] = [_compile(self.ema_network, mode)]

    def _check_batch(self, x0: Tensor) -> None:
        expected = (self.channels, self.image_size, self.image_size)
        if x0.ndim != 4 or tuple(x0.shape[1:]) != expected:
            raise ValueError(
                f"batch images have shape {tuple(x0.shape)}, but the model is configured for (B, {expected[0]}, "
                f"{expected[1]}, {expected[2]}) (image_size={self.image_size}, channels={self.channels}); check the "
                "data module's image_size and channels"
            )

    # -------------------------------------------------------------------------------------------- training
    def degrade_batch(self, x0: Tensor, context: Mapping[str, Tensor],
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``t ~ U{1..T}`` per sample, fresh params, and ``x_t = D(x0, t, params)`` as the network is fed it
        (:meth:`~colddiff.degradations.Degradation.degrade_input`: 8-bit for quantising operators), plus
        ``sigma_t * eps`` with ``train_noise``."""
        t = torch.randint(1, self.degradation.num_steps + 1, (x0.shape[0],), device=x0.device, generator=generator)
        params = self.degradation.make_params(x0, generator, **context)
        x_t = self.degradation.degrade_input(x0, t, params)
        if self.train_noise_std is not None:
            sigma = self.train_noise_std.index_select(0, t).to(x_t.dtype)[:, None, None, None]
            x_t = x_t + sigma * randn(tuple(x_t.shape), generator, x_t)
        return x_t, t, params

    def loss(self, batch: Any, generator: torch.Generator | None = None, ema: bool = False) -> Tensor:
        """The training objective on a batch: ``|R(D(x0, t), t) - x0|`` (L1 or L2), with the training network or
        (``ema=True``) the EMA copy."""
        x0, context = unpack_batch(batch)
        self._check_batch(x0)
        x_t, t, _ = self.degrade_batch(x0, context, generator)
        x0_hat = (self.restore(x_t, t) if ema else self._run(self.network, self._compiled, x_t, t)).float()
        return F.l1_loss(x0_hat, x0) if self.loss_name == "l1" else F.mse_loss(x0_hat, x0)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        loss = self.loss(batch)
        batch_size = unpack_batch(batch)[0].shape[0]
        if self.nonfinite_loss == "skip":
            # opt-in: one host synchronisation per step; returning None makes Lightning skip backward and the update
            if not bool(torch.isfinite(loss)):
                self.skipped_batches += 1
                self.log("train/skipped_batches", self.skipped_batches.float(), batch_size=batch_size)
                return None
        else:
            # record the first non-finite step on the device; checked at log intervals and before checkpoints
            bad = (self._nonfinite_at < 0) & ~torch.isfinite(loss)
            self._nonfinite_at.copy_(torch.where(bad, torch.full_like(self._nonfinite_at, self.global_step),
                                                 self._nonfinite_at))
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        return loss

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # the EMA follows each optimiser step here (once per step under gradient accumulation), before any
        # on_train_batch_end callback runs, so a checkpoint saved at step s holds the EMA of step s
        step = self.global_step
        if step % self.ema_every == 0:
            self.update_ema(copy_only=step < self.ema_start)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            self.check_finite()

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteLossError` if a non-finite loss was seen (one host synchronisation)."""
        if self.nonfinite_loss != "raise":  # "skip" mode drops such batches before they reach the weights
            return
        at = int(self._nonfinite_at)
        if at >= 0:
            raise NonFiniteLossError(
                f"training loss became NaN or infinite at global step {at}; lower the learning rate, check the data, "
                "use precision 32-true, or set model.nonfinite_loss: skip to skip such batches"
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """On a resume that changed the model config (``train.py --resume_with_config_changes true``), the new config
        is the one used: the changed parts' buffers (degradation schedules, the prior's fit) and the optimiser's
        settings replace the checkpoint's; a changed prior is refitted when training starts."""
        changed = getattr(self, "resume_changes", set())
        state = checkpoint.get("state_dict", {})
        for group in ("degradation", "prior"):
            if group not in changed:
                continue
            for key in [k for k in state if k.startswith(f"{group}.")]:
                del state[key]
            part = getattr(self, group)
            for key, value in (part.state_dict() if part is not None else {}).items():
                state[f"{group}.{key}"] = value.detach().clone()
        if "optimizer" in changed and checkpoint.get("optimizer_states"):
            fresh = self.optimizer_factory(self.network.parameters()).param_groups
            for saved_group, new_group in zip(checkpoint["optimizer_states"][0]["param_groups"], fresh):
                saved_group.update({k: v for k, v in new_group.items() if k != "params"})

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_finite()  # never write weights that a NaN step has corrupted

    @torch.no_grad()
    def update_ema(self, copy_only: bool = False) -> None:
        """``ema = decay * ema + (1 - decay) * weights`` (or a plain copy), for parameters and buffers."""
        ema = list(self.ema_network.parameters())
        live = list(self.network.parameters())
        if copy_only:
            torch._foreach_copy_(ema, live)
        else:
            torch._foreach_lerp_(ema, live, 1.0 - self.ema_decay)
        for ema_buffer, buffer in zip(self.ema_network.buffers(), self.network.buffers()):
            ema_buffer.copy_(buffer)

    def configure_callbacks(self) -> list[L.Callback]:
        """Callbacks every colddiff training run needs: the RNG states go into checkpoints."""
        from colddiff.checkpoint import RNGState

        return [RNGState()]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.network.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}

    # ------------------------------------------------------------------------------------------ validation
    def _validation_generator(self, batch_idx: int, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x0, context = unpack_batch(batch)
        batch_size = x0.shape[0]
        generator = self._validation_generator(batch_idx, x0.device)
        loss = self.loss(batch, generator, ema=True)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=True)
        if batch_idx < self.val_sample_batches:
            result = self.reconstruct(x0, generator=generator, steps=self.val_sample_steps, **context)
            for kind, images in (("direct", result.direct), ("sampled", result.sampled)):
                for metric in ("psnr", "ssim"):
                    name = f"{metric}_{kind}"
                    self.val_metrics[name](images, x0)
                    self.log(f"val/{name}", self.val_metrics[name], batch_size=batch_size)

    # ------------------------------------------------------------------------------------------- sampling
    def _precision_context(self) -> contextlib.AbstractContextManager:
        trainer = self._trainer
        if trainer is not None:
            return trainer.precision_plugin.forward_context()
        return contextlib.nullcontext()

    @torch.no_grad()
    def sample(
        self,
        x_t: Tensor,
        t: int | None = None,
        params: Mapping[str, Tensor] | None = None,
        sampler: SamplerName | None = None,
        steps: int | Sequence[int] | None = None,
        callback: Callable[[dict], None] | None = None,
        generator: torch.Generator | None = None,
        noise: float | Sequence[float] | None = None,
        **context: Tensor,
    ) -> Tensor:
        """Restore ``x_t`` (at level ``t``, default ``T``) with the chosen sampler and the EMA weights.

        Args:
            x_t: degraded images in ``[0, 1]``.
            t: their level.
            params: the degradation's params (drawn with ``generator`` and ``context`` if ``None``).
            sampler: ``"naive"``, ``"improved"`` or ``"direct"`` (default: the module's ``sampler``).
            steps: levels to visit (an int for evenly spaced skipping; default: the module's ``sample_steps``;
                the direct sampler ignores it).
            callback: per-step callback (see :mod:`colddiff.sampling`).
            generator: random generator for params and sampling noise.
            noise: sampling noise ``delta`` (default: the module's ``sample_noise``; see :mod:`colddiff.sampling`).
            context: degradation context, e.g. ``partner=`` for :class:`~colddiff.degradations.Mix`.
        """
        sampler = sampler or self.sampler
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if params is None and context:
            params = self.degradation.make_params(x_t, generator, **context)
        steps = self.sample_steps if steps is None else steps
        noise = self.sample_noise if noise is None else noise
        with self._precision_context():
            return sample(sampler, self.restore, self.degradation, x_t, t, params, steps, callback, generator, noise)

    @torch.no_grad()
    def reconstruct(
        self,
        x0: Tensor,
        level: int | None = None,
        *,
        sampler: SamplerName | None = None,
        steps: int | Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        params: Mapping[str, Tensor] | None = None,
        callback: Callable[[dict], None] | None = None,
        noise: float | Sequence[float] | None = None,
        **context: Tensor,
    ) -> Reconstruction:
        """Degrade clean images to a level and restore them: the one-shot restoration and the sampler's.

        This is the one recipe behind validation, the training grids, ``sample.py reconstruct`` and the restoration
        evaluation: draw the degradation's params (with ``generator`` and ``context``), ``x_t = D(x0, level)``,
        ``direct = R(x_t, level)``, ``sampled`` = the sampler from ``x_t`` with the same params.

        Args:
            x0: clean images in ``[0, 1]``, on the model's device.
            level: the level to degrade to (default ``T``).
            sampler: ``"naive"``, ``"improved"`` or ``"direct"`` (default: the module's ``sampler``).
            steps: levels the sampler visits (default: the module's ``sample_steps``).
            generator: random generator for the params.
            params: use these params instead of drawing them.
            callback: per-step callback of the sampler (see :mod:`colddiff.sampling`).
            noise: sampling noise (default: the module's ``sample_noise``).
            context: degradation context (the names in ``degradation.context_keys``, e.g. ``partner=`` for
                :class:`~colddiff.degradations.Mix`; a data module's dict batch provides them).

        Shape:
            ``x0``: ``(B, C, H, W)``; every image batch of the result has the same shape.
        """
        degradation = self.degradation
        level = degradation.num_steps if level is None else level
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= degradation.num_steps:
            raise ValueError(f"level must be an int in [0, {degradation.num_steps}] (num_steps), got {level!r}")
        x0 = degradation.check_input(x0)
        if params is None:
            params = degradation.make_params(x0, generator, **context)
        params = {k: v.to(x0.device) for k, v in params.items()}
        x_t = degradation(x0, level, params)
        direct = self.sample(x_t, level, params, sampler="direct")
        sampled = self.sample(x_t, level, params, sampler=sampler, steps=steps, callback=callback,
                              generator=generator, noise=noise)
        return Reconstruction(x0=x0, degraded=x_t.clamp(0, 1), direct=direct.clamp(0, 1),
                              sampled=sampled.clamp(0, 1), params=params, level=level)

    @torch.no_grad()
    def generate(
        self,
        n: int,
        generator: torch.Generator | None = None,
        sampler: SamplerName | None = None,
        steps: int | Sequence[int] | None = None,
        callback: Callable[[dict], None] | None = None,
        batch_size: int | None = None,
        noise: float | Sequence[float] | None = None,
    ) -> tuple[Tensor, PriorSample]:
        """Unconditional generation: draw ``n`` start states from the prior and sample.

        The ``n`` start states (and any params) are drawn in one draw before sampling in batches of ``batch_size``
        (default: all at once), and every image draws its sampling ``noise`` (default: the module's
        ``sample_noise``) from its own generator, so the seed of ``generator`` alone fixes the images, whatever the
        batch size.

        Returns:
            The generated images (clamped to ``[0, 1]``) and the prior draw (start states, params, provenance).
        """
        if self.prior is None:
            raise RuntimeError(
                f"this model has no generation prior (its degradation is {type(self.degradation).__name__}); "
                "generation needs one, e.g. ChannelMeanPrior for GaussianBlur(final_mean=True)"
            )
        check_positive_int(n, "n")
        batch_size = n if batch_size is None else check_positive_int(batch_size, "batch_size")
        start = self.prior.sample(n, (self.channels, self.image_size, self.image_size), generator)
        x_T = start.x_T.to(self.device)
        params = {k: v.to(self.device) for k, v in start.params.items()}
        if not params and self.degradation.param_keys:
            params = self.degradation.make_params(x_T, generator)
        # sampling noise: one generator per image, seeded in one draw, so each image's noise is its own
        seeds = torch.randint(2**62, (n,), generator=generator, device=generator.device if generator else "cpu")
        images = []
        for i in range(0, n, batch_size):
            noise_generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds[i:i + batch_size]]
            images.append(self.sample(x_T[i:i + batch_size], params={k: v[i:i + batch_size] for k, v in params.items()},
                                      sampler=sampler, steps=steps, callback=callback, generator=noise_generators,
                                      noise=noise).clamp(0, 1))
        return torch.cat(images), start

    # ------------------------------------------------------------------------------------------- loading
    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | os.PathLike,
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        allow: Sequence[str] = (),
        **overrides: Any,
    ) -> ColdDiffusion:
        """Rebuild a model from a training checkpoint, safely.

        The file is read with ``torch.load(weights_only=True)`` (``weights_only=False`` is refused: colddiff never
        unpickles), and the components named in its config are built only if they are colddiff components, the
        allowed torch optimisers and schedulers, or classes named in ``allow`` (checked on the class path before
        anything is imported).  ``overrides`` replace components the checkpoint could not record (networks built in
        Python from classes that do not record their arguments) or that you want to supply yourself.

        Args:
            checkpoint_path: a ``.ckpt`` file written by training.
            map_location: device to move the model to (default: CPU).
            hparams_file: not supported (the config is always the checkpoint's own).
            strict: strict ``state_dict`` loading (default ``True``).
            weights_only: must be ``None`` or ``True``.
            allow: extra class paths you trust to be built from this file (e.g. your own network class).
            overrides: constructor arguments that replace the recorded ones.
        """
        if weights_only is False:
            raise ValueError("colddiff reads checkpoints with weights_only=True only: weights_only=False would "
                             "unpickle arbitrary objects (and could run code from the file)")
        if hparams_file is not None:
            raise ValueError("hparams_file is not supported: colddiff rebuilds a model from its checkpoint's config")
        checkpoint = load_checkpoint(checkpoint_path, map_location="cpu")
        hparams = checkpoint.get("hyper_parameters")
        if not isinstance(hparams, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
            raise ValueError(f"{str(checkpoint_path)!r} is not a colddiff training checkpoint "
                             "(no state_dict/hyper_parameters)")
        model = cls(**model_kwargs(hparams, overrides, allow))
        model.load_state_dict(checkpoint["state_dict"], strict=True if strict is None else strict)
        model.check_weights_finite(checkpoint_path)
        return model.to(map_location) if map_location is not None else model

    def check_weights_finite(self, source: Any = "the model") -> None:
        """Raise ``ValueError`` if a weight or buffer holds NaN or infinite values (a corrupt file, or one saved
        from a diverged run), naming the first such tensor: such a model would write NaN images silently."""
        for name, tensor in self.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{str(source)!r}: {name} holds NaN or infinite values; the model file is corrupt "
                                 "or was saved from a diverged run")


def _compile(network: nn.Module, mode: str | None = None) -> Callable:
    """``torch.compile`` with a fallback to eager execution where it is unavailable."""
    try:
        return torch.compile(network, mode=mode)
    except Exception as err:  # noqa: BLE001 - platform-dependent failures (no compiler, unsupported Python)
        warnings.warn(f"torch.compile is unavailable ({err}); running the network eagerly", stacklevel=2)
        return network

