"""Generation quality of cold, warm and hot diffusion side by side, each method as its paper trains and samples it.

    python -m benchmarks.bench_generation                          # every method at the quickstart budget (2,000 steps)
    python -m benchmarks.bench_generation --steps 8000 --curve-every 500 --methods quickstart flow \\
        --reuse                                                    # 4x the budget, with FD against training steps
    python -m benchmarks.bench_generation --methods ddpm flow --num 500 --steps 300   # a quick look
    python -m benchmarks.bench_generation --methods ihdm blurring \
        --update benchmarks/results/generation-cpu-2000.json     # re-run two methods, keep the other rows

Every method trains the same small U-Net (the generation quickstart's: ``ConvNeXtUNet(dim=16, dim_mults=(1, 2, 4),
num_blocks=1, attention="none")``) with the same optimiser (Adam 2e-3, cosine decay to 0 over the run), batch (32),
EMA (0.99 every step from step 200) and number of steps on the 6,000 embedded MNIST training digits, each with its
paper's objective (:mod:`colddiff.objectives`), then generates ``--num`` digits from its start-state prior (seed 0)
with about 20 network calls (each sampling's count is in the table).  The methods (``METHODS``), each a
configuration of the library read from its YAML file under ``configs/`` where there is one:

* **quickstart** (cold): pixelation 28 -> 7, kernel density prior, Algorithm 1 (``configs/quickstart_generate.yaml``);
* **cold-blur** (cold): the paper's blur generation, channel-mean end state, x0 under L1, Algorithm 2;
* **cold-mask** (cold): the paper's mask-based generation;
* **ddpm** (hot): DDPM, ε under MSE on DDPM's linear betas over 1,000 levels, DDIM on 20
  (``configs/quickstart_hot.yaml``);
* **ddpm-v** (hot): the same with v-prediction on the cosine schedule (Salimans & Ho);
* **flow** (hot): flow matching / rectified flow, velocity under MSE, Euler on 20 steps and Heun on 10
  (``configs/flow_mnist.yaml``);
* **ihdm** (warm): inverse heat dissipation, their MNIST setting (``configs/ihdm_mnist.yaml``);
* **blurring** (warm): Blurring Diffusion, ε under MSE, DDIM and its ancestral sampler
  (``configs/blurring_diffusion_mnist.yaml``);
* ablations (labelled): **ddpm-x0-l1**, **blurring-x0-l1**, **ihdm-x0-l1** — the same configurations with the
  network trained as every method used to be, x0 under L1 (the objective is the only difference).

Scores are measured in the feature space of colddiff's MNIST classifier (``mnist-cnn``: its 128-d penultimate
layer; FD/KD, never called FID), against the first 4,000 training digits: FD, KD, improved precision and recall
(k = 3), and the entropy of the predicted-class histogram (a fraction of log 10; mode collapse lowers it), beside the
**floor**: the same numbers for the other 2,000 training digits.  ``--curve-every N`` keeps the EMA pipeline every
``N`` steps and scores it with ``--curve-num`` images (FD against training steps, one curve per method, the method's
first sampling).  ``--update JSON`` re-runs ``--methods`` only and keeps every other method's rows of that earlier
run (same steps and number of images; each kept row says when it was measured in ``measured``).  Writes a JSON
file, a Markdown section of ``benchmarks/RESULTS.md`` (``--results``), a picture with one row of samples per method
(``--picture``: the methods run) and the curves (``--curves``).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from torch import nn

import colddiff.degradations as cd
from benchmarks.common import format_table, machine, print_table, write_json
from colddiff._config import build
from colddiff.checkpoint import AtomicCheckpointIO
from colddiff.data import EmbeddedMNISTDataModule
from colddiff.datasets import EmbeddedMNIST, ImageTransform
from colddiff.evaluation import build_extractor, generate_images
from colddiff.evaluation.metrics import class_entropy, extract_features_and_logits, generation_metrics
from colddiff.io import save_png_atomic
from colddiff.module import ColdDiffusion
from colddiff.nets import ConvNeXtUNet
from colddiff.objectives import describe_objective
from colddiff.pipeline import Pipeline
from colddiff.priors import ChannelMeanPrior, ConstantColourPrior

ROOT = Path(__file__).resolve().parents[1]


def _markers(key: str) -> tuple[str, str]:
    """Each budget (and each subset of methods) has its own section of RESULTS.md."""
    return f"<!-- bench_generation:{key}:start -->", f"<!-- bench_generation:{key}:end -->"


def section_key(steps: int, methods: list[str]) -> str:
    """``"2000"`` for every method, ``"2000:ddpm+quickstart"`` for a subset."""
    return str(steps) if sorted(methods) == sorted(METHODS) else f"{steps}:{'+'.join(methods)}"


def default_json_path(device: str, steps: int, methods: list[str]) -> Path:
    """``benchmarks/results/generation-cpu-2000.json`` for every method, ``generation-cpu-2000-ddpm+quickstart.json``
    for a subset: one file per section of RESULTS.md, so a run of a subset never replaces the record of another."""
    return Path("benchmarks/results") / f"generation-{device}-{section_key(steps, methods).replace(':', '-')}.json"


# ------------------------------------------------------------------------------------------------- methods
@dataclass
class Sampling:
    """One way to sample a trained model: the sampler, its levels and noise (``None``: the model's own), and settings
    set on the prior or the objective for this sampling only (e.g. ``{"bandwidth": 0.0}``, ``{"clip_x0": True}``)."""

    label: str
    sampler: str | None = None
    steps: int | None = None
    noise: float | None = None
    prior: dict[str, Any] = field(default_factory=dict)
    objective: dict[str, Any] = field(default_factory=dict)


@dataclass
class Method:
    """A generation method: the model's components and sampling defaults (``model()``: constructor arguments of
    :class:`~colddiff.module.ColdDiffusion` other than the shared network and training settings), its paper, and the
    samplings scored for one trained model."""

    name: str
    family: str  # cold, warm, hot, or ablation
    model: Callable[[], dict[str, Any]]
    samplings: list[Sampling]
    paper: str
    lr: float = 2e-3
    cosine: bool = True


_COMPONENTS = ("degradation", "prior", "objective")
_SETTINGS = ("sampler", "sample_steps", "sample_noise", "train_noise")


def from_config(name: str, **changes: Any) -> Callable[[], dict[str, Any]]:
    """The model of ``configs/<name>.yaml`` (components built from their class paths, sampling defaults), with
    ``changes`` replacing entries (objects, or configs to build)."""

    def model() -> dict[str, Any]:
        config = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())["model"]
        config.update(changes)
        kwargs = {key: build(config[key], key) for key in _COMPONENTS if config.get(key) is not None}
        kwargs.update({key: config[key] for key in _SETTINGS if key in config})
        return kwargs

    return model


def _config_optimiser(name: str) -> tuple[float, bool]:
    config = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())["model"]
    return float(config["optimizer"]["init_args"]["lr"]), config.get("lr_scheduler") is not None


def _blur() -> cd.GaussianBlur:
    """Blur generation on 28x28 digits: T 20, kernel 11, sigma_i = 0.5 exp(0.15 i), circular, the end state is the
    per-channel mean (the paper's generation setting at this size)."""
    return cd.GaussianBlur(20, kernel_size=11, schedule="exponential", sigma=0.5, rate=0.15, border="circular",
                           final_mean=True)


def _quickstart() -> Method:
    lr, cosine = _config_optimiser("quickstart_generate")
    bandwidth = yaml.safe_load((ROOT / "configs" / "quickstart_generate.yaml").read_text())["model"]["prior"][
        "init_args"]["bandwidth"]
    return Method("quickstart", "cold", from_config("quickstart_generate"),
                  [Sampling(f"Algorithm 1, prior bandwidth {bandwidth:g} (as configured)")]
                  + [Sampling(f"Algorithm 1, prior bandwidth {h:g}", prior={"bandwidth": h}) for h in (0.0, 0.05)
                     if h != bandwidth]
                  + [Sampling(f"Algorithm 1, {n} of 21 levels", steps=n) for n in (10, 5)],
                  "Cold Diffusion (arXiv 2208.09392), pixelation, configs/quickstart_generate.yaml", lr, cosine)


def _hot(name: str, objective: Any, schedule: str, label: str, family: str, paper: str) -> Method:
    degradation = {"class_path": "colddiff.degradations.GaussianNoise",
                   "init_args": {"num_steps": 1000, "schedule": schedule, "reestimate": True}}
    samplings = [Sampling("DDIM, 20 steps")]
    if family != "ablation":
        samplings.append(Sampling("ancestral (DDPM), 20 steps", sampler="ancestral"))
        samplings += _few_call_solvers()
    if name == "ddpm":  # fewer network calls
        samplings += [Sampling(f"DDIM, {n} steps", steps=n) for n in (10, 5)]
    return Method(name, family, from_config("quickstart_hot", objective=objective, degradation=degradation),
                  samplings, f"{paper}; {label}")


def _few_call_solvers() -> list[Sampling]:
    """The few-step ODE solvers a hot baseline is sampled with today: DPM-Solver++(2M) and UniPC at 20, 10 and 5
    network calls (one per step)."""
    return [Sampling(f"{label}, {n} steps", sampler=sampler, steps=n)
            for sampler, label in (("dpm++2m", "DPM-Solver++(2M)"), ("unipc", "UniPC")) for n in (20, 10, 5)]


def _ihdm(levels: int) -> Method:
    """IHDM as its paper and official code run MNIST (configs/ihdm_mnist.yaml), with ``levels`` = K heat levels
    (widths log-spaced from 0.5 to 20 px), sampled on every one of them (their sampler; no skipping); with K = 100
    also with twice their delta (their paper tunes delta on FID)."""
    config = yaml.safe_load((ROOT / "configs" / "ihdm_mnist.yaml").read_text())["model"]
    degradation = {**config["degradation"], "init_args": {**config["degradation"]["init_args"], "num_steps": levels}}
    name = "ihdm" if levels == config["degradation"]["init_args"]["num_steps"] else f"ihdm-k{levels}"
    samplings = [Sampling(f"Algorithm 1 + delta 0.0125, all {levels} levels (K = {levels})")]
    if name == "ihdm":
        samplings.append(Sampling(f"Algorithm 1 + delta 0.025, all {levels} levels (K = {levels})", noise=0.025))
    return Method(name, "warm", from_config("ihdm_mnist", degradation=degradation), samplings,
                  f"Inverse Heat Dissipation (arXiv 2206.13397), MNIST setting with K = {levels}, the next level as a "
                  "residual + MSE (PredictPrevious), configs/ihdm_mnist.yaml", *_config_optimiser("ihdm_mnist"))


def _blurring_v(sigma_max: float | None = None) -> Method:
    """The blurring row's process and training with v-prediction (not the paper's ε): the network's error is no
    longer divided by alpha_t d_t; with ``sigma_max`` another maximum blur (0: no blur, the cosine schedule of
    v-prediction with the paper's log-SNR limits)."""
    changes: dict[str, Any] = {"objective": {"class_path": "colddiff.objectives.PredictV", "init_args": {"loss": "l2"}}}
    name = "blurring-v"
    samplings = [Sampling("ancestral, 20 steps", sampler="ancestral", steps=20)]
    if sigma_max is None:
        samplings += [Sampling("ancestral, 100 steps", sampler="ancestral", steps=100),
                      Sampling("DDIM, 20 steps", sampler="improved", steps=20),
                      Sampling("DPM-Solver++(2M), 20 steps", sampler="dpm++2m", steps=20),
                      Sampling("UniPC, 20 steps", sampler="unipc", steps=20),
                      Sampling("UniPC, 10 steps", sampler="unipc", steps=10)]
    else:
        config = yaml.safe_load((ROOT / "configs" / "blurring_diffusion_mnist.yaml").read_text())["model"]
        args = dict(config["degradation"]["init_args"], heat_sigma_max=sigma_max)
        changes["degradation"] = {**config["degradation"], "init_args": args}
        name = f"blurring-v-blur{sigma_max:g}"
        samplings.append(Sampling("DPM-Solver++(2M), 20 steps", sampler="dpm++2m", steps=20))
    return Method(name, "ablation", from_config("blurring_diffusion_mnist", **changes), samplings,
                  "ablation: the blurring row's process and training with v-prediction (not the paper's ε)"
                  + (f", maximum blur sigma_B,max = {sigma_max:g} px (the paper's: 20)" if sigma_max is not None
                     else ""), *_config_optimiser("blurring_diffusion_mnist"))


def _ihdm_algorithm2() -> Method:
    """IHDM's forward process and prior, x0 + MSE, sampled by Cold Diffusion's Algorithm 2 without sampling noise
    (configs/ihdm_algorithm2_mnist.yaml), on 20, 50 and all 100 levels; and the same network with IHDM's own sampler
    (Algorithm 1 + delta), the ablation that shows the sampler is what matters."""
    return Method("ihdm-algorithm2", "warm", from_config("ihdm_algorithm2_mnist"),
                  [Sampling("Algorithm 2, 20 of 100 levels (as configured)"),
                   Sampling("Algorithm 2, 50 of 100 levels", steps=50),
                   Sampling("Algorithm 2, all 100 levels", steps=100),
                   Sampling("IHDM's Algorithm 1 + delta 0.0125, 20 of 100 levels", sampler="naive", steps=20,
                            noise=0.0125),
                   Sampling("IHDM's Algorithm 1 + delta 0.0125, all 100 levels", sampler="naive", steps=100,
                            noise=0.0125)],
                  "IHDM's forward process and prior (arXiv 2206.13397), x0 + MSE, Cold Diffusion's Algorithm 2 "
                  "(arXiv 2208.09392), configs/ihdm_algorithm2_mnist.yaml", *_config_optimiser("ihdm_algorithm2_mnist"))


METHODS: dict[str, Callable[[], Method]] = {
    "quickstart": _quickstart,
    "cold-blur": lambda: Method(
        "cold-blur", "cold",
        lambda: {"degradation": _blur(), "prior": ChannelMeanPrior(1, num_components=1, noise_std=0.002),
                 "sampler": "improved"},
        [Sampling("Algorithm 2")],
        "Cold Diffusion (arXiv 2208.09392): blur to the channel mean, Gaussian colour prior + 0.002 noise, x0 + L1"),
    "cold-mask": lambda: Method(
        "cold-mask", "cold",
        lambda: {"degradation": cd.GaussianMask(20, schedule="linear", sigma=1.0, sigma_step=0.4, reverse=True,
                                                fill="random", fill_range=(0.0, 0.3)),
                 "prior": ConstantColourPrior(0.0, 0.3), "sampler": "improved"},
        [Sampling("Algorithm 2")],
        "Cold Diffusion (arXiv 2208.09392): a disc of image grows from a random constant colour, x0 + L1"),
    "ddpm": lambda: _hot("ddpm", {"class_path": "colddiff.objectives.PredictEpsilon",
                                  "init_args": {"loss": "l2", "clip_x0": True}}, "linear",
                         "ε + MSE, linear betas, T 1000, x0 clipped", "hot",
                         "DDPM (arXiv 2006.11239) sampled by DDIM (arXiv 2010.02502), configs/quickstart_hot.yaml"),
    "ddpm-v": lambda: _hot("ddpm-v", {"class_path": "colddiff.objectives.PredictV",
                                      "init_args": {"loss": "l2", "clip_x0": True}}, "cosine",
                           "v + MSE, cosine schedule, T 1000, x0 clipped", "hot",
                           "v-prediction (Salimans & Ho, arXiv 2202.00512)"),
    "flow": lambda: Method(
        "flow", "hot", from_config("flow_mnist"),
        [Sampling("Euler, 20 steps"), Sampling("Heun, 10 steps", sampler="heun", steps=10),
         Sampling("Euler, 10 steps", steps=10), Sampling("Euler, 5 steps", steps=5)] + _few_call_solvers(),
        "flow matching / rectified flow (arXiv 2210.02747, 2209.03003), velocity + MSE, configs/flow_mnist.yaml",
        *_config_optimiser("flow_mnist")),
    "ihdm": lambda: _ihdm(100),
    "ihdm-k20": lambda: _ihdm(20),
    "ihdm-algorithm2": _ihdm_algorithm2,
    "blurring": lambda: Method(
        "blurring", "warm", from_config("blurring_diffusion_mnist"),
        # its step multiplies the network's ε error by sigma_ts^2 / (alpha_ts sigma_t) per frequency, up to 36 on 20
        # uniform steps and 1.7 on 200: large steps fail (README)
        [Sampling("ancestral, 100 steps (100 calls)", sampler="ancestral", steps=100),
         Sampling("ancestral, 200 steps (200 calls)", sampler="ancestral", steps=200),
         Sampling("ancestral, 50 steps (50 calls)", sampler="ancestral", steps=50),
         Sampling("ancestral, 20 steps", sampler="ancestral", steps=20),
         Sampling("DDIM, 20 steps", sampler="improved", steps=20),
         Sampling("DDIM, 20 steps, x0 clipped (probe)", sampler="improved", steps=20, objective={"clip_x0": True})],
        "Blurring Diffusion (arXiv 2209.05557), ε + MSE, its ε-form ancestral step, "
        "configs/blurring_diffusion_mnist.yaml",
        *_config_optimiser("blurring_diffusion_mnist")),
    # the ablations that explain Blurring Diffusion's results: the same process with the network predicting v (its
    # few-step failure is the ε-parameterisation's), and with less blur (what the blur costs at this budget)
    "blurring-v": _blurring_v,
    "blurring-v-blur5": lambda: _blurring_v(5.0),
    "blurring-v-blur0": lambda: _blurring_v(0.0),
    # ablations: the same configurations trained as every method used to be (x0 under L1)
    "ddpm-x0-l1": lambda: _hot("ddpm-x0-l1", {"class_path": "colddiff.objectives.PredictX0",
                                              "init_args": {"loss": "l1"}}, "linear",
                               "ablation: the ddpm row's configuration with x0 + L1", "ablation", "DDPM"),
    "blurring-x0-l1": lambda: Method(
        "blurring-x0-l1", "ablation",
        from_config("blurring_diffusion_mnist", objective={"class_path": "colddiff.objectives.PredictX0",
                                                           "init_args": {"loss": "l1"}}),
        [Sampling("DDIM, 20 steps", sampler="improved", steps=20)],
        "ablation: the blurring row's configuration with x0 + L1"),
    "ihdm-x0-l1": lambda: Method(
        "ihdm-x0-l1", "ablation",
        from_config("ihdm_mnist", objective={"class_path": "colddiff.objectives.PredictX0",
                                             "init_args": {"loss": "l1"}}),
        [Sampling("Algorithm 1 + delta 0.0125, 20 of 100 levels", steps=20)],
        "ablation: the ihdm row's configuration with x0 + L1"),
}


def network(width: int = 16) -> nn.Module:
    """The same small U-Net for every method (the generation quickstart's, ``dim`` 16)."""
    return ConvNeXtUNet(in_channels=1, dim=width, dim_mults=(1, 2, 4), num_blocks=1, attention="none", image_size=28)


@dataclass
class Recipe:
    """How a method is trained, beside its own components: the settings :mod:`benchmarks.bench_time_to_quality`
    varies one at a time.  The defaults are this benchmark's (batch 32, Adam at the method's rate with cosine decay
    to 0, EMA 0.99 every step from step 200, the network of :func:`network`, torch's threads)."""

    name: str = "default"
    model: dict[str, Any] = field(default_factory=dict)  # ColdDiffusion arguments replaced (e.g. the EMA's)
    objective: dict[str, Any] = field(default_factory=dict)  # the objective's init arguments replaced
    prior: dict[str, Any] = field(default_factory=dict)  # the prior's init arguments replaced
    batch_size: int = 32
    warmup: int = 0  # linear learning-rate warm-up (steps) before the cosine decay
    lr: float | None = None  # None: the method's
    width: int = 16
    compile: bool = False  # torch.compile the training network (inductor on the CPU)
    threads: int | None = None  # torch CPU threads for training (None: as set)
    #: a prior setting chosen on held-out digits after training (colddiff.callbacks.SelectPriorSetting's choice):
    #: ``{"name": "bandwidth", "candidates": [...], "num": 256}``
    select: dict[str, Any] | None = None
    #: the name of a recipe whose training this one shares (it differs only after training, e.g. in ``select``):
    #: bench_time_to_quality scores that run's models instead of training the same model again
    train_as: str | None = None
    description: str = ""


def held_out_digits(num: int = 1000) -> torch.Tensor:
    """The embedded test digits (never trained on, never the scoring reference): what a prior setting is chosen on."""
    test = EmbeddedMNIST("test", ImageTransform(28, 1, train=False))
    return torch.stack([test[i] for i in range(min(num, len(test)))])


def select_prior(pipeline: Pipeline, select: dict[str, Any], extractor: nn.Module) -> tuple[float, float, list]:
    """Choose a prior setting on held-out digits (:func:`colddiff.evaluation.select_prior_setting`, mnist-cnn
    features); returns the value, the seconds it took and the table."""
    from colddiff.evaluation import select_prior_setting

    start = time.perf_counter()
    value, table = select_prior_setting(pipeline, select.get("name", "bandwidth"), select["candidates"],
                                        held_out_digits(), extractor, num=select.get("num", 256), device="cpu")
    return value, time.perf_counter() - start, table


def _rebuilt(part: Any, changes: dict[str, Any]) -> Any:
    """A component rebuilt with some of its recorded init arguments changed."""
    if not changes:
        return part
    return type(part)(**{**part._init_config, **changes})


class KeepPipelines(L.Callback):
    """Saves the EMA pipeline (an export folder) every ``every`` optimiser steps, for the curve of FD against steps,
    and the training time spent until then (``times``, seconds by step); the time spent saving is kept out of the
    training time."""

    def __init__(self, folder: Path, every: int) -> None:
        self.folder, self.every, self.seconds = folder, every, 0.0
        self.times: dict[int, float] = {}
        self.started = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, module: ColdDiffusion) -> None:
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: ColdDiffusion, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.every and step % self.every == 0:
            start = time.perf_counter()
            self.times[step] = start - self.started - self.seconds
            module.pipeline.save(self.folder / f"step{step:06d}")
            self.seconds += time.perf_counter() - start


