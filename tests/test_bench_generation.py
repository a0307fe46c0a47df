"""bench_generation runs end to end on CPU at a tiny budget and writes its JSON, its RESULTS.md section, picture and
curves (the figures themselves are printed, never asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_generation


def test_a_tiny_generation_benchmark_writes_its_table_section_picture_and_curves(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\nkept\n")
    args = ["--methods", "quickstart", "ddpm", "--steps", "2", "--num", "20", "--batch-size", "10",
            "--curve-every", "1", "--curve-num", "20", "--work", str(tmp_path / "work"),
            "--json", str(tmp_path / "g.json"), "--results", str(results), "--picture", str(tmp_path / "g.png"),
            "--curves", str(tmp_path / "c.png")]
    payload = bench_generation.main(args)
    saved = json.loads((tmp_path / "g.json").read_text())
    # the quickstart is scored as configured and with the other bandwidths of its prior; DDPM by DDIM and ancestrally
    assert [(r["method"], r["sampling"]) for r in saved["results"]] == [
        ("quickstart", "Algorithm 1, prior bandwidth 0.1 (as configured)"),
        ("quickstart", "Algorithm 1, prior bandwidth 0"), ("quickstart", "Algorithm 1, prior bandwidth 0.05"),
        ("quickstart", "Algorithm 1, 10 of 21 levels"), ("quickstart", "Algorithm 1, 5 of 21 levels"),
        ("ddpm", "DDIM, 20 steps"), ("ddpm", "ancestral (DDPM), 20 steps")] + [
        ("ddpm", f"{solver}, {n} steps") for solver in ("DPM-Solver++(2M)", "UniPC") for n in (20, 10, 5)] + [
        ("ddpm", "DDIM, 10 steps"), ("ddpm", "DDIM, 5 steps")]
    ddpm = saved["results"][5]
    assert ddpm["objective"] == "PredictEpsilon" and ddpm["loss"] == "l2" and ddpm["network_calls"] == 20
    assert saved["results"][0]["objective"] == "PredictX0" and saved["results"][0]["network_calls"] == 21
    assert saved["results"][-1]["network_calls"] == 5 and saved["results"][4]["network_calls"] == 5
    assert [r["network_calls"] for r in saved["results"][7:13]] == [20, 10, 5] * 2  # one call per solver step
    assert saved["floor"]["N_fake"] == 2000 and all(r["N_fake"] == 20 for r in saved["results"])
    assert [p["step"] for p in saved["curves"]["ddpm"]] == [1, 2]
    assert (tmp_path / "work" / "ddpm-2.seconds").is_file() and (tmp_path / "g.png").is_file()
    assert (tmp_path / "c.png").is_file()
    text = results.read_text()
    assert "kept" in text and text.count("<!-- bench_generation:2:quickstart+ddpm:start -->") == 1
    assert "| real vs real (floor) |" in text and payload["steps"] == 2
    # a rerun at another budget adds its own section; the same budget replaces its section
    bench_generation.write_results("## at 8 steps", results, bench_generation.section_key(8, ["quickstart", "ddpm"]))
    bench_generation.write_results("## again at 2 steps", results, "2:quickstart+ddpm")
    text = results.read_text()
    assert "## at 8 steps" in text and "## again at 2 steps" in text and "| real vs real (floor) |" not in text
    # --update re-runs the methods named and keeps the other methods' rows of the earlier run, with their date
    earlier = tmp_path / "earlier.json"
    earlier.write_text((tmp_path / "g.json").read_text())
    short = ["--steps", "2", "--num", "20", "--batch-size", "10", "--work", str(tmp_path / "work"), "--reuse"]
    merged = bench_generation.main(["--methods", "ddpm", *short, "--update", str(earlier)])
    assert [(r["method"], r["sampling"]) for r in merged["results"]] == [
        (r["method"], r["sampling"]) for r in saved["results"]]
    assert [r["measured"] for r in merged["results"][:5]] == [saved["machine"]["date"]] * 5
    assert merged["methods_run"] == ["ddpm"] and json.loads(earlier.read_text())["methods_run"] == ["ddpm"]
    with pytest.raises(ValueError, match="holds a run of 2 steps and 20 images; this run has --steps 2 --num 10"):
        bench_generation.main(["--methods", "ddpm", *short[:3], "10", *short[4:], "--update", str(earlier)])
    # --reuse reloads the trained model and its recorded training time, and samples what it sampled (issue 18)
    again = merged["results"][5]
    assert again["method"] == "ddpm" and again["measured"] == merged["machine"]["date"]
    assert again["train_seconds"] == pytest.approx(ddpm["train_seconds"], abs=1e-3)
    assert again["FD"] == pytest.approx(ddpm["FD"], rel=1e-6)


def test_a_subset_run_never_replaces_the_json_record_of_another():
    """The default JSON file follows the RESULTS.md section key: every method, or the subset named."""
    every = bench_generation.default_json_path("cpu", 2000, list(bench_generation.METHODS))
    subset = bench_generation.default_json_path("cpu", 2000, ["quickstart", "ddpm-v"])
    assert every.name == "generation-cpu-2000.json"
    assert subset.name == "generation-cpu-2000-quickstart+ddpm-v.json"
    assert every.parent == subset.parent == Path("benchmarks/results")


def test_one_step_errors_measure_the_reverse_step_against_its_size():
    """The IHDM diagnostic: for each checked level, the size of the step D(x0, k-1) - D(x0, k), the model's error on
    D(x0, k-1) from the noisy training input, and the size of that input noise (sigma sqrt(784) for 28x28 digits)."""
    import torch

    import colddiff.degradations as cd
    from colddiff.nets import ConvNeXtUNet
    from colddiff.objectives import PredictPrevious
    from colddiff.pipeline import Pipeline

    torch.manual_seed(0)
    op = cd.BlurNoise(10, blur="heat", heat_schedule="log", heat_sigma_min=0.5, heat_sigma_max=20.0, min_scale=0.0,
                      noise="none")
    net = ConvNeXtUNet(1, dim=8, dim_mults=(1, 2), num_blocks=1, attention="none", image_size=28)
    pipeline = Pipeline(op, net, PredictPrevious(), image_size=28, channels=1, sampler="naive").eval()
    rows = bench_generation.one_step_errors(pipeline, 0.01, num=16)
    assert [r["level"] for r in rows] == [1, 2, 4, 6, 8, 10]
    assert all(r["step"] > 0 and r["error"] > 0 for r in rows)
    assert all(abs(r["noise"] - 0.01 * 28) < 0.03 for r in rows)
    assert rows[0]["step"] > rows[-1]["step"]  # the first level (no blur -> 0.5 px) moves the most
