"""Generation quality of cold, warm and hot diffusion side by side, on the embedded digits, at one budget.

    python -m benchmarks.bench_generation                       # every method, 1,000 steps each, 2,000 images
    python -m benchmarks.bench_generation --steps 4000          # 4x the budget (GPUs: scale up freely)
    python -m benchmarks.bench_generation --methods quickstart quickstart-before --steps 1500   # the quickstarts
    python -m benchmarks.bench_generation --methods hot quickstart --num 500 --steps 300   # a quick look

Every method trains the same small U-Net (the quickstart's: ``ConvNeXtUNet(dim=16, dim_mults=(1, 2, 4),
num_blocks=1, attention="none")``) with the same optimiser (Adam 2e-3, cosine decay to 0 over the run: the
quickstart's recipe; only ``quickstart-before`` keeps its historic Adam 1e-3), batch and number of steps on the 6,000
embedded MNIST training digits, then generates ``--num`` digits from its start-state prior (seed 0) with about the
same number of network calls (T = 20 or 21 levels, every level visited).  Scores are measured in the feature space
of colddiff's MNIST classifier (``mnist-cnn``: its 128-d penultimate layer; FD/KD, never called FID), against
the first 4,000 training digits as the reference set:

* FD and KD (Fréchet and kernel distance), improved precision and recall (k = 3), all by torch-fidelity;
* the entropy of the classifier's predicted-class histogram as a fraction of log 10 (1.0: all ten digits equally
  often; mode collapse lowers it);
* the **floor**: the same numbers for the other 2,000 training digits (real digits the reference does not hold)
  against the same reference: how close a perfect generator of this many images would come.

Methods (each a configuration of the library, see ``METHODS``): the generation quickstart as configured in
``configs/quickstart_generate.yaml`` and its earlier configuration; cold blur as the paper (channel-mean end state,
fitted colour prior, 0.002 noise, Algorithm 2); cold mask-based generation; IHDM-style noise-augmented ("warm") blur
(the same blur, trained on inputs with sigma = 0.01 noise, Algorithm 2 with a sweep of sampling noise delta, and
IHDM's own ancestral step, Algorithm 1 with noise); the blur +
noise hybrid of Blurring Diffusion (``BlurNoise``, DDIM by noise re-estimation); and hot diffusion
(``GaussianNoise``, DDIM).  Writes a JSON file, a Markdown table (``--results`` replaces this benchmark's section in
``benchmarks/RESULTS.md``) and a picture with one row of samples per method.
"""

from __future__ import annotations

import argparse
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
from benchmarks.common import machine, print_table, write_json
from colddiff._config import build
from colddiff.checkpoint import AtomicCheckpointIO
from colddiff.data import EmbeddedMNISTDataModule
from colddiff.datasets import EmbeddedMNIST, ImageTransform
from colddiff.evaluation import build_extractor, generate_images
from colddiff.evaluation.metrics import class_entropy, extract_features_and_logits, generation_metrics
from colddiff.io import save_png_atomic
from colddiff.module import ColdDiffusion
from colddiff.nets import ConvNeXtUNet
from colddiff.priors import ChannelMeanPrior, ConstantColourPrior, GaussianNoisePrior, LowResPrior, Prior

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart_generate.yaml"


def _markers(key: str) -> tuple[str, str]:
    """Each budget (and each subset of methods) has its own section of RESULTS.md, so a 4x run does not replace the
    default one."""
    return f"<!-- bench_generation:{key}:start -->", f"<!-- bench_generation:{key}:end -->"


def section_key(steps: int, methods: list[str]) -> str:
    """``"1000"`` for every method, ``"1000:hot+quickstart"`` for a subset."""
    return str(steps) if sorted(methods) == sorted(METHODS) else f"{steps}:{'+'.join(methods)}"


# ------------------------------------------------------------------------------------------------- methods
Sampling = tuple[str, "str | None", "float | None", dict[str, Any]]


@dataclass
class Method:
    """One way to generate: a degradation, its prior, the sampler, and the training/sampling noise.

    ``samplings`` lists the sampling variants scored for the same trained model: ``(label, sampler, noise delta,
    prior settings)`` (``None`` for the sampler: the method's; the prior settings, e.g. ``{"bandwidth": 0.0}``, are
    set on the model's prior for that variant only).
    """

    name: str
    family: str  # cold, warm or hot
    degradation: Callable[[], cd.Degradation]
    prior: Callable[[], Prior]
    sampler: str
    train_noise: float | None = None
    samplings: list[Sampling] = field(default_factory=lambda: [("", None, None, {})])
    description: str = ""
    lr: float = 2e-3  # Adam
    cosine: bool = True  # cosine learning-rate decay to 0 over the run's steps (CosineAnnealingLR, T_max = steps)