def train(method: Method, steps: int, work: Path, reuse: bool, curve_every: int = 0,
          recipe: Recipe | None = None) -> tuple[Pipeline, float]:
    """Train (or reload with ``reuse``) the method's model; returns its pipeline and the training wall time (s).
    With ``curve_every``, the EMA pipeline is also kept every that many steps, with the training seconds spent until
    then in ``<name>-<steps>-curve/times.json``."""
    recipe = recipe or Recipe()
    tag = method.name if recipe.name == "default" else f"{method.name}-{recipe.name}"
    path = work / f"{tag}-{steps}.ckpt"
    timing = path.with_suffix(".seconds")  # the training wall time, kept beside the checkpoint for --reuse
    if reuse and path.is_file():
        seconds = float(timing.read_text()) if timing.is_file() else float("nan")
        return Pipeline.load(path), seconds
    torch.manual_seed(0)
    kwargs = method.model()
    for part, changes in (("objective", recipe.objective), ("prior", recipe.prior)):
        if changes:
            kwargs[part] = _rebuilt(kwargs[part], changes)
    lr = method.lr if recipe.lr is None else recipe.lr

    def schedule(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps - recipe.warmup)
        if not recipe.warmup:
            return cosine
        ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / recipe.warmup, total_iters=recipe.warmup)
        return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, cosine], milestones=[recipe.warmup])

    settings = dict(ema_decay=0.99, ema_every=1, ema_start=200, val_sample_batches=0, prior_fit_images=6000,
                    channels_last=True, compile=recipe.compile)
    settings.update(recipe.model)
    model = ColdDiffusion(network=network(recipe.width), image_size=28, channels=1, **kwargs,
                          optimizer=lambda p: torch.optim.Adam(p, lr=lr),
                          lr_scheduler=schedule if method.cosine else None, **settings)
    keep = KeepPipelines(work / f"{tag}-{steps}-curve", curve_every)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, default_root_dir=work, plugins=[AtomicCheckpointIO()],
                        callbacks=[keep])
    data = EmbeddedMNISTDataModule(image_size=28, channels=1, batch_size=recipe.batch_size, num_workers=0)
    threads = torch.get_num_threads()
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    try:
        start = time.perf_counter()
        trainer.fit(model, data)
        seconds = time.perf_counter() - start - keep.seconds
    finally:
        torch.set_num_threads(threads)
    trainer.save_checkpoint(path, weights_only=False)
    timing.write_text(f"{seconds:.3f}\n")
    if curve_every:
        (work / f"{tag}-{steps}-curve" / "times.json").write_text(json.dumps(keep.times))
    return Pipeline.load(path), seconds


