"""bench_time_to_quality runs end to end on CPU at a tiny budget: calibration, a run per recipe with FD against
training seconds, the repeat of the leading recipe, its JSON, RESULTS.md section and plot (figures are printed,
never asserted)."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_generation, bench_time_to_quality


@pytest.fixture
def small(monkeypatch):
    """The benchmark's machinery on less data: 400 reference and 200 floor digits, priors fitted on 64 images."""
    images = bench_generation.reference_sets()
    monkeypatch.setattr(bench_generation, "reference_sets", lambda: (images[0][:400], images[1][:200]))
    monkeypatch.setattr(bench_generation, "scoring", bench_generation.scoring.__wrapped__)
    for name in ("default", "ema-power"):
        recipe = bench_time_to_quality.RECIPES["quickstart"][name]
        monkeypatch.setitem(bench_time_to_quality.RECIPES["quickstart"], name, bench_generation.Recipe(
            name, model={**recipe.model, "prior_fit_images": 64}))
    monkeypatch.setitem(bench_time_to_quality.RECIPES["quickstart"], "bandwidth-selected", bench_generation.Recipe(
        "bandwidth-selected", select={"name": "bandwidth", "candidates": [0.3, 0.0], "num": 20}, train_as="default"))


def test_a_tiny_time_to_quality_run_writes_curves_against_training_seconds(tmp_path, small):
    results = tmp_path / "RESULTS.md"
    args = ["--method", "quickstart", "--recipes", "default", "ema-power", "--budget", "2", "--points", "2",
            "--num", "20", "--calibration-steps", "6", "--repeat", "1", "--work", str(tmp_path / "work"),
            "--json", str(tmp_path / "t.json"), "--results", str(results), "--plot", str(tmp_path / "t.png")]
    bench_time_to_quality.main(args)
    saved = json.loads((tmp_path / "t.json").read_text())
    assert [(r["recipe"], r["run"]) for r in saved["results"]][:2] == [("default", 0), ("ema-power", 0)]
    assert len(saved["results"]) == 3 and saved["results"][2]["run"] == 1  # the leading recipe once more
    for result in saved["results"]:
        seconds = [p["train_seconds"] for p in result["points"]]
        assert len(seconds) == 2 and 0 < seconds[0] < seconds[1] <= result["train_seconds"] + 1e-6
        assert result["steps_per_second"] > 0 and all(p["FD"] >= 0 for p in result["points"])
    assert saved["spread"]["runs"] == 2 and len(saved["spread"]["FD"]) == 2
    assert "Time to quality: quickstart" in results.read_text() and (tmp_path / "t.png").is_file()
    # --update keeps the other recipes' runs; a recipe that trains as another scores that run's models
    bench_time_to_quality.main(["--method", "quickstart", "--recipes", "ema-power", "bandwidth-selected", "--budget",
                                "2", "--points", "2", "--num", "20", "--calibration-steps", "6",
                                "--work", str(tmp_path / "work"), "--json", str(tmp_path / "t.json"), "--update"])
    results = json.loads((tmp_path / "t.json").read_text())["results"]
    assert sorted(r["recipe"] for r in results) == ["bandwidth-selected", "default", "default", "ema-power"]
    selected = next(r for r in results if r["recipe"] == "bandwidth-selected")
    default = next(r for r in results if r["recipe"] == "default" and r["run"] == 0)
    assert selected["curve"] == default["curve"] and selected["steps"] == default["steps"]
    assert all(p["selected"] in (0.3, 0.0) and len(p["selection"]) == 2 for p in selected["points"])
