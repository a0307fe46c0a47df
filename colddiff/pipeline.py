"""Torch-only inference: a trained restorer with everything needed to use it.

A :class:`Pipeline` holds the network (the EMA weights of training), its :mod:`objective <colddiff.objectives>`
(which turns the network's output into ``x0_hat``), the degradation, the start-state prior and the sampler
defaults.  It restores (:meth:`~Pipeline.restore`, and given images each at its own level:
:meth:`~Pipeline.restore_at_levels`), samples, reconstructs and generates.  It saves and loads itself as an
*export* and loads Lightning training checkpoints (their EMA weights) through :mod:`colddiff.files`, which owns the
file formats and their checks.

This module imports no Lightning: ``pip install colddiff`` users, the sampling and evaluation command lines, the
evaluation functions, level estimation and exports all run through it.  The Lightning module
(:class:`colddiff.module.ColdDiffusion`) trains the network and hands its EMA copy to a pipeline.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from colddiff._checks import check_positive_int
from colddiff._config import ModelFileError
from colddiff.degradations.base import Degradation
from colddiff.estimation import LevelEstimate, sample_at_levels
from colddiff.files import (  # the file names that lived here are re-exported for compatibility
    CONFIG,
    TRAINING_ONLY,
    WEIGHTS,
    build_checked,
    check_file_sampler,
    check_model_config,
    check_network_weights,
    check_state,
    inference_state,
    load_pipeline,
    model_config,
    pipeline_kwargs,
    read_training_checkpoint,
    write_export,
)
from colddiff.objectives import Objective, default_objective
from colddiff.priors import Prior, PriorSample
from colddiff.sampling import (
    Denoiser,
    Prediction,
    SamplerName,
    check_sampler_name,
    sample,
    sampler_info,
    timesteps,
)
from colddiff.schedules import level_values

__all__ = ["Pipeline", "Reconstruction", "as_pipeline", "check_network", "check_prior", "compile_network",
           # re-exported from colddiff.files
           "check_network_weights", "check_file_sampler", "check_model_config", "check_state", "build_checked",
           "pipeline_kwargs", "read_training_checkpoint", "WEIGHTS", "CONFIG", "TRAINING_ONLY"]


@dataclass
class Reconstruction:
    """What :meth:`Pipeline.reconstruct` returns; every image batch ``(B, C, H, W)`` is clamped to ``[0, 1]``.

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


def check_network(network: Any, image_size: int, channels: int) -> None:
    """Check a network against :class:`colddiff.nets.RestorationNetwork`: an ``nn.Module`` that declares
    ``in_channels`` and ``image_size`` (``None``: any size), matching the data, and accepts the size
    (``check_input_size``)."""
    if not isinstance(network, nn.Module):
        raise TypeError(f"network must be an nn.Module, got {type(network).__name__}")
    missing = [f"{name} ({kind})" for name, kind, ok in (
        ("in_channels", "an int", isinstance(getattr(network, "in_channels", None), int)),
        ("image_size", "an int, or None for any size", hasattr(network, "image_size")
         and (network.image_size is None or isinstance(network.image_size, int))))
        if not ok]
    if missing:
        raise TypeError(
            f"network {type(network).__name__} does not declare {' and '.join(missing)}: attributes of the "
            "RestorationNetwork contract (colddiff.nets.RestorationNetwork), the channels it takes and the image size "
            "it was built for; set them in its __init__")
    check = getattr(network, "check_input_size", None)
    if check is not None:
        check(image_size, image_size)
    for name in ("in_channels", "out_channels"):
        value = getattr(network, name, None)
        if value is not None and value != channels:
            raise ValueError(f"the network's {name} is {value} but the images have channels={channels}")