# ----------------------------------------------------------------------------------------------- scoring
def reference_sets() -> tuple[torch.Tensor, torch.Tensor]:
    """The reference (training digits 0-3,999) and the floor's real set (training digits 4,000-5,999)."""
    train_set = EmbeddedMNIST("train", ImageTransform(28, 1, train=False))
    images = torch.stack([train_set[i] for i in range(len(train_set))])
    return images[:4000], images[4000:]


@functools.cache
def scoring() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], dict[str, Any]]:
    """The extractor, the reference set's features and the floor: the same for every run, computed once per
    process."""
    extractor = build_extractor("mnist-cnn")
    reference_images, held_out = reference_sets()
    reference = extract_features_and_logits(extractor, reference_images.split(500), "cpu")
    return extractor, reference, score(extractor, reference, held_out)


def score(extractor, reference: tuple[torch.Tensor, torch.Tensor], images: torch.Tensor,
          kid_subset_size: int = 1000) -> dict[str, Any]:
    features, logits = extract_features_and_logits(extractor, images.split(500), "cpu")
    metrics = generation_metrics(reference[0], features, kid_subsets=100,
                                 kid_subset_size=min(kid_subset_size, len(images)), seed=0)
    entropy = class_entropy(logits)
    return {**metrics, "class_entropy": entropy["entropy_fraction"], "class_counts": entropy["counts"]}


