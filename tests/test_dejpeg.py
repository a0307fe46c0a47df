"""JPEG artefact removal end to end: the digits config trains, a user's own .jpg files are restored with
``--level auto``, and a checkpoint names its transform by a string that reloading checks (tiny models made here)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

import colddiff.degradations as cd
from colddiff.checkpoint import AtomicCheckpointIO
from colddiff.cli import cli_main
from colddiff.data import EmbeddedMNISTDataModule
from colddiff.datasets import EmbeddedMNIST, ImageTransform
from colddiff.export import load_model
from colddiff.io import load_checkpoint
from colddiff.module import ColdDiffusion
from colddiff.nets import ConvNeXtUNet
from colddiff.sample_cli import main as sample_main

ROOT = Path(__file__).resolve().parents[1]
SIZE = 16


def _train(tmp: Path, degradation: cd.Degradation) -> Path:
    torch.manual_seed(0)
    model = ColdDiffusion(degradation, ConvNeXtUNet(in_channels=1, dim=8, dim_mults=(1, 2), num_blocks=1,
                                                    attention="none", image_size=SIZE),
                          image_size=SIZE, channels=1, val_sample_batches=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp, plugins=[AtomicCheckpointIO()])
    trainer.fit(model, EmbeddedMNISTDataModule(image_size=SIZE, batch_size=8))
    path = tmp / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def jpeg_ckpt(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("dejpeg"), cd.JPEG(5, quantize=True))


@pytest.fixture(scope="module")
def transform_ckpt(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("transform"), cd.Transform(4, "jpeg", end=20.0))


def test_the_digits_config_trains(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["fit", "--config", str(ROOT / "configs" / "dejpeg_mnist.yaml"), "--trainer.fast_dev_run", "2",
                    "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
                    "--trainer.enable_model_summary", "false"])
    assert cli.trainer.global_step == 2
    assert isinstance(cli.model.degradation, cd.JPEG) and cli.model.degradation.quantize
    assert cli.model.degradation.severity.round().tolist() == [100 - 9 * t for t in range(11)]


def test_a_users_own_jpeg_files_are_restored_at_their_estimated_levels(jpeg_ckpt, tmp_path):
    """Digits written as real JPEG files by Pillow, at sizes that are not multiples of 16, go through
    ``sample.py restore --level auto``: each file's level is estimated and written to restore.json, and the restored
    image keeps the file's size."""
    inputs = tmp_path / "my_jpegs"
    inputs.mkdir()
    sizes, qualities = [(16, 16), (20, 28), (24, 12)], [90, 40, 10]
    for i, ((h, w), q) in enumerate(zip(sizes, qualities)):
        digit = EmbeddedMNIST("test", ImageTransform(28, 1, train=False))[i][None]
        x = torch.nn.functional.interpolate(digit, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        Image.fromarray((x.clamp(0, 1).numpy() * 255).round().astype(np.uint8), "L").save(
            inputs / f"digit{i}.jpg", quality=q)
    out = tmp_path / "out"
    grid = sample_main(["restore", "--ckpt", str(jpeg_ckpt), "--input", str(inputs), "--level", "auto",
                        "--out", str(out)])
    assert grid.is_file()
    records = json.loads((out / "restore.json").read_text())["images"]
    assert [Path(r["file"]).name for r in records] == ["digit0.jpg", "digit1.jpg", "digit2.jpg"]
    assert all(r["level_source"] == "estimated" and 0 <= r["level"] <= 5 for r in records)
    assert all(len(r["estimate"]["curve"]) >= 3 for r in records)
    for i, (h, w) in enumerate(sizes):
        with Image.open(out / "restored" / f"digit{i}.jpg.png") as restored:
            assert restored.size == (w, h)


def test_a_checkpoint_records_its_transform_by_name_and_reloads(transform_ckpt, tmp_path):
    recorded = load_checkpoint(transform_ckpt)["hyper_parameters"]["degradation"]
    assert recorded["class_path"] == "colddiff.degradations.transform.Transform"
    assert recorded["init_args"]["function"] == "jpeg"
    model = load_model(transform_ckpt)
    x0 = torch.rand(2, 1, SIZE, SIZE)
    assert torch.equal(model.degradation(x0, 3), cd.Transform(4, "jpeg", end=20.0)(x0, 3))


@pytest.mark.parametrize("function", ["os.system", "builtins.eval", "subprocess.call"])
def test_a_checkpoint_naming_a_dangerous_function_is_refused(transform_ckpt, tmp_path, function):
    state = load_checkpoint(transform_ckpt)
    state["hyper_parameters"]["degradation"]["init_args"].update(
        function=function, options={"command": f"touch {tmp_path / 'pwned'}"})
    evil = tmp_path / "evil.ckpt"
    torch.save(state, evil)
    with pytest.raises(ValueError, match=rf"refusing to import '{function}' from a config"):
        load_model(evil)
    with pytest.raises(SystemExit):
        sample_main(["restore", "--ckpt", str(evil), "--input", str(tmp_path), "--level", "auto",
                     "--out", str(tmp_path / "out")])
    assert not (tmp_path / "pwned").exists()


def _transform_override(tmp_path: Path, **init_args) -> Path:
    override = tmp_path / "transform.yaml"
    override.write_text(json.dumps({"model": {"degradation": {"class_path": "colddiff.degradations.Transform",
                                                              "init_args": {"num_steps": 4, **init_args}}}}))
    return override


def test_a_training_config_names_a_registered_transform_but_never_another_function(tmp_path, capsys):
    quiet = ["--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
             "--trainer.enable_model_summary", "false", "--trainer.fast_dev_run", "1"]
    quickstart = str(ROOT / "configs" / "quickstart.yaml")
    cli = cli_main(["fit", "--config", quickstart, "--config", str(_transform_override(tmp_path, function="jpeg")),
                    *quiet])
    assert cli.model.degradation.function_name == "jpeg" and cli.trainer.global_step == 1
    marker = tmp_path / "pwned"
    evil = _transform_override(tmp_path, function="os.system", clean=0.0, end=1.0,
                               options={"command": f"touch {marker}"})
    with pytest.raises(SystemExit) as exit_info:  # train.py's one-line error, exit status 2
        cli_main(["fit", "--config", quickstart, "--config", str(evil), *quiet])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "refusing to import 'os.system' from a config" in err
    assert not marker.exists()