def _blur() -> cd.GaussianBlur:
    """Blur generation on 28x28 digits: T 20, kernel 11, sigma_i = 0.5 exp(0.15 i) (cumulative sigma about 17 px at
    T - 1, circular), the end state is the per-channel mean (the paper's generation setting at this size)."""
    return cd.GaussianBlur(20, kernel_size=11, schedule="exponential", sigma=0.5, rate=0.15, border="circular",
                           final_mean=True)


def _quickstart_model_config() -> dict[str, Any]:
    return yaml.safe_load(QUICKSTART.read_text())["model"]


def _quickstart() -> Method:
    """The generation quickstart as configs/quickstart_generate.yaml configures it (its Adam learning rate and, if
    it has one, its cosine schedule, stretched to the benchmark's ``--steps``)."""
    config = _quickstart_model_config()
    noise = config.get("sample_noise")
    optimizer, scheduler = config.get("optimizer") or {}, config.get("lr_scheduler") or {}
    if optimizer.get("class_path", "torch.optim.Adam") != "torch.optim.Adam" or scheduler.get(
            "class_path", "torch.optim.lr_scheduler.CosineAnnealingLR") != "torch.optim.lr_scheduler.CosineAnnealingLR":
        raise ValueError("bench_generation trains with Adam and an optional CosineAnnealingLR; the quickstart config "
                         f"names {optimizer.get('class_path')} / {scheduler.get('class_path')}")
    bandwidth = (config["prior"].get("init_args") or {}).get("bandwidth")
    samplings: list[Sampling] = [("as configured" + (f" (prior bandwidth {bandwidth:g})" if bandwidth is not None
                                                     else ""), None, noise, {})]
    if config["prior"]["class_path"].endswith("LowResKDEPrior") and bandwidth is not None:  # the prior's trade-off
        samplings += [(f"prior bandwidth {h:g}", None, noise, {"bandwidth": h}) for h in (0.0, 0.05) if h != bandwidth]
    return Method("quickstart", "cold" if not (noise or config.get("train_noise")) else "warm",
                  lambda: build(config["degradation"], "degradation"), lambda: build(config["prior"], "prior"),
                  config.get("sampler", "improved"), config.get("train_noise"), samplings,
                  "configs/quickstart_generate.yaml", lr=float((optimizer.get("init_args") or {}).get("lr", 1e-3)),
                  cosine=bool(scheduler))


DELTAS = [0.0, 0.01, 0.025, 0.05]

METHODS: dict[str, Callable[[], Method]] = {
    "quickstart": _quickstart,
    "quickstart-before": lambda: Method(
        "quickstart-before", "cold", lambda: cd.Pixelate(21, schedule="linear"),
        lambda: LowResPrior(1, low_size=7, num_components=10), "naive", lr=1e-3, cosine=False,
        description="the quickstart before this benchmark: one-pixel pixelation 28 -> 7, 10-component GMM prior, "
                    "Adam 1e-3 without decay"),
    "cold-blur": lambda: Method(
        "cold-blur", "cold", _blur, lambda: ChannelMeanPrior(1, num_components=1, noise_std=0.002), "improved",
        description="the paper's blur generation: mean end state, Gaussian colour prior + 0.002 noise, Algorithm 2"),
    "cold-mask": lambda: Method(
        "cold-mask", "cold",
        lambda: cd.GaussianMask(20, schedule="linear", sigma=1.0, sigma_step=0.4, reverse=True, fill="random",
                                fill_range=(0.0, 0.3)),
        lambda: ConstantColourPrior(0.0, 0.3), "improved",
        description="mask-based generation: a central disc of image grows from a random constant colour"),
    "warm-blur": lambda: Method(
        "warm-blur", "warm", _blur, lambda: ChannelMeanPrior(1, num_components=1, noise_std=0.01), "improved",
        train_noise=0.01,
        samplings=[(f"improved, delta {d:g}", "improved", d, {}) for d in DELTAS]
        + [("naive, delta 0.025", "naive", 0.025, {})],
        description="the same blur, trained on inputs + 0.01 noise (IHDM's sigma; the prior's noise matches it), "
                    "Algorithm 2 + sampling noise delta; the last row is IHDM's ancestral step (Algorithm 1 + delta)"),
    "blur-noise": lambda: Method(
        "blur-noise", "warm", lambda: cd.BlurNoise(20, blur="heat"), GaussianNoisePrior, "improved",
        description="Blurring Diffusion: heat blur + variance-preserving noise, DDIM (noise re-estimated)"),
    "hot": lambda: Method(
        "hot", "hot", lambda: cd.GaussianNoise(20), GaussianNoisePrior, "improved",
        description="Gaussian noise (cosine, T 20), DDIM by noise re-estimation"),
}