def _swap(part: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """Set ``settings`` on ``part``; returns what they replaced."""
    previous = {key: getattr(part, key) for key in settings}
    for key, value in settings.items():
        setattr(part, key, value)
    return previous


def generate(pipeline: Pipeline, sampling: Sampling, num: int, batch_size: int) -> tuple[torch.Tensor, float, int]:
    """``num`` images with ``sampling``'s settings (restored afterwards); the seconds and network calls per image."""
    prior, objective = _swap(pipeline.prior, sampling.prior), _swap(pipeline.objective, sampling.objective)
    try:
        begin = time.perf_counter()
        images, _ = generate_images(pipeline, num, seed=0, sampler=sampling.sampler, steps=sampling.steps,
                                    noise=sampling.noise, batch_size=batch_size, device="cpu")
        seconds = time.perf_counter() - begin
    finally:
        _swap(pipeline.prior, prior), _swap(pipeline.objective, objective)
    return images, seconds, pipeline.network_calls(sampling.sampler, sampling.steps)


def one_step_errors(pipeline: Pipeline, train_noise: float, num: int = 256, seed: int = 0) -> list[dict[str, float]]:
    """The reverse step of a noise-augmented model (IHDM's) one level at a time, on ``num`` held-out digits: the true
    less blurred image ``D(x0, k - 1)`` against the model's mean step from the training input ``D(x0, k) + sigma eps``
    (the network's ``previous``, or ``D(x0_hat, k - 1)`` for an x0 model), beside the size of the step itself
    ``|D(x0, k - 1) - D(x0, k)|`` and of the input noise ``|sigma eps|`` (RMS over images of the per-image L2
    norms).  A sampler that chains ``K`` such steps needs the error well below the step."""
    test = EmbeddedMNIST("test", ImageTransform(28, 1, train=False))
    x0 = torch.stack([test[i] for i in range(num)])
    op, generator = pipeline.degradation, torch.Generator().manual_seed(seed)
    total = op.num_steps
    rows = []
    for k in sorted({1, 2, total // 20, total // 10, total // 5, 2 * total // 5, 3 * total // 5, 4 * total // 5,
                     total} - {0}):
        t = torch.full((num,), k)
        clean, previous = op.degrade(x0, t, {}), op.degrade(x0, t - 1, {})
        noise = train_noise * torch.randn(x0.shape, generator=generator)
        with torch.no_grad():
            guess = pipeline.predict(clean + noise, t)
        mean = guess.previous if guess.previous is not None else op.degrade(guess.x0, t - 1, {})

        def size(v: torch.Tensor) -> float:
            return float(v.flatten(1).norm(dim=1).pow(2).mean().sqrt())

        rows.append({"level": k, "step": size(previous - clean), "error": size(mean - previous),
                     "noise": size(noise)})
    return rows


# ------------------------------------------------------------------------------------------------ reports
def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def table(rows: list[dict[str, Any]], floor: dict[str, Any], dated: bool = False) -> tuple[list[str], list[list[str]]]:
    """The Markdown table, sorted by FD under the floor; ``dated`` adds the day each row was measured."""
    headers = ["method", "family", "sampling", "network calls", "FD-mnist-cnn", "KD-mnist-cnn", "precision",
               "recall", "class entropy", "train s", "sample img/s"] + (["measured"] if dated else [])
    body = [["real vs real (floor)", "-", "held-out training digits", "-", _fmt(floor["FD"]), _fmt(floor["KD"], 4),
             _fmt(floor["precision"], 3), _fmt(floor["recall"], 3), _fmt(floor["class_entropy"], 3), "-", "-"]
            + (["-"] if dated else [])]
    for r in sorted(rows, key=lambda r: r["FD"]):
        body.append([r["method"], r["family"], r["sampling"], str(r["network_calls"]), _fmt(r["FD"]),
                     _fmt(r["KD"], 4), _fmt(r["precision"], 3), _fmt(r["recall"], 3), _fmt(r["class_entropy"], 3),
                     _fmt(r["train_seconds"], 0), _fmt(r["images_per_second"], 1)]
                    + ([r.get("measured", "-")[:10]] if dated else []))
    return headers, body


def picture(samples: dict[str, torch.Tensor], path: Path, per_row: int = 12) -> Path:
    """One row of samples per method, labelled."""
    from PIL import Image, ImageDraw

    rows = [images[:per_row] for images in samples.values()]
    grid_path = save_png_atomic(torch.cat(rows), path.with_suffix(".tmp.png"), nrow=per_row, scale=2)
    grid = Image.open(grid_path).convert("RGB")
    label_width = max(150, 6 * max(len(name) for name in samples) + 8)  # PIL's default font: about 6 px a character
    canvas = Image.new("RGB", (grid.width + label_width, grid.height), "white")
    canvas.paste(grid, (label_width, 0))
    draw = ImageDraw.Draw(canvas)
    row_height = grid.height / len(rows)
    for i, name in enumerate(samples):
        draw.text((4, i * row_height + row_height / 2 - 6), name, fill="black")
    grid_path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def curves_picture(curves: dict[str, list[tuple[int, float]]], floor: float, path: Path, num: int) -> Path:
    """FD against training steps, one curve per method (log scale), with the floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2))
    for name, points in curves.items():
        axes.plot([s for s, _ in points], [fd for _, fd in points], marker="o", markersize=3, label=name)
    axes.axhline(floor, color="grey", linestyle="--", label="floor (real vs real)")
    axes.set_yscale("log")
    axes.set_xlabel("training steps (batch 32)")
    axes.set_ylabel(f"FD-mnist-cnn ({num} samples)")
    axes.set_title("Generation quality against training steps, embedded digits, 2 CPU cores")
    axes.legend(fontsize=7, ncol=2)
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _earlier_run(path: Path, steps: int, num: int) -> dict[str, Any]:
    """The record ``--update`` merges into: a bench_generation JSON of the same steps and number of images."""
    if not path.is_file():
        raise FileNotFoundError(f"--update expects an earlier bench_generation JSON, got no file at {path}")
    earlier = json.loads(path.read_text())
    if earlier.get("benchmark") != "generation" or "results" not in earlier:
        raise ValueError(f"--update expects a bench_generation JSON, got {path} without its 'results'")
    if (earlier["steps"], earlier["num"]) != (steps, num):
        raise ValueError(f"--update {path} holds a run of {earlier['steps']} steps and {earlier['num']} images; "
                         f"this run has --steps {steps} --num {num}: rows of two budgets cannot share a table")
    return earlier


def write_results(markdown: str, results: Path, key: str) -> None:
    """Replace this benchmark's section ``key`` (see :func:`section_key`) in RESULTS.md, or append it."""
    start, end = _markers(key)
    text = results.read_text() if results.is_file() else "# Benchmark results\n"
    section = f"{start}\n{markdown}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    results.write_text(text)


# --------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--steps", type=int, default=2000, help="training steps per method (batch 32)")
    parser.add_argument("--num", type=int, default=2000, help="images generated per method and sampling")
    parser.add_argument("--batch-size", type=int, default=500, help="generation batch size")
    parser.add_argument("--curve-every", type=int, default=0, help="keep and score the model every N steps (0: no)")
    parser.add_argument("--curve-num", type=int, default=500, help="images per point of the curves")
    parser.add_argument("--work", default="runs/bench_generation", help="checkpoints of the trained models")
    parser.add_argument("--reuse", action="store_true", help="reload models trained earlier with the same steps")
    parser.add_argument("--json", default=None, help="write the results here (default: benchmarks/results/"
                                                     "generation-<device>-<steps>[-<methods>].json)")
    parser.add_argument("--results", default=None, help="replace this benchmark's section of this Markdown file")
    parser.add_argument("--picture", default=None, help="write one row of samples per method here (PNG)")
    parser.add_argument("--curves", default=None, help="write FD against training steps here (PNG)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--update", default=None, help="an earlier run's JSON: re-run --methods, keep its other "
                                                       "methods' rows, write the merged record back to it")
    args = parser.parse_args(argv)
    earlier = _earlier_run(Path(args.update), args.steps, args.num) if args.update else None
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    info = machine(torch.device("cpu"))
    started = time.perf_counter()

    extractor, reference, floor = scoring()
    print(f"floor (2,000 held-out real digits vs the 4,000 reference digits): FD {floor['FD']:.2f}", flush=True)

    rows, samples, curves, one_step = [], {}, {}, {}
    for name in args.methods:
        method = METHODS[name]()
        pipeline, train_seconds = train(method, args.steps, work, args.reuse, args.curve_every)
        for sampling in method.samplings:
            images, seconds, calls = generate(pipeline, sampling, args.num, args.batch_size)
            result = score(extractor, reference, images)
            rows.append({"method": name, "family": method.family, "sampling": sampling.label,
                         "sampler": sampling.sampler or pipeline.sampler, "steps": sampling.steps,
                         "noise": sampling.noise, "network_calls": calls,
                         "objective": type(pipeline.objective).__name__, **describe_objective(pipeline.objective),
                         "train_seconds": train_seconds,
                         "sample_seconds": seconds, "images_per_second": args.num / seconds, "paper": method.paper,
                         **result})
            samples.setdefault(name, images)
            print(f"{name:15s} {sampling.label:44s} calls {calls:3d}  FD {result['FD']:8.2f}  precision "
                  f"{result['precision']:.3f}  recall {result['recall']:.3f}  classes {result['class_entropy']:.3f}",
                  flush=True)
        train_noise = method.model().get("train_noise")
        if isinstance(train_noise, (int, float)) and train_noise > 0:
            one_step[name] = one_step_errors(pipeline, float(train_noise))
            print(f"{name:15s} one-step error / step size by level: " + ", ".join(
                f"{r['level']}: {r['error']:.3f}/{r['step']:.3f}" for r in one_step[name]), flush=True)
        folder = work / f"{name}-{args.steps}-curve"
        if args.curve_every and folder.is_dir():
            points = []
            for export in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step")):
                images, _, _ = generate(Pipeline.load(export), method.samplings[0], args.curve_num, args.batch_size)
                points.append((int(export.name.removeprefix("step")), score(extractor, reference, images)["FD"]))
            curves[name] = points
            print(f"{name:15s} curve: " + ", ".join(f"{s}: {fd:.1f}" for s, fd in points), flush=True)
    total = time.perf_counter() - started
    measured = info["date"]
    for row in rows:
        row["measured"] = measured
    names = list(args.methods)
    if earlier is not None:
        kept = [dict(r, measured=r.get("measured", earlier["machine"]["date"])) for r in earlier["results"]
                if r["method"] not in args.methods]
        rows = kept + rows
        names = list(dict.fromkeys([r["method"] for r in earlier["results"]] + names))
        curves = {**{k: [(p["step"], p["FD"]) for p in v] for k, v in earlier.get("curves", {}).items()
                     if k not in args.methods}, **curves}
        one_step = {**{k: v for k, v in earlier.get("one_step", {}).items() if k not in args.methods}, **one_step}

    headers, body = table(rows, floor, dated=earlier is not None)
    command = " ".join(([f"--methods {' '.join(args.methods)}"] if args.methods != list(METHODS) else [])
                       + [f"--steps {args.steps}", f"--num {args.num}"]
                       + ([f"--curve-every {args.curve_every}"] if args.curve_every else []))
    title = (f"Generation on the embedded digits, {len(names)} method(s) x {args.steps} training steps (batch "
             f"32, the same small U-Net, optimiser and EMA; each method's own objective), {args.num} images each, "
             "scored against 4,000 training digits in the feature space of colddiff's MNIST classifier (`mnist-cnn`)")
    print(f"\n{title}\n")
    text = print_table(headers, body)
    key = section_key(args.steps, names)
    kept_dates = sorted({r["measured"] for r in rows} - {measured})
    markdown = "\n".join([
        (f"## Generation, every method as its paper trains it, at {args.steps} steps"
         if key == str(args.steps) else f"## Generation at {args.steps} steps: {', '.join(names)}"),
        "",
        f"`python -m benchmarks.bench_generation {command}"
        + (f" --update {args.update}" if args.update else "")
        + f"` — {info['date']}, {info['device_name']} "
        f"({info['cpu_threads']} threads), torch {info['torch']}, fp32; {total / 60:.0f} min in all"
        + (" (models reloaded with `--reuse`: their training times are the ones recorded when they were trained)"
           if args.reuse else "")
        + (f"; re-run: {', '.join(args.methods)}; the other methods' rows kept from the run of "
           f"{', '.join(kept_dates)} (column `measured` of the JSON)" if kept_dates else "") + ".",
        "",
        title + ". Sorted by FD; the first row is the floor. Precision/recall: improved precision and recall "
        "(Kynkäänniemi et al. 2019, k = 3); class entropy: entropy of the predicted-digit histogram / log 10.",
        "",
        text,
    ] + ([
        "",
        "One reverse step at a time (noise-augmented models, 256 held-out digits, RMS of per-image L2 norms): the "
        "model's error on the less blurred image against the size of the step it should take; the input noise "
        f"|sigma eps| is {next(iter(one_step.values()))[0]['noise']:.3f}.",
        "",
        format_table(["method", "level k", "one-step error", "step size", "error / step"],
                     [[name, str(r["level"]), f"{r['error']:.3f}", f"{r['step']:.3f}", f"{r['error'] / r['step']:.2f}"]
                      for name, values in one_step.items() for r in values]),
    ] if one_step else []))
    payload = {"benchmark": "generation", "machine": info, "steps": args.steps, "num": args.num,
               "total_seconds": total, "methods_run": list(args.methods), "floor": floor, "results": rows,
               "table": text,
               "curves": {k: [{"step": s, "FD": fd} for s, fd in v] for k, v in curves.items()},
               "curve_num": args.curve_num, "one_step": one_step}
    json_path = args.json or args.update or default_json_path(info["device"], args.steps, names)
    write_json(json_path, payload)
    if args.results:
        write_results(markdown, Path(args.results), key)
    if args.picture:
        print(f"wrote {picture(samples, Path(args.picture))}")
    if args.curves and curves:
        print(f"wrote {curves_picture(curves, floor['FD'], Path(args.curves), args.curve_num)}")
    return payload


if __name__ == "__main__":
    main()
