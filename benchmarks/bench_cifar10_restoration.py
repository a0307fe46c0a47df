"""The paper's CIFAR-10 restoration tables (deblurring, inpainting, super-resolution) for the CPU-sized models.

    python ../shared/tools/prepare_data.py cifar10 data && python ../shared/tools/prepare_data.py cifar10-lossless data
    python train.py fit --config configs/deblur_cifar10_cpu.yaml      # and inpaint_cifar10_cpu, superres_cifar10_cpu
    python -m benchmarks.bench_cifar10_restoration \
        --extractor-weights ../shared/data/cifar10_classifier/resnet56-4bfd9763.th --curve deblur

For each task whose run folder holds ``checkpoints/last.ckpt``: :func:`colddiff.evaluation.evaluate_restoration` on
the lossless CIFAR-10 test images (``--test-root``, the 1,000 of ``data/cifar10_lossless/test``), at level ``T``, rows
Degraded (``x_T``), Direct (``R(x_T, T)``) and Sampled (the model's sampler, Algorithm 2 on every level), columns
FD in the feature space of the pretrained CIFAR-10 ResNet-56 (64-d, ``FD-resnet56``: never called FID), SSIM, PSNR and
RMSE; the paper's own figures beside them (``PAPER``, deblurring and inpainting FID only: its SSIM/RMSE could not be
verified).  ``--curve TASK`` also scores every ``step*.ckpt`` of that task's run (FD against training steps, of the
direct restoration: one network call per image where Algorithm 2 makes ``T``).  Writes
``benchmarks/results/cifar10-restoration-cpu.json``, a section of ``benchmarks/RESULTS.md`` (``--results``) and one
picture per task (columns x_T | direct | sampled | x0,
``docs/images/cifar10_<task>.png``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.bench_generation import write_results
from benchmarks.common import format_table, machine, print_table, write_json
from colddiff.datasets import ImageFolder, ImageTransform, find_images
from colddiff.evaluation import build_extractor, evaluate_restoration
from colddiff.io import save_png_atomic
from colddiff.pipeline import Pipeline

TASKS = {"deblur": "deblur_cifar10_cpu", "inpaint": "inpaint_cifar10_cpu", "superres": "superres_cifar10_cpu"}
#: the paper's CIFAR-10 figures (Bansal et al., Tables 1-2: FID of the 700k-step DDPM U-Net, Sampled / Direct)
PAPER = {"deblur": {"Sampled": {"FID": 80.08}, "Direct": {"FID": 83.69}},
         "inpaint": {"Sampled": {"FID": 8.92}, "Direct": {"FID": 9.97}},
         "superres": {}}


def picture(model: Pipeline, images: torch.Tensor, path: Path, seed: int = 0) -> Path:
    """Columns x_T | direct | sampled | x0 for a few test images (the training grids' layout)."""
    result = model.reconstruct(images, generator=torch.Generator().manual_seed(seed))
    grid = torch.stack([result.degraded, result.direct, result.sampled, result.x0], 1).flatten(0, 1)
    return save_png_atomic(grid, path, nrow=4, scale=3)


def score(model: Pipeline, dataset, extractor, batch_size: int, sampler: str | None = None
          ) -> tuple[dict, dict, float]:
    start = time.perf_counter()
    report = evaluate_restoration(model, dataset, sampler=sampler, extractor=extractor, batch_size=batch_size,
                                  device="cpu")
    return report.rows, report.protocol, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs", help="folder of the run folders (runs/<config name>/)")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--test-root", default="data/cifar10_lossless/test", help="the lossless test images")
    parser.add_argument("--extractor-weights", required=True, help="resnet56-4bfd9763.th (the CIFAR-10 ResNet-56)")
    parser.add_argument("--curve", choices=list(TASKS), default=None, help="also score every step*.ckpt of a task")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--json", default="benchmarks/results/cifar10-restoration-cpu.json")
    parser.add_argument("--results", default=None, help="replace this benchmark's section of this Markdown file")
    parser.add_argument("--pictures", default="docs/images", help="folder for the per-task pictures")
    args = parser.parse_args(argv)
    extractor = build_extractor("resnet56", args.extractor_weights)
    fd = extractor.metric_names()[0]  # "FD-resnet56"
    files = find_images(args.test_root)
    dataset = ImageFolder(files, ImageTransform(32, 3, train=False))
    print(f"{len(dataset)} test images from {args.test_root}", flush=True)
    payload: dict = {"benchmark": "cifar10-restoration", "machine": machine(torch.device("cpu")),
                     "test_root": args.test_root, "num_images": len(dataset), "extractor": "resnet56",
                     "paper": PAPER, "tasks": {}, "curve": None}
    for task in args.tasks:
        run = Path(args.runs) / TASKS[task]
        checkpoint = run / "checkpoints" / "last.ckpt"
        if not checkpoint.is_file():
            print(f"{task}: no {checkpoint}, skipped", flush=True)
            continue
        model = Pipeline.load(checkpoint)
        rows, protocol, seconds = score(model, dataset, extractor, args.batch_size)
        payload["tasks"][task] = {"checkpoint": str(checkpoint), "config": f"configs/{TASKS[task]}.yaml",
                                  "protocol": protocol, "rows": rows, "eval_seconds": seconds}
        headers = ["row", "FD-resnet56", "SSIM", "PSNR", "RMSE", "paper FID"]
        body = [[name, f"{r[fd]:.2f}", f"{r['SSIM']:.4f}", f"{r['PSNR']:.2f}",
                 f"{r['RMSE']:.4f}", str(PAPER[task].get(name, {}).get("FID", "-"))] for name, r in rows.items()]
        print(f"\n{task} ({protocol.get('sampler')}, {seconds:.0f} s)")
        payload["tasks"][task]["table"] = print_table(headers, body)
        # eight test images spread over the (class-sorted) folder: one of most classes, not eight aeroplanes
        shown = torch.stack([dataset[i] for i in torch.linspace(0, len(dataset) - 1, 8).long().tolist()])
        print(f"wrote {picture(model, shown, Path(args.pictures) / f'cifar10_{task}.png')}", flush=True)
    if args.curve:
        points = []
        for checkpoint in sorted((Path(args.runs) / TASKS[args.curve] / "checkpoints").glob("step*.ckpt")):
            # the direct restoration only (one network call per image; Algorithm 2 costs T): the curve's shape
            rows, _, seconds = score(Pipeline.load(checkpoint), dataset, extractor, args.batch_size, "direct")
            step = int(checkpoint.stem.removeprefix("step"))
            points.append({"step": step, **{f"Direct_{m}": rows["Direct"][m] for m in (fd, "SSIM", "PSNR", "RMSE")}})
            print(f"curve {args.curve} step {step}: {fd} direct {rows['Direct'][fd]:.2f} ({seconds:.0f} s)",
                  flush=True)
        payload["curve"] = {"task": args.curve, "points": points}
    write_json(args.json, payload)
    if args.results:
        info = payload["machine"]
        sections = [f"### {task} ({TASKS[task]}: {t['protocol'].get('sampler')} sampler, {t['eval_seconds']:.0f} s "
                    f"to score)\n\n{t['table']}" for task, t in payload["tasks"].items()]
        if payload["curve"]:
            curve = payload["curve"]
            sections.append(f"### FD-resnet56 of the direct restoration against training steps ({curve['task']})\n\n"
                            + format_table(["step", "FD-resnet56", "SSIM", "PSNR", "RMSE"],
                                           [[str(p["step"]), f"{p['Direct_' + fd]:.2f}", f"{p['Direct_SSIM']:.4f}",
                                             f"{p['Direct_PSNR']:.2f}", f"{p['Direct_RMSE']:.4f}"]
                                            for p in curve["points"]]))
        markdown = "\n\n".join([
            "## CIFAR-10 restoration, CPU-sized models",
            f"`python -m benchmarks.bench_cifar10_restoration` — {info['date']}, {info['device_name']} "
            f"({info['cpu_threads']} threads), torch {info['torch']}; {payload['num_images']} lossless CIFAR-10 test "
            "images at level T; FD in the feature space of the CIFAR-10 ResNet-56 (64-d, FD-resnet56, not FID); the "
            "paper's FID (700k steps of a 35.7 M-parameter network) beside it.", *sections])
        write_results(markdown, Path(args.results), "cifar10-restoration")
    return payload


if __name__ == "__main__":
    main()
