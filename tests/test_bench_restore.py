"""The restoration benchmark runs end to end on a tiny untrained model (figures are printed, never asserted)."""

from __future__ import annotations

import json

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
    rows = {r["row"] for r in saved["results"]}
    assert rows == {"degraded (no restoration)"} | {f"{s} | {level}" for s in ("improved", "direct")
                                                    for level in ("true t", "estimated t_hat", "fixed T", "fixed T/2")}
    assert all(r["N"] == 6 for r in saved["results"])
    assert [b["blur"] for b in saved["other_blurs"]] == ["box blur 7x7", "motion blur 1x9"]
    assert "| improved | estimated t_hat |" in saved["table"]
    assert Image.open(picture).size == (3 * (16 * 3 + 2) + 2, 3 * (16 * 3 + 2) + 2)


def test_bench_restore_without_a_checkpoint_says_how_to_make_one(tmp_path):
    with pytest.raises(SystemExit, match="configs/quickstart.yaml"):
        bench_restore.main(["--ckpt", str(tmp_path / "missing.ckpt")])