def network() -> nn.Module:
    """The same small U-Net for every method (the quickstart's)."""
    return ConvNeXtUNet(in_channels=1, dim=16, dim_mults=(1, 2, 4), num_blocks=1, attention="none", image_size=28)


def train(method: Method, steps: int, work: Path, reuse: bool) -> tuple[ColdDiffusion, float]:
    """Train (or reload with ``reuse``) the method's model; returns it and the training wall time in seconds."""
    path = work / f"{method.name}-{steps}.ckpt"
    timing = path.with_suffix(".seconds")  # the training wall time, kept beside the checkpoint for --reuse
    if reuse and path.is_file():
        seconds = float(timing.read_text()) if timing.is_file() else float("nan")
        return ColdDiffusion.load_from_checkpoint(path).eval(), seconds
    torch.manual_seed(0)
    model = ColdDiffusion(method.degradation(), network(), prior=method.prior(), image_size=28, channels=1,
                          optimizer=lambda p: torch.optim.Adam(p, lr=method.lr), ema_decay=0.99, ema_every=1,
                          lr_scheduler=(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=steps))
                          if method.cosine else None,
                          ema_start=200, sampler=method.sampler, val_sample_batches=0, prior_fit_images=6000,
                          train_noise=method.train_noise, channels_last=True)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, default_root_dir=work, plugins=[AtomicCheckpointIO()])
    data = EmbeddedMNISTDataModule(image_size=28, channels=1, batch_size=32, num_workers=0)
    start = time.perf_counter()
    trainer.fit(model, data)
    seconds = time.perf_counter() - start
    trainer.save_checkpoint(path, weights_only=False)
    timing.write_text(f"{seconds:.3f}\n")
    return model.eval(), seconds


# ----------------------------------------------------------------------------------------------- scoring
def reference_sets() -> tuple[torch.Tensor, torch.Tensor]:
    """The reference (training digits 0-3,999) and the floor's real set (training digits 4,000-5,999)."""
    train = EmbeddedMNIST("train", ImageTransform(28, 1, train=False))
    images = torch.stack([train[i] for i in range(len(train))])
    return images[:4000], images[4000:]


def score(extractor, reference: tuple[torch.Tensor, torch.Tensor | None], images: torch.Tensor) -> dict[str, Any]:
    features, logits = extract_features_and_logits(extractor, images.split(500), "cpu")
    metrics = generation_metrics(reference[0], features, kid_subsets=100, kid_subset_size=1000, seed=0)
    entropy = class_entropy(logits)
    return {**metrics, "class_entropy": entropy["entropy_fraction"], "class_counts": entropy["counts"]}


