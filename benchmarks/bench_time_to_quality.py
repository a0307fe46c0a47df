"""Quality per CPU-second: how good a generation model gets in a fixed training time on this machine.

    python -m benchmarks.bench_time_to_quality --method quickstart --budget 900          # every recipe of the method
    python -m benchmarks.bench_time_to_quality --method flow --recipes default min-snr --budget 900
    python -m benchmarks.bench_time_to_quality --method quickstart --recipes default --repeat 2   # timing spread
    python -m benchmarks.bench_time_to_quality --profile                                  # one training step, profiled

The cramming question (Geiping & Goldstein, arXiv 2212.14034: how far does a fixed compute budget go?) asked of this
family.  For a method of :mod:`benchmarks.bench_generation` (the same data, network, scoring and floor) and each
*recipe* (:class:`~benchmarks.bench_generation.Recipe`: one training setting changed at a time: a level draw, a loss
weighting, an EMA schedule, an optimiser setting, the batch, the width, ``torch.compile``, the threads), it

1. measures the recipe's training speed on a short run (steps per second after the first steps, and the start-up
   cost of those first steps: compilation, the prior's fit), and sets the number of steps that fits ``--budget``
   seconds of training (the cosine learning-rate decay ends there, as in every run of the benchmark);
2. trains that many steps, keeping the EMA model at ``--points`` evenly spaced steps with the **training seconds**
   spent until then (time spent saving excluded);
3. scores each kept model: ``--num`` images from the method's first sampling, FD-mnist-cnn, KD, improved precision
   and recall and class entropy against the 4,000 reference digits, beside the floor (real vs real).

``--repeat N`` trains the leading recipe (lowest final FD) ``N`` more times: the spread of its final training
seconds and FD is the timing noise of this machine.  Writes ``benchmarks/results/time-to-quality-<device>-<method>
.json``, a section of ``benchmarks/RESULTS.md`` (``--results``) and FD against training seconds (``--plot``).
A speed-up is kept only if it shows on this benchmark.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import bench_generation as bg
from benchmarks.common import machine, print_table, write_json

_POWER_EMA = dict(ema_decay=None, ema_every=1, ema_start=0)
#: the recipes of each method, each one change from ``default`` (bench_generation's training)
RECIPES: dict[str, dict[str, bg.Recipe]] = {
    "quickstart": {r.name: r for r in (
        bg.Recipe("default", description="bench_generation's training: batch 32, Adam 2e-3 cosine, EMA 0.99 from "
                                         "step 200, dim 16"),
        bg.Recipe("ema-power", model=dict(_POWER_EMA, ema_sigma_rel=0.10),
                  description="EDM2's power-function EMA, sigma_rel 0.10 (arXiv 2312.02696)"),
        bg.Recipe("warmup", warmup=200, description="linear learning-rate warm-up over 200 steps"),
        bg.Recipe("lr-4e-3", lr=4e-3, description="Adam 4e-3"),
        bg.Recipe("batch-64", batch_size=64, description="batch 64"),
        bg.Recipe("width-24", width=24, description="network dim 24"),
        bg.Recipe("compile", compile=True, description="torch.compile (inductor, CPU)"),
        bg.Recipe("threads-1", threads=1, description="one torch thread"),
        bg.Recipe("bandwidth-selected", select={"name": "bandwidth", "candidates": [0.0, 0.025, 0.05, 0.1]},
                  train_as="default", description="the default run's models with the prior's bandwidth chosen on "
                                                   "held-out digits (SelectPriorSetting)"),
    )},
}
RECIPES["flow"] = {**{k: v for k, v in RECIPES["quickstart"].items() if k != "bandwidth-selected"},
                   "min-snr": bg.Recipe("min-snr", objective={"weighting": "min-snr"},
                                        description="min-SNR-5 loss weighting (arXiv 2303.09556)")}
RECIPES["ddpm-v"] = {**RECIPES["flow"],
                     "speed": bg.Recipe("speed", objective={"levels": "speed"},
                                        description="SpeeD's asymmetric level draw (arXiv 2405.17403)")}


def calibrate(method: bg.Method, recipe: bg.Recipe, work: Path, steps: int = 60, skip: int = 10
              ) -> tuple[float, float]:
    """``(start-up seconds, steps per second)`` of a recipe: a short run of ``steps`` steps, keeping the time of its
    first ``skip`` steps (the prior's fit, compilation, warm caches) apart from the rate of the others."""
    bg.train(method, steps, work / "calibration", reuse=False, curve_every=skip, recipe=recipe)
    tag = method.name if recipe.name == "default" else f"{method.name}-{recipe.name}"
    times = {int(k): v for k, v in json.loads(
        (work / "calibration" / f"{tag}-{steps}-curve" / "times.json").read_text()).items()}
    first, last = times[skip], times[max(times)]
    return first, (max(times) - skip) / (last - first)


def run(method_name: str, recipe: bg.Recipe, budget: float, points: int, num: int, work: Path,
        scoring: tuple, run_index: int = 0, calibration_steps: int = 60, trained: dict | None = None
        ) -> dict[str, Any]:
    """Calibrate, train for the budget, score the kept models: one curve of FD against training seconds.  A recipe
    that trains as another (``train_as``) scores that recipe's run (``trained``: its result) instead."""
    method = bg.METHODS[method_name]()
    if recipe.train_as is not None:
        if trained is None:
            raise ValueError(f"recipe {recipe.name!r} scores the run of {recipe.train_as!r}: run that recipe first")
        startup, rate, steps, seconds = (trained[k] for k in ("startup_seconds", "steps_per_second", "steps",
                                                              "train_seconds"))
        curve = Path(trained["curve"])
        print(f"{method_name}/{recipe.name}: the models of {recipe.train_as}'s run", flush=True)
    else:
        startup, rate = calibrate(method, recipe, work, calibration_steps, max(1, calibration_steps // 6))
        steps = max(points, int((budget - startup) * rate) // points * points)
        every = steps // points
        print(f"{method_name}/{recipe.name}: {rate:.2f} steps/s after {startup:.1f} s of start-up -> {steps} steps",
              flush=True)
        folder = work / f"run{run_index}"
        _, seconds = bg.train(method, steps, folder, reuse=False, curve_every=every, recipe=recipe)
        tag = method.name if recipe.name == "default" else f"{method.name}-{recipe.name}"
        curve = folder / f"{tag}-{steps}-curve"
    times = {int(k): v for k, v in json.loads((curve / "times.json").read_text()).items()}
    extractor, reference, _ = scoring
    sampling = method.samplings[0]
    result = {"recipe": recipe.name, "description": recipe.description, "steps": steps, "steps_per_second": rate,
              "startup_seconds": startup, "train_seconds": seconds, "sampling": sampling.label, "points": [],
              "curve": str(curve), "train_as": recipe.train_as}
    for step in sorted(times):
        pipeline = bg.Pipeline.load(curve / f"step{step:06d}")
        chosen = {}
        if recipe.select:  # the prior setting chosen on held-out digits, as SelectPriorSetting does after training
            value, seconds_taken, table = bg.select_prior(pipeline, recipe.select, extractor)
            chosen = {"selected": value, "selection_seconds": seconds_taken, "selection": table}
        images, _, calls = bg.generate(pipeline, sampling, num, 500)
        scores = bg.score(extractor, reference, images, kid_subset_size=min(1000, num))
        result["points"].append({"step": step, "train_seconds": times[step], "network_calls": calls, **chosen,
                                 **{k: scores[k] for k in ("FD", "KD", "precision", "recall", "class_entropy")}})
        print(f"  step {step:5d}  {times[step]:6.0f} s  FD {scores['FD']:7.2f}  precision {scores['precision']:.3f}"
              f"  recall {scores['recall']:.3f}  classes {scores['class_entropy']:.3f}"
              + (f"  ({recipe.select.get('name', 'bandwidth')} {chosen['selected']:g}, chosen in "
                 f"{chosen['selection_seconds']:.0f} s)" if chosen else ""), flush=True)
    return result


def profile_step(method_name: str = "quickstart", steps: int = 30) -> dict[str, Any]:
    """Where one training step of the method's network goes (batch 32, bench_generation's recipe, no Lightning):
    forward, loss, backward, optimiser and EMA, with the data path timed separately; prints torch.profiler's top
    operators."""
    from torch.profiler import ProfilerActivity, profile

    from colddiff.data import EmbeddedMNISTDataModule
    from colddiff.ema import ema_update
    from colddiff.module import ColdDiffusion

    method = bg.METHODS[method_name]()
    torch.manual_seed(0)
    model = ColdDiffusion(network=bg.network(), image_size=28, channels=1, **method.model(), ema_decay=0.99,
                          ema_every=1, ema_start=0, channels_last=True)
    data = EmbeddedMNISTDataModule(image_size=28, channels=1, batch_size=32, num_workers=0)
    data.setup("fit")
    loader = iter(data.train_dataloader())
    optimizer = torch.optim.Adam(model.network.parameters(), lr=2e-3)
    batches = [next(loader) for _ in range(steps)]
    start = time.perf_counter()
    for _ in range(steps):
        next(loader)
    data_seconds = (time.perf_counter() - start) / steps

    def step(batch: Any) -> None:
        loss = model.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema_update(model.ema_network, model.network, 0.99)

    for batch in batches[:5]:
        step(batch)
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    step_seconds = (time.perf_counter() - start) / steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches[:10]:
            step(batch)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    print(table)
    print(f"{method_name}: {1 / step_seconds:.2f} training steps/s without Lightning ({step_seconds * 1e3:.1f} ms a "
          f"step), data path {data_seconds * 1e3:.1f} ms a batch, {torch.get_num_threads()} threads")
    return {"steps_per_second": 1 / step_seconds, "step_ms": step_seconds * 1e3, "data_ms": data_seconds * 1e3,
            "threads": torch.get_num_threads(), "profile": table}


def plot(results: list[dict[str, Any]], floor: float, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2))
    for result in results:
        points = result["points"]
        axes.plot([p["train_seconds"] for p in points], [p["FD"] for p in points], marker="o", markersize=3,
                  label=f"{result['method']}/{result['recipe']}" + (f" #{result['run']}" if result.get("run") else ""))
    axes.axhline(floor, color="grey", linestyle="--", label="floor (real vs real)")
    axes.set_yscale("log")
    axes.set_xlabel("training seconds (CPU)")
    axes.set_ylabel("FD-mnist-cnn")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=6, ncol=2)
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=sorted(RECIPES), default="quickstart")
    parser.add_argument("--recipes", nargs="+", default=None, help="recipes to run (default: all of the method's)")
    parser.add_argument("--budget", type=float, default=900.0, help="training seconds per recipe")
    parser.add_argument("--points", type=int, default=6, help="models kept and scored per run")
    parser.add_argument("--num", type=int, default=1000, help="images generated per point")
    parser.add_argument("--repeat", type=int, default=0, help="extra runs of the leading recipe (timing spread)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--calibration-steps", type=int, default=60, help="steps of the speed measurement")
    parser.add_argument("--work", default="runs/bench_time_to_quality")
    parser.add_argument("--json", default=None)
    parser.add_argument("--update", action="store_true", help="keep the JSON's other recipes, replace these")
    parser.add_argument("--results", default=None, help="replace this benchmark's section of this Markdown file")
    parser.add_argument("--plot", default=None, help="FD against training seconds (PNG)")
    parser.add_argument("--profile", action="store_true", help="profile one training step and exit")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine(torch.device("cpu"))
    if args.profile:
        return profile_step(args.method)
    names = args.recipes or list(RECIPES[args.method])
    unknown = [n for n in names if n not in RECIPES[args.method]]
    if unknown:
        raise SystemExit(f"unknown recipes for {args.method}: {unknown}; known: {sorted(RECIPES[args.method])}")
    json_path = Path(args.json or f"benchmarks/results/time-to-quality-{info['device']}-{args.method}.json")
    earlier = json.loads(json_path.read_text()) if args.update and json_path.is_file() else None
    scoring = bg.scoring()
    floor = scoring[2]
    work = Path(args.work) / args.method
    results = []
    started = time.perf_counter()
    previous = {r["recipe"]: r for r in (earlier or {}).get("results", []) if r.get("run", 0) == 0}
    for name in names:
        recipe = RECIPES[args.method][name]
        trained = next((r for r in results if r["recipe"] == recipe.train_as), previous.get(recipe.train_as))
        result = run(args.method, recipe, args.budget, args.points, args.num, work / name, scoring,
                     calibration_steps=args.calibration_steps, trained=trained)
        results.append({"method": args.method, "run": 0, "measured": info["date"], **result})
    if args.repeat:
        leader = min((r for r in results if r["train_as"] is None), key=lambda r: r["points"][-1]["FD"])
        for i in range(1, args.repeat + 1):
            result = run(args.method, RECIPES[args.method][leader["recipe"]], args.budget, args.points, args.num,
                         work / f"{leader['recipe']}-repeat", scoring, run_index=i,
                         calibration_steps=args.calibration_steps)
            results.append({"method": args.method, "run": i, "measured": info["date"], **result})
    if earlier is not None:
        results = [r for r in earlier["results"] if r["recipe"] not in names] + results
    headers = ["recipe", "run", "steps", "steps/s", "start-up s", "train s", "FD-mnist-cnn", "precision", "recall",
               "class entropy", "best FD (at s)"]
    body = [["real vs real (floor)", "-", "-", "-", "-", "-", f"{floor['FD']:.2f}", f"{floor['precision']:.3f}",
             f"{floor['recall']:.3f}", f"{floor['class_entropy']:.3f}", "-"]]
    for r in sorted(results, key=lambda r: r["points"][-1]["FD"]):
        last, best = r["points"][-1], min(r["points"], key=lambda p: p["FD"])
        body.append([r["recipe"], str(r["run"]), str(r["steps"]), f"{r['steps_per_second']:.2f}",
                     f"{r['startup_seconds']:.1f}", f"{r['train_seconds']:.0f}", f"{last['FD']:.2f}",
                     f"{last['precision']:.3f}", f"{last['recall']:.3f}", f"{last['class_entropy']:.3f}",
                     f"{best['FD']:.2f} ({best['train_seconds']:.0f})"])
    text = print_table(headers, body)
    repeated = [r["recipe"] for r in results if r["run"] > 0]
    repeats = [r for r in results if repeated and r["recipe"] == repeated[0] and r["train_as"] is None]
    spread = None
    if len(repeats) > 1:
        seconds = [r["train_seconds"] for r in repeats]
        fds = [r["points"][-1]["FD"] for r in repeats]
        spread = {"recipe": repeats[0]["recipe"], "runs": len(repeats), "train_seconds": seconds, "FD": fds,
                  "train_seconds_range": max(seconds) - min(seconds), "FD_range": max(fds) - min(fds),
                  "FD_stdev": statistics.stdev(fds)}
        print(f"timing noise, {len(repeats)} runs of {spread['recipe']}: training {min(seconds):.0f}-"
              f"{max(seconds):.0f} s, FD {min(fds):.2f}-{max(fds):.2f}")
    payload = {"benchmark": "time-to-quality", "machine": info, "method": args.method, "budget": args.budget,
               "points": args.points, "num": args.num, "floor": floor, "results": results, "spread": spread,
               "table": text, "total_seconds": time.perf_counter() - started}
    write_json(json_path, payload)
    if args.results:
        command = f"python -m benchmarks.bench_time_to_quality --method {args.method} --budget {args.budget:g}"
        markdown = "\n".join([
            f"## Time to quality: {args.method}, {args.budget:g} s of training per recipe", "",
            f"`{command}` — {info['date']}, {info['device_name']} ({info['cpu_threads']} threads), torch "
            f"{info['torch']}; {args.num} images per point, scored against 4,000 training digits (mnist-cnn "
            "features); the last point of each run is its budget.", "", text])
        bg.write_results(markdown, Path(args.results), f"time-to-quality:{args.method}")
    if args.plot:
        title = (f"{args.method}: FD against training seconds ({info['cpu_threads']} CPU threads, "
                 f"{args.num} images per point)")
        print(f"wrote {plot(results, floor['FD'], Path(args.plot), title)}")
    return payload


if __name__ == "__main__":
    main()