class Pipeline(nn.Module):
    """A trained restorer ready for inference: ``restore``, ``sample``, ``reconstruct``, ``generate``, ``save``.

    Args:
        degradation: the operator ``D``.
        network: ``R(x_t, t)``; its output is read by ``objective`` (``x0``, ε, v or a velocity).
        objective: what the network predicts (default: the degradation's, see
            :func:`colddiff.objectives.default_objective`).
        prior: start-state distribution for :meth:`generate` (optional); the params it draws must be the ones the
            degradation takes (checked here).
        image_size, channels: the images the network was trained on.
        sampler: default sampler, a registered name (``"naive"``, ``"improved"``, ``"direct"``, ...) or an import
            path (see :func:`colddiff.sampling.get_sampler`).
        sample_steps: default levels to visit (``None``: every level; an int: evenly spaced).
        sample_noise: default sampling noise ``delta`` (a number or ``T + 1`` values; ``None``: none).
        channels_last: run the network in channels-last memory format (its weights are laid out so here).
    """

    def __init__(
        self,
        degradation: Degradation,
        network: nn.Module,
        objective: Objective | None = None,
        prior: Prior | None = None,
        image_size: int = 32,
        channels: int = 3,
        sampler: SamplerName = "improved",
        sample_steps: int | None = None,
        sample_noise: float | Sequence[float] | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(degradation, Degradation):
            raise TypeError(f"degradation must be a colddiff Degradation, got {type(degradation).__name__}")
        check_positive_int(image_size, "image_size")
        check_positive_int(channels, "channels")
        objective = default_objective(degradation) if objective is None else objective
        if not isinstance(objective, Objective):
            raise TypeError(f"objective must be a colddiff.objectives.Objective or None, got "
                            f"{type(objective).__name__}")
        objective.check_degradation(degradation)
        if prior is not None:
            if not isinstance(prior, Prior):
                raise TypeError(f"prior must be a colddiff Prior or None, got {type(prior).__name__}")
            check_prior(prior, degradation)
            prior.bind(degradation)
        if degradation.channels is not None and degradation.channels != channels:
            raise ValueError(f"the degradation expects {degradation.channels} channels but channels={channels}")
        degradation.check_image_size(image_size, image_size)
        check_network(network, image_size, channels)
        self.degradation, self.network, self.objective, self.prior = degradation, network, objective, prior
        self.image_size, self.channels = image_size, channels
        self.sampler = str(check_sampler_name(sampler))
        self.sample_steps = sample_steps
        self.sample_noise = None if sample_noise is None else \
            level_values(sample_noise, degradation.num_steps, "sample_noise").tolist()
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.network.to(memory_format=torch.channels_last)
        self._compiled: list[Callable] = []  # kept out of the module tree and the state dict

    def check_batch(self, x0: Tensor) -> None:
        """Raise ``ValueError`` unless ``x0`` is a batch of the pipeline's images, ``(B, channels, size, size)``."""
        expected = (self.channels, self.image_size, self.image_size)
        if not isinstance(x0, Tensor) or x0.ndim != 4 or tuple(x0.shape[1:]) != expected:
            got = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
            raise ValueError(
                f"batch images have shape {got}, but the model is configured for (B, {expected[0]}, {expected[1]}, "
                f"{expected[2]}) (image_size={self.image_size}, channels={self.channels}); check the data module's "
                "image_size and channels")

    @property
    def device(self) -> torch.device:
        """The device of the network's weights."""
        return next(iter(self.network.parameters()), torch.empty(0)).device

    # ---------------------------------------------------------------------------------------- network
    def run_network(self, x_t: Tensor, t: Tensor, network: Callable[[Tensor, Tensor], Tensor] | None = None
                    ) -> Tensor:
        """The raw network output at ``(x_t, t)`` (channels-last and compiled when configured); ``network``: call
        that one instead (the training module's live network), with the same input layout."""
        if self.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        if network is None:
            network = self._compiled[0] if self._compiled else self.network
        return network(x_t, t)

    def restore(self, x_t: Tensor, t: Tensor) -> Tensor:
        """``x0_hat = R(x_t, t)``: the network's output read by the objective (clipped to ``[0, 1]`` when the
        objective says so).  Samplers receive :meth:`predict` (as a :class:`~colddiff.sampling.Denoiser`), whose
        ``x0`` is this; replace :meth:`predict` to hand them another restorer.

        Shape:
            ``x_t``: ``(B, C, H, W)``; ``t``: ``(B,)`` long; output: ``(B, C, H, W)``.
        """
        return self.objective.restore(self.run_network(x_t, t), x_t, t, self.degradation)

    def predict(self, x_t: Tensor, t: Tensor) -> Prediction:
        """One network call read by the objective: ``x0_hat`` (as :meth:`restore`), the noise estimate and, for a
        network that predicts the next level (IHDM), ``D(x0, t - 1)`` (:class:`colddiff.sampling.Prediction`)."""
        x0_hat, noise, previous = self.objective.predict(self.run_network(x_t, t), x_t, t, self.degradation)
        return Prediction(x0_hat, noise, previous, noise_is_output=self.objective.predicts_noise)

    def compile_for_sampling(self, mode: str | None = "reduce-overhead") -> None:
        """``torch.compile`` the network for sampling (fixed shapes: with ``reduce-overhead`` the network calls
        replay CUDA graphs).  Falls back to eager execution where compilation is unavailable."""
        self._compiled[:] = [compile_network(self.network, mode)]

    # --------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(
        self,
        x_t: Tensor,
        t: int | None = None,
        params: Mapping[str, Tensor] | None = None,
        sampler: SamplerName | None = None,
        steps: int | Sequence[int] | None = None,
        callback: Callable[[dict], None] | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        noise: float | Sequence[float] | None = None,
        **context: Tensor,
    ) -> Tensor:
        """Restore ``x_t`` (at level ``t``, default ``T``) with a sampler.

        Args:
            x_t: degraded images in ``[0, 1]``.
            t: their level.
            params: the degradation's params (drawn with ``generator`` and ``context`` if ``None``).
            sampler: a sampler name (default: the pipeline's ``sampler``).
            steps: levels to visit (an int for evenly spaced skipping; default: ``sample_steps``).
            callback: per-step callback (see :mod:`colddiff.sampling`).
            generator: random generator for params and sampling noise (or one per image, for the noise).
            noise: sampling noise ``delta`` (default: ``sample_noise``).
            context: degradation context, e.g. ``partner=`` for :class:`~colddiff.degradations.Mix`.
        """
        info = sampler_info(sampler or self.sampler)
        if params is None and context:
            params = self.degradation.make_params(x_t, generator, **context)
        # the model's defaults go to the samplers that take them (the direct one has no steps, an ODE solver no noise);
        # what the caller gives is passed on, and refused by a sampler that cannot use it
        steps = self.sample_steps if steps is None and info.takes_steps else steps
        noise = self.sample_noise if noise is None and info.takes_noise else noise
        return sample(info.fn, Denoiser(self.predict), self.degradation, x_t, t, params, steps, callback, generator,
                      noise)

    @torch.no_grad()
    def restore_at_levels(
        self,
        y: Tensor,
        levels: Tensor | Sequence[int] | LevelEstimate,
        *,
        sampler: SamplerName | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        noise: float | Sequence[float] | None = None,
        params: Mapping[str, Tensor] | None = None,
        restore: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> Tensor:
        """Restore given images, each from its own level, with the pipeline's sampler defaults (as :meth:`sample`:
        ``sampler``, ``sample_steps`` and ``sample_noise`` where the sampler takes them).

        Args:
            y: the degraded images in ``[0, 1]``.
            levels: one level per image, or the :func:`~colddiff.estimation.estimate_level` result that found them
                (with ``keep_restorations=True`` its restorations answer each sampler's first network call: the
                search already computed ``R(y, level)``).
            sampler, noise, generator: as :meth:`sample`.
            steps: evenly spaced steps per run (default ``sample_steps``; fewer for images at lower levels).
            params: the degradation's params, when known.
            restore: the restorer to use (default: the pipeline's own, as :meth:`sample` uses it); e.g.
                :func:`colddiff.tiling.any_size` over :meth:`restore` for images of other sizes.  It must be the
                restorer that computed an estimate's restorations.

        Shape:
            ``y``: ``(B, C, H, W)``; ``levels``: ``(B,)``; output: ``(B, C, H, W)``.
        """
        sampler = sampler or self.sampler
        info = sampler_info(sampler)
        restorations = None
        if isinstance(levels, LevelEstimate):
            levels, restorations = levels.levels, levels.restorations
        steps = self.sample_steps if steps is None and info.takes_steps else steps
        noise = self.sample_noise if noise is None and info.takes_noise else noise
        return sample_at_levels(sampler, Denoiser(self.predict) if restore is None else restore, self.degradation, y,
                                levels, params=params, steps=steps, generator=generator, noise=noise,
                                restorations=restorations)

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

        The one recipe behind validation, the training grids, ``sample.py reconstruct`` and the restoration
        evaluation: draw the degradation's params (with ``generator`` and ``context``), ``x_t = D(x0, level)``,
        ``direct = R(x_t, level)``, ``sampled`` = the sampler from ``x_t`` with the same params.

        Args:
            x0: clean images in ``[0, 1]``, on the pipeline's device.
            level: the level to degrade to (default ``T``).
            sampler, steps, callback, noise: as :meth:`sample`.
            generator: random generator for the params.
            params: use these params instead of drawing them.
            context: degradation context (``degradation.context_keys``, e.g. ``partner=``).

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

        The ``n`` start states (and their params) are drawn in one draw before sampling in batches of
        ``batch_size`` (default: all at once), and every image draws its sampling ``noise`` from its own generator,
        so the seed of ``generator`` alone fixes the images, whatever the batch size.

        Returns:
            The generated images (clamped to ``[0, 1]``) and the prior draw (start states, params, provenance).
        """
        if self.prior is None:
            raise RuntimeError(
                f"this model has no generation prior (its degradation is {type(self.degradation).__name__}); "
                "generation needs one, e.g. ChannelMeanPrior for GaussianBlur(final_mean=True)")
        check_positive_int(n, "n")
        batch_size = n if batch_size is None else check_positive_int(batch_size, "batch_size")
        start = self.prior.sample(n, (self.channels, self.image_size, self.image_size), generator)
        device = self.device
        x_T = start.x_T.to(device)
        params = {k: v.to(device) for k, v in start.params.items()}
        # sampling noise: one generator per image, seeded in one draw, so each image's noise is its own
        seeds = torch.randint(2**62, (n,), generator=generator, device=generator.device if generator else "cpu")
        images = []
        for i in range(0, n, batch_size):
            noise_generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds[i:i + batch_size]]
            images.append(self.sample(x_T[i:i + batch_size], params={k: v[i:i + batch_size] for k, v in params.items()},
                                      sampler=sampler, steps=steps, callback=callback, generator=noise_generators,
                                      noise=noise).clamp(0, 1))
        return torch.cat(images), start

    def sampling_steps(self, sampler: SamplerName | None = None, steps: int | Sequence[int] | None = None,
                       level: int | None = None) -> int:
        """How many steps (sampler callbacks) one run from ``level`` (default ``T``) takes with these settings (the
        pipeline's defaults where ``None``): the levels visited minus one; a one-shot sampler: one."""
        level = self.degradation.num_steps if level is None else level
        if level == 0:
            return 0
        info = sampler_info(sampler or self.sampler)
        if info.one_shot:
            return 1
        if not info.takes_steps:
            return level
        return len(timesteps(level, self.sample_steps if steps is None else steps)) - 1

    def network_calls(self, sampler: SamplerName | None = None, steps: int | Sequence[int] | None = None,
                      level: int | None = None) -> int:
        """How many network calls one sampler run from ``level`` (default ``T``) makes, as the sampler says
        (:meth:`colddiff.sampling.SamplerInfo.network_calls`: one per step, Heun's two, the direct sampler's one)."""
        return sampler_info(sampler or self.sampler).network_calls(self.sampling_steps(sampler, steps, level))

    # ------------------------------------------------------------------------------------------ files
    # (reading, checking and writing model files is :mod:`colddiff.files`'s; these are the pipeline's doors to it)
    def config(self) -> dict[str, Any]:
        """The pipeline as a JSON-ready config: components as ``class_path``/``init_args``, plain settings."""
        return model_config(self)

    def inference_state(self) -> dict[str, Tensor]:
        """The tensors of an export: ``network.*``, ``degradation.*``, ``prior.*`` (CPU, contiguous copies)."""
        return inference_state(self)

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write the export folder ``out_dir``: ``model.safetensors`` and ``config.json``, each atomically.

        Returns the folder.
        """
        return write_export(self, out_dir)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], source: str = "the config", allow: Sequence[str] = (),
                    **overrides: Any) -> Pipeline:
        """Build a pipeline (untrained weights) from a model config: a pipeline's :meth:`config`, an export's
        ``model`` entry, or a training checkpoint's hyper-parameters (training-only entries are ignored; the former
        ``loss`` entry means x0-prediction with that loss).  Components are built only from allowed class paths
        (colddiff's, or ``allow``); ``overrides`` replace entries (e.g. a ``network`` the file could not record)."""
        kwargs = pipeline_kwargs(config, source, allow, overrides)
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as err:  # a setting the pipeline refuses (image_size "big", a bad prior...)
            raise ModelFileError(" ".join(str(err).split()), source) from err

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu", allow: Sequence[str] = (),
             **overrides: Any) -> Pipeline:
        """Load a pipeline from an export folder (or its ``model.safetensors``) or a training checkpoint
        (``.ckpt``: its EMA weights), in eval mode on ``map_location``; the file is read and checked once
        (:func:`colddiff.files.load_pipeline`).

        Args:
            path: the export folder, its weights file, or a checkpoint.
            map_location: the device to put the pipeline on.
            allow: class paths (and sampler import paths) you trust to be built from this file.
            overrides: components or settings that replace the file's (a network the checkpoint could not record).
        """
        return load_pipeline(cls, path, map_location, allow, overrides)


# ------------------------------------------------------------------------------------------------ helpers
def as_pipeline(model: Any) -> Pipeline:
    """The inference pipeline of ``model``: a :class:`Pipeline` itself, or the ``pipeline`` of a
    :class:`~colddiff.module.ColdDiffusion` training module (the evaluation functions take either)."""
    pipeline = getattr(model, "pipeline", model)
    if not isinstance(pipeline, Pipeline):
        raise TypeError(f"expected a colddiff Pipeline or ColdDiffusion module, got {type(model).__name__}")
    return pipeline


def check_prior(prior: Prior, degradation: Degradation) -> None:
    """The prior's draws must carry the params the degradation takes (its ``param_keys``), no more, no fewer."""
    provided, needed = tuple(prior.param_keys), tuple(degradation.param_keys)
    if sorted(provided) != sorted(needed):
        raise ValueError(
            f"the prior {type(prior).__name__} draws params {list(provided)} but the degradation "
            f"{type(degradation).__name__} takes {list(needed)}: generation would fail. Pair noise with "
            "GaussianNoisePrior, mixing with SourceImagePrior, random-colour masks with ConstantColourPrior, and "
            "deterministic degradations with a prior that draws no params")


def compile_network(network: nn.Module, mode: str | None = None) -> Callable:
    """``torch.compile`` with a fallback to eager execution where it is unavailable."""
    try:
        return torch.compile(network, mode=mode)
    except Exception as err:  # noqa: BLE001 - platform-dependent failures (no compiler, unsupported Python)
        warnings.warn(f"torch.compile is unavailable ({err}); running the network eagerly", stacklevel=2)
        return network