# ------------------------------------------------------------------------------------------------ reports
def _fmt(value: float, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def table(rows: list[dict[str, Any]], floor: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["method", "family", "sampling", "FD-mnist-cnn", "KD-mnist-cnn", "precision", "recall",
               "class entropy", "train s", "sample img/s"]
    body = [["real vs real (floor)", "-", "held-out training digits", _fmt(floor["FD"]), _fmt(floor["KD"], 4),
             _fmt(floor["precision"], 3), _fmt(floor["recall"], 3), _fmt(floor["class_entropy"], 3), "-", "-"]]
    for r in sorted(rows, key=lambda r: r["FD"]):
        body.append([r["method"], r["family"], r["sampling"], _fmt(r["FD"]), _fmt(r["KD"], 4), _fmt(r["precision"], 3),
                     _fmt(r["recall"], 3), _fmt(r["class_entropy"], 3), _fmt(r["train_seconds"], 0),
                     _fmt(r["images_per_second"], 1)])
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
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    parser.add_argument("--steps", type=int, default=1000, help="training steps per method (batch 32)")
    parser.add_argument("--num", type=int, default=2000, help="images generated per method and sampling")
    parser.add_argument("--batch-size", type=int, default=500, help="generation batch size")
    parser.add_argument("--work", default="runs/bench_generation", help="checkpoints of the trained models")
    parser.add_argument("--reuse", action="store_true", help="reload models trained earlier with the same steps")
    parser.add_argument("--json", default=None, help="write the results here (default: benchmarks/results/"
                                                     "generation-<device>-<steps>.json)")
    parser.add_argument("--results", default=None, help="replace this benchmark's section of this Markdown file")
    parser.add_argument("--picture", default=None, help="write one row of samples per method here (PNG)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    info = machine(torch.device("cpu"))
    started = time.perf_counter()

    extractor = build_extractor("mnist-cnn")
    reference_images, held_out = reference_sets()
    reference = extract_features_and_logits(extractor, reference_images.split(500), "cpu")
    floor = score(extractor, reference, held_out)
    print(f"floor (2,000 held-out real digits vs the 4,000 reference digits): FD {floor['FD']:.2f}")

    rows, samples = [], {}
    for name in args.methods:
        method = METHODS[name]()
        model, train_seconds = train(method, args.steps, work, args.reuse)
        for label, sampler, noise, prior_settings in method.samplings:
            sampler = sampler or method.sampler
            saved = {key: getattr(model.prior, key) for key in prior_settings}
            for key, value in prior_settings.items():
                setattr(model.prior, key, value)
            begin = time.perf_counter()
            images, _ = generate_images(model, args.num, seed=0, sampler=sampler, noise=noise,
                                        batch_size=args.batch_size, device="cpu")
            seconds = time.perf_counter() - begin
            for key, value in saved.items():
                setattr(model.prior, key, value)
            result = score(extractor, reference, images)
            row = {"method": name, "family": method.family, "sampling": label or sampler,
                   "sampler": sampler, "noise": noise, "train_noise": method.train_noise,
                   "train_seconds": train_seconds, "sample_seconds": seconds,
                   "images_per_second": args.num / seconds, "description": method.description, **result}
            rows.append(row)
            samples[f"{name} {label}".strip()] = images
            print(f"{name:18s} {label:22s} FD {result['FD']:8.2f}  precision {result['precision']:.3f}  "
                  f"recall {result['recall']:.3f}  classes {result['class_entropy']:.3f}")
    total = time.perf_counter() - started

    headers, body = table(rows, floor)
    command = " ".join(([f"--methods {' '.join(args.methods)}"] if args.methods != list(METHODS) else [])
                       + [f"--steps {args.steps}", f"--num {args.num}"])
    title = (f"Generation on the embedded digits, {len(args.methods)} method(s) x {args.steps} training steps "
             f"(batch 32, "
             f"the same small U-Net), {args.num} images each, scored against 4,000 training digits in the feature "
             f"space of colddiff's MNIST classifier (`mnist-cnn`)")
    print(f"\n{title}\n")
    text = print_table(headers, body)
    markdown = "\n".join([
        (f"## Generation: cold, warm and hot at {args.steps} steps" if section_key(args.steps, args.methods)
         == str(args.steps) else f"## Generation at {args.steps} steps: {', '.join(args.methods)}"),
        "",
        f"`python -m benchmarks.bench_generation {command}` — {info['date']}, "
        f"{info['device_name']} ({info['cpu_threads']} threads), torch {info['torch']}, fp32; "
        f"{total / 60:.0f} min in all" + (" (models reloaded with `--reuse`: their training times are the ones "
                                          "recorded when they were trained)." if args.reuse else "."),
        "",
        title + ". Sorted by FD; the first row is the floor. Precision/recall: improved precision and recall "
        "(Kynkäänniemi et al. 2019, k = 3); class entropy: entropy of the predicted-digit histogram / log 10.",
        "",
        text,
    ])
    payload = {"benchmark": "generation", "machine": info, "steps": args.steps, "num": args.num,
               "total_seconds": total, "floor": floor, "results": rows, "table": text}
    json_path = args.json or f"benchmarks/results/generation-{info['device']}-{args.steps}.json"
    write_json(json_path, payload)
    if args.results:
        write_results(markdown, Path(args.results), section_key(args.steps, args.methods))
    if args.picture:
        print(f"wrote {picture(samples, Path(args.picture))}")
    return payload


if __name__ == "__main__":
    main()
