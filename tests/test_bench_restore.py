"""The restoration benchmark runs end to end on a tiny untrained model (figures are printed, never asserted)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image

from benchmarks import bench_restore
from colddiff.degradations import GaussianBlur
from colddiff.export import export_model
from colddiff.module import ColdDiffusion
from colddiff.nets import UNet


@pytest.fixture
def tiny_export(tmp_path):
    torch.manual_seed(0)
    network = UNet(in_channels=1, dim=8, dim_mults=(1, 2), num_blocks=1, attention="none")
    model = ColdDiffusion(GaussianBlur(4, kernel_size=5, sigma=1.0), network, image_size=16, channels=1)
    return export_model(model, tmp_path / "tiny")


def test_bench_restore_writes_its_tables_json_and_picture(tiny_export, tmp_path):
    out, picture = tmp_path / "restore.json", tmp_path / "before_after.png"
    payload = bench_restore.main(["--ckpt", str(tiny_export), "--num", "6", "--batch-size", "4", "--device", "cpu",
                                  "--json", str(out), "--picture", str(picture), "--picture-num", "3"])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(payload))
    estimation = saved["estimation"]
    assert estimation["num_images"] == 6 and estimation["num_steps"] == 4 and estimation["candidate_levels"] == 5
    assert 0 <= estimation["median_abs_error"] <= 4 and estimation["evaluations_per_image_max"] <= 5
    rows = {(r["sampler"], r["level"]) for r in saved["results"]}
    assert rows == {("-", "none (the degraded input)")} | {(s, level) for s in ("improved", "direct")
                                                           for level in ("true t", "estimated t_hat", "fixed T",
                                                                         "fixed T/2")}
    degraded = sum(e["n"] for level, e in estimation["by_true_level"].items() if level != "0")
    assert all(r["N"] == degraded for r in saved["results"]) and degraded + estimation["clean_inputs"] == 6
    assert all(r["PSNR"] < float("inf") for r in saved["results"])
    assert [b["blur"] for b in saved["other_blurs"]] == ["box blur 7x7", "motion blur 1x9"]
    assert re.search(r"\| improved +\| estimated t_hat +\|", saved["table"])
    true_row = next(r for r in saved["results"] if (r["sampler"], r["level"]) == ("improved", "true t"))
    assert true_row["psnr_minus_true_level_psnr"] == 0.0
    assert Image.open(picture).size == (3 * (16 * 3 + 2) + 2, 3 * (16 * 3 + 2) + 2)


def test_bench_restore_without_a_checkpoint_says_how_to_make_one(tmp_path):
    with pytest.raises(SystemExit, match="configs/quickstart.yaml"):
        bench_restore.main(["--ckpt", str(tmp_path / "missing.ckpt")])
