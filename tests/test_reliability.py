"""Reliability and security: crash and resume, atomic saves, SIGTERM, safe loading, validated configs,
reproducibility, and 2-process DDP on CPU."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from colddiff.checkpoint import AtomicCheckpointIO
from colddiff.cli import cli_main
from colddiff.io import load_checkpoint
from tests.probes import tensor_digest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def run_config(tmp_path: Path, max_steps: int, every: int, grid_every: int = 0, probe: bool = True,
               extra_trainer: dict | None = None) -> Path:
    """An override of the quickstart config: tiny network, all outputs under ``tmp_path``."""
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(tmp_path / "checkpoints"), "every_n_train_steps": every,
                                "save_last": True, "save_top_k": -1, "save_on_exception": True,
                                "filename": "step{step:07d}", "auto_insert_metric_name": False}},
                 {"class_path": "colddiff.callbacks.SampleGrid",
                  "init_args": {"every_n_steps": grid_every, "num_images": 2, "scale": 1}}]
    if probe:
        callbacks.append({"class_path": "tests.probes.StateProbe", "init_args": {"out": str(tmp_path / "probe")}})
    config = {
        "trainer": {"max_steps": max_steps, "default_root_dir": str(tmp_path), "enable_progress_bar": False,
                    "enable_model_summary": False, "limit_val_batches": 0, "num_sanity_val_steps": 0,
                    "logger": [{"class_path": f"lightning.pytorch.loggers.{name}",
                                "init_args": {"save_dir": str(tmp_path), "name": "", "version": None}}
                               for name in ("TensorBoardLogger", "CSVLogger")],
                    "callbacks": callbacks, **(extra_trainer or {})},
        "model": {"network": {"class_path": "colddiff.nets.ConvNeXtUNet",
                              "init_args": {"dim": 8, "dim_mults": [1, 2], "num_blocks": 1, "attention": "none"}},
                  "ema_start": 2, "ema_every": 1, "val_sample_steps": 2, "sample_steps": 2},
        "data": {"init_args": {"image_size": 16, "batch_size": 8, "val_size": 8}},
    }
    path = tmp_path / "override.yaml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def train_command(override: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(QUICKSTART), "--config", str(override),
            *extra]


def wait_for(predicate, timeout: float, process: subprocess.Popen | None = None) -> None:
    start = time.time()
    while not predicate():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"training exited early with {process.returncode}: {process.stderr.read()[-3000:]}")
        if time.time() - start > timeout:
            raise AssertionError("timed out")
        time.sleep(0.2)


def heartbeat(tmp_path: Path) -> int:
    path = tmp_path / "probe" / "heartbeat-rank0.txt"
    try:
        return int(path.read_text() or -1)
    except (FileNotFoundError, ValueError):
        return -1


def popen(command: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_sigkill_mid_run_then_resume_restores_everything(tmp_path):
    override = run_config(tmp_path, max_steps=100_000, every=5)
    process = popen(train_command(override))
    try:
        wait_for(lambda: heartbeat(tmp_path) >= 12, 240, process)
    finally:
        process.kill()  # SIGKILL: no handler runs
        process.wait()
    load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")  # intact and loadable
    # the kill may land while last.ckpt is being rewritten (the previous one survives): `--ckpt_path last` resumes
    # from the newest complete checkpoint by its recorded step
    saved = [load_checkpoint(p) for p in (tmp_path / "checkpoints").glob("*.ckpt")]
    last = max(saved, key=lambda c: c["global_step"])
    step = last["global_step"]
    assert step >= 10 and step % 5 == 0
    rng_state = next(v for k, v in last["callbacks"].items() if "RNGState" in k)

    resumed = subprocess.run(train_command(override, "--ckpt_path", "last", "--trainer.max_steps", str(step + 5)),
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    start = json.loads((tmp_path / "probe" / "start-rank0.json").read_text())
    end = json.loads((tmp_path / "probe" / "end-rank0.json").read_text())
    assert start["global_step"] == step and end["global_step"] == step + 5
    optimizer_steps = [s["step"] for s in last["optimizer_states"][0]["state"].values()]
    assert start["adam_step"] == float(optimizer_steps[0]) == step
    ema = [v for k, v in last["state_dict"].items() if k.startswith("ema_network.")]
    assert start["ema"] == tensor_digest(ema)
    assert start["torch_rng"] == tensor_digest([rng_state["torch"]])


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    def crash(fd):
        raise OSError("disk full (simulated crash while saving)")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="simulated crash"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    previous = io.load_checkpoint(path)
    assert previous["global_step"] == 1 and torch.equal(previous["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no half-written file left behind


def test_sigterm_saves_a_checkpoint_then_exits(tmp_path):
    override = run_config(tmp_path, max_steps=100_000, every=1000)
    process = popen(train_command(override))
    wait_for(lambda: heartbeat(tmp_path) >= 3, 240, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-3000:]
    assert "received SIGTERM" in stderr
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert saved["global_step"] >= 3  # no periodic checkpoint was due (every 1000 steps): this one is SIGTERM's


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/colddiff_pwned_on_resume"),))


def test_resuming_from_a_hostile_checkpoint_is_refused(tmp_path, capsys):
    marker = Path("/tmp/colddiff_pwned_on_resume")
    marker.unlink(missing_ok=True)
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "global_step": 3, "payload": _Payload()}, evil)
    override = run_config(tmp_path, max_steps=5, every=5, probe=False)
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", str(QUICKSTART), "--config", str(override), "--ckpt_path", str(evil)])
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize("content,message", [
    (b"", "the file is empty (0 bytes)"),
    (b"epoch: 3\nthis is a text file\n", "it is not a PyTorch checkpoint"),
    ("truncated", "the file is truncated or not a checkpoint"),
])
def test_unreadable_resume_files_get_one_line_naming_the_file(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.ckpt"
    if content == "truncated":
        override = run_config(tmp_path / "good", max_steps=2, every=2, probe=False)
        cli_main(["fit", "--config", str(QUICKSTART), "--config", str(override)])
        content = (tmp_path / "good" / "checkpoints" / "last.ckpt").read_bytes()[:4000]
    bad.write_bytes(content)
    override = run_config(tmp_path, max_steps=4, every=2, probe=False)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(QUICKSTART), "--config", str(override), "--ckpt_path", str(bad)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and str(bad) in err
    assert "Traceback" not in err


@pytest.mark.parametrize("override,match", [
    (["--model.degradation.init_args.num_steps", "0"], "num_steps must be a positive int, got 0"),
    (["--model.degradation.init_args.num_steps", "-3"], "num_steps must be a positive int, got -3"),
    (["--data.init_args.batch_size", "0"], "batch_size must be a positive int, got 0"),
    (["--data.init_args.image_size", "32", "--model.degradation", "colddiff.degradations.Pixelate",
      "--model.degradation.init_args.num_steps", "8"],
     r"divisible by 2\*\*8 = 256, got 32x32; the largest num_steps a 32x32 image allows is 5"),
    (["--model.degradation.init_args.sigma", "-2"], r"sigmas .*>= 0"),
    (["--model.degradation.init_args.kernel_size", "8"], "kernel_size must be a positive odd int, got 8"),
    (["--model.degradation.init_args.sigma", "0"], "every step's sigma must be > 0"),
    (["--data.init_args.image_size", "-28"], "image_size must be a positive int, got -28"),
    (["--data.init_args.image_size", "30", "--model.network.init_args.dim_mults", "[1, 2, 4]"],
     r"divisible by 2\*\*2 = 4.*got 30x30"),
    (["--model.degradation", "colddiff.degradations.Pixelate", "--model.degradation.init_args.num_steps", "3"],
     r"Pixelate: halving pixelation with num_steps=3 needs image sides divisible by 2\*\*3 = 8, got 28x28"),
    (["--model.degradation", "colddiff.degradations.Desaturate", "--model.degradation.init_args.num_steps", "5"],
     "the degradation expects 3 channels but channels=1"),
])
def test_invalid_configs_fail_before_training_naming_the_field(override, match, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(QUICKSTART), "--trainer.default_root_dir", str(tmp_path), *override])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("train.py: error:")]
    assert len(lines) == 1 and re.search(match, lines[0]), err
    assert not (tmp_path / "checkpoints").exists()


def _fit(folder: Path, max_steps: int, *extra: str) -> object:
    override = run_config(folder, max_steps=max_steps, every=2, probe=False)
    return cli_main(["fit", "--config", str(QUICKSTART), "--config", str(override), *extra])


def test_a_resume_with_a_changed_model_config_is_refused_or_uses_the_new_config(tmp_path, capsys):
    _fit(tmp_path, 2)
    with pytest.raises(SystemExit):
        _fit(tmp_path, 4, "--ckpt_path", "last", "--model.degradation.init_args.sigma", "3.0")
    err = capsys.readouterr().err
    assert "another model config" in err and "degradation: init_args.sigma 1.5 -> 3.0" in err
    assert not (tmp_path / "checkpoints" / "step0000004.ckpt").exists()  # nothing trained
    cli = _fit(tmp_path, 4, "--ckpt_path", "last", "--model.degradation.init_args.sigma", "3.0",
               "--resume_with_config_changes", "true")
    assert cli.trainer.global_step == 4
    assert torch.allclose(cli.model.degradation.sigmas, torch.full((10,), 3.0))  # trained with what it records
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert saved["hyper_parameters"]["degradation"]["init_args"]["sigma"] == 3.0
    assert torch.allclose(saved["state_dict"]["degradation.sigmas"], torch.full((10,), 3.0))


def test_a_resume_from_another_models_checkpoint_is_refused(tmp_path, capsys):
    _fit(tmp_path / "other", 2, "--model.degradation", "colddiff.degradations.GaussianMask",
         "--model.degradation.init_args.num_steps", "10")
    with pytest.raises(SystemExit):
        _fit(tmp_path / "mine", 2, "--ckpt_path", str(tmp_path / "other" / "checkpoints" / "last.ckpt"))
    err = capsys.readouterr().err
    assert "another model config" in err and "colddiff.degradations.GaussianMask" in err


def test_last_resumes_from_the_newest_complete_checkpoint_and_cleans_orphans(tmp_path):
    """A kill while last.ckpt was being written leaves the previous last.ckpt (older than the newest periodic one)
    and a temporary file: the resume continues from the newest step and removes the orphan."""
    _fit(tmp_path, 4)
    folder = tmp_path / "checkpoints"
    (folder / "last.ckpt").write_bytes((folder / "step0000002.ckpt").read_bytes())  # last.ckpt one interval behind
    orphan = folder / ".last.ckpt.99999.tmp"
    orphan.write_bytes(b"half a checkpoint")
    cli = _fit(tmp_path, 6, "--ckpt_path", "last")
    assert cli.trainer.global_step == 6
    assert not orphan.exists()
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step0000002.ckpt", "step0000004.ckpt",
                                                         "step0000006.ckpt"]  # no step0000004-v1.ckpt


def test_two_trainings_cannot_share_a_run_folder(tmp_path, capsys):
    from colddiff.cli import RunFolderLock

    held = RunFolderLock(tmp_path)  # another training holds the folder
    with pytest.raises(SystemExit):
        _fit(tmp_path, 2)
    assert "another training is running" in capsys.readouterr().err
    assert not list(tmp_path.glob("version_*")) and not (tmp_path / "checkpoints").exists()
    del held


def test_unknown_sampler_fails_at_parse_time(capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", str(QUICKSTART), "--model.sampler", "ddim", "--print_config"])
    err = capsys.readouterr().err
    assert "model.sampler" in err and "improved" in err


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path):
    """Resuming mid-epoch restores weights, optimiser, EMA, RNG and the place in the data order exactly."""
    def fit(folder: Path, max_steps: int, *extra: str) -> dict:
        override = run_config(folder, max_steps=max_steps, every=4, probe=False, extra_trainer={"deterministic": True})
        cli_main(["fit", "--config", str(QUICKSTART), "--config", str(override), "--seed_everything", "3", *extra])
        return load_checkpoint(folder / "checkpoints" / "last.ckpt")

    straight = fit(tmp_path / "straight", 8)
    fit(tmp_path / "interrupted", 4)
    resumed = fit(tmp_path / "interrupted", 8, "--ckpt_path", "last")
    assert straight["global_step"] == resumed["global_step"] == 8
    assert straight["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"seed": 3, "pass": 0, "batches": 8}]
    a, b = straight["state_dict"], resumed["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    moments = [(s["exp_avg"], s["exp_avg_sq"]) for s in straight["optimizer_states"][0]["state"].values()]
    resumed_moments = [(s["exp_avg"], s["exp_avg_sq"]) for s in resumed["optimizer_states"][0]["state"].values()]
    assert all(torch.equal(x, y) for m, n in zip(moments, resumed_moments) for x, y in zip(m, n))


def test_two_seeded_deterministic_runs_are_bit_identical(tmp_path):
    results = []
    for name in ("a", "b"):
        folder = tmp_path / name
        override = run_config(folder, max_steps=6, every=6, grid_every=6, probe=False,
                              extra_trainer={"deterministic": True})
        cli_main(["fit", "--config", str(QUICKSTART), "--config", str(override), "--seed_everything", "7"])
        state = load_checkpoint(folder / "checkpoints" / "last.ckpt")["state_dict"]
        grid = next(folder.glob("version_*/grids/step_0000006.png")).read_bytes()
        results.append((state, grid))
    (a, grid_a), (b, grid_b) = results
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert grid_a == grid_b


def test_ddp_two_processes_on_cpu(tmp_path):
    override = run_config(tmp_path, max_steps=6, every=3, grid_every=3,
                          extra_trainer={"strategy": "ddp", "devices": 2, "accelerator": "cpu"})
    result = subprocess.run(train_command(override), cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    ends = [json.loads((tmp_path / "probe" / f"end-rank{r}.json").read_text()) for r in (0, 1)]
    assert [e["world_size"] for e in ends] == [2, 2] and [e["global_step"] for e in ends] == [6, 6]
    assert ends[0]["ema"] == ends[1]["ema"] and ends[0]["weights"] == ends[1]["weights"]  # EMA stays consistent
    runs = list(tmp_path.glob("version_*"))
    assert len(runs) == 1  # one run folder: rank 0 writes logs, config and grids
    assert sorted(p.name for p in (runs[0] / "grids").iterdir()) == ["step_0000003.png", "step_0000006.png"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt", "step0000003.ckpt",
                                                                           "step0000006.ckpt"]
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert tensor_digest([v for k, v in saved["state_dict"].items() if k.startswith("ema_network.")]) == \
        ends[0]["ema"]
    assert Image.open(runs[0] / "grids" / "step_0000006.png").size == (4 * 18 + 2, 2 * 18 + 2)


# ------------------------------------------------------------------------ sample.py / evaluate.py: files and outputs
# Tiny models made without training (tests/helpers.py), images made here: each case is about the files.
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    from tests.helpers import save_tiny_checkpoint, tiny_model

    return save_tiny_checkpoint(tiny_model(), tmp_path_factory.mktemp("tiny") / "tiny.ckpt")


def _grey(path: Path, value: int = 90, size: int = 16, mode: str = "L", fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8), "L").convert(mode).save(path, format=fmt)
    return path


def _sample(*args: str) -> Path:
    from colddiff.sample_cli import main

    return main(list(args))


def _one_line_error(capsys, main, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1, err
    return err


def _sample_error(capsys, *args: str) -> str:
    from colddiff.sample_cli import main

    return _one_line_error(capsys, main, *args)


def _evaluate_error(capsys, *args: str) -> str:
    from colddiff.evaluate_cli import main

    return _one_line_error(capsys, main, *args)


def _restore(ckpt: Path, source: Path, out: Path, *extra: str) -> list[str]:
    return ["restore", "--ckpt", str(ckpt), "--input", str(source), "--out", str(out), "--level", "2", "--steps", "1",
            *extra]


def test_restore_never_overwrites_its_inputs(tiny_ckpt, tmp_path, capsys):
    images = tmp_path / "photos" / "restored"  # the user's own folder happens to be called restored/
    originals = {p: p.read_bytes() for p in (_grey(images / "a.png", 10), _grey(images / "b.png", 200))}
    err = _sample_error(capsys, *_restore(tiny_ckpt, images, tmp_path / "photos"))
    assert f"refusing to write '{images / 'a.png'}'" in err and "it is the input file" in err
    assert all(p.read_bytes() == data for p, data in originals.items())
    assert not (tmp_path / "photos" / "restore.json").exists()  # refused before any work


def test_inputs_whose_output_names_collide_get_distinct_outputs(tiny_ckpt, tmp_path, capsys):
    source = tmp_path / "in"
    for name, value in (("a.png", 10), ("a.jpg", 60), ("b.png", 110), ("b.PNG", 160)):
        _grey(source / name, value, fmt="JPEG" if name.endswith(".jpg") else "PNG")
    _sample(*_restore(tiny_ckpt, source, tmp_path / "out"))
    restored = tmp_path / "out" / "restored"
    assert sorted(p.name for p in restored.iterdir()) == ["a.jpg.png", "a.png", "b.PNG.png", "b.png"]
    records = json.loads((tmp_path / "out" / "restore.json").read_text())["images"]
    assert sorted(r["output"] for r in records) == [f"restored/{n}" for n in ("a.jpg.png", "a.png", "b.PNG.png",
                                                                                "b.png")]
    _grey(source / "a.jpg.png", 30)  # its output name is the one a.jpg gets: refused, naming both
    err = _sample_error(capsys, *_restore(tiny_ckpt, source, tmp_path / "out2"))
    assert str(source / "a.jpg") in err and str(source / "a.jpg.png") in err and "rename one" in err
    assert not (tmp_path / "out2").exists()


def test_every_output_location_is_checked_before_any_work(tiny_ckpt, tmp_path, capsys, monkeypatch):
    import colddiff.sample_cli as sample_cli

    source = tmp_path / "in"
    _grey(source / "a.png")
    work = []
    monkeypatch.setattr(sample_cli, "load_model", lambda *a, **k: work.append("load") or None)
    (tmp_path / "file").write_text("not a folder")
    err = _sample_error(capsys, *_restore(tiny_ckpt, source, tmp_path / "file"))
    assert f"--out '{tmp_path / 'file'}' is an existing file" in err
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "restored").write_text("a file where the restored/ folder goes")
    err = _sample_error(capsys, *_restore(tiny_ckpt, source, tmp_path / "out"))
    assert f"'{tmp_path / 'out' / 'restored'}' is a file, not a folder" in err
    (tmp_path / "out2" / "restore_grid.png").mkdir(parents=True)
    err = _sample_error(capsys, *_restore(tiny_ckpt, source, tmp_path / "out2"))
    assert f"cannot write '{tmp_path / 'out2' / 'restore_grid.png'}': it is an existing folder" in err
    err = _sample_error(capsys, "generate", "--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "file"))
    assert "is an existing file" in err
    err = _evaluate_error(capsys, "restoration", "--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "file"))
    assert "is an existing file" in err
    assert work == []  # no model was even loaded


def test_fit_prior_never_replaces_an_existing_file_without_overwrite(tiny_ckpt, tmp_path, capsys):
    other = tmp_path / "other.ckpt"
    other.write_bytes(b"someone else's checkpoint")
    fit = ["generate", "--ckpt", str(tiny_ckpt), "--fit-prior", "--dataset", "embedded-mnist", "--fit-images", "20",
           "--fit-resize", "--out", str(tmp_path / "g"), "--num", "2", "--steps", "1", "--output", str(other)]
    err = _sample_error(capsys, *fit)
    assert f"--output '{other}' already exists" in err and "--overwrite" in err
    assert other.read_bytes() == b"someone else's checkpoint" and not (tmp_path / "g").exists()
    assert "only used with --fit-prior" in _sample_error(capsys, "generate", "--ckpt", str(tiny_ckpt), "--overwrite")
    folder = tmp_path / "folder.ckpt"
    folder.mkdir()
    assert "is a folder, but the model is a checkpoint" in _sample_error(capsys, *fit[:-1], str(folder),
                                                                          "--overwrite")
    _sample(*fit, "--overwrite")
    from colddiff.export import load_model

    assert load_model(other).prior.is_fitted


@pytest.fixture(scope="module")
def huge_ckpt(tmp_path_factory) -> Path:
    """Finite weights scaled by 1e30: they load, and the network's outputs are NaN."""
    from tests.helpers import save_tiny_checkpoint, tiny_model

    model = tiny_model()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if "network." in name and tensor.is_floating_point():
                tensor.mul_(1e30)
    return save_tiny_checkpoint(model, tmp_path_factory.mktemp("huge") / "huge.ckpt")


@pytest.mark.parametrize("tool,args", [
    ("sample", ["restore", "--input", "IN", "--level", "2"]),
    ("sample", ["generate", "--num", "2", "--save-images"]),
    ("sample", ["reconstruct", "--dataset", "embedded-mnist", "--num", "2", "--save-images"]),
    ("sample", ["trajectory", "--dataset", "embedded-mnist", "--num", "1", "--columns", "2"]),
    ("evaluate", ["restoration", "--dataset", "embedded-mnist", "--limit", "2"]),
    ("evaluate", ["generation", "--num", "4", "--reference-dataset", "embedded-mnist", "--extractor", "pixels"]),
], ids=["restore", "generate", "reconstruct", "trajectory", "evaluate-restoration", "evaluate-generation"])
def test_non_finite_outputs_are_refused_before_anything_is_written(huge_ckpt, tmp_path, capsys, tool, args):
    _grey(tmp_path / "in" / "a.png")
    args = [str(tmp_path / "in") if a == "IN" else a for a in args]
    out = tmp_path / "out"
    run = _sample_error if tool == "sample" else _evaluate_error
    err = run(capsys, *args, "--ckpt", str(huge_ckpt), "--out", str(out), "--steps", "1")
    assert str(huge_ckpt) in err and "NaN or infinite values" in err and "nothing was written" in err
    assert not out.exists() or not any(out.rglob("*"))


def test_generated_images_keep_the_models_channels_and_evaluate_as_the_extractor_needs(tiny_ckpt, tmp_path):
    """README's pipeline: generate --save-images, then evaluate.py generation --generated with mnist-cnn."""
    from colddiff.evaluate_cli import main as evaluate

    _sample("generate", "--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "g"), "--num", "6", "--steps", "1",
            "--save-images")
    files = sorted((tmp_path / "g" / "images").glob("*.png"))
    assert [Image.open(p).mode for p in files] == ["L"] * 6
    _sample(*_restore(tiny_ckpt, _grey(tmp_path / "in" / "a.png"), tmp_path / "r"))
    assert Image.open(tmp_path / "r" / "restored" / "a.png").mode == "L"
    score = ["generation", "--reference-dataset", "embedded-mnist", "--reference-size", "8", "--extractor",
             "mnist-cnn", "--no-floor", "--kid-subsets", "2", "--kid-subset-size", "4",
             "--cache-dir", str(tmp_path / "cache")]
    evaluate([*score, "--generated", str(tmp_path / "g" / "images"), "--out", str(tmp_path / "e")])
    protocol = json.loads((tmp_path / "e" / "generation.json").read_text())["protocol"]
    assert protocol["channels"] == 1 and protocol["generated_conversion"].startswith("none")
    rgb = tmp_path / "rgb"  # images an earlier colddiff wrote: grey stored as RGB, read back losslessly
    rgb.mkdir()
    for path in files:
        Image.open(path).convert("RGB").save(rgb / path.name)
    evaluate([*score, "--generated", str(rgb), "--out", str(tmp_path / "e2")])
    report = json.loads((tmp_path / "e2" / "generation.json").read_text())
    assert report["protocol"]["generated_conversion"] == "6 of 6 RGB with three equal channels read as grayscale " \
                                                         "(lossless)"
    assert report["results"] == json.loads((tmp_path / "e" / "generation.json").read_text())["results"]


def test_a_mixed_generated_set_is_refused_or_converted_and_reported(tmp_path, capsys):
    from colddiff.evaluate_cli import main as evaluate

    folder = tmp_path / "generated"
    for i in range(5):
        _grey(folder / f"g{i}.png", 20 * i)
    _grey(folder / "big.png", 50, size=20)
    _grey(folder / "colour.png", 70, mode="RGB")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8), "RGB") \
        .save(folder / "colour.png")
    score = ["generation", "--generated", str(folder), "--reference-dataset", "embedded-mnist", "--reference-size",
             "8", "--extractor", "mnist-cnn", "--no-floor", "--kid-subsets", "2", "--kid-subset-size", "4",
             "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "e")]
    err = _evaluate_error(capsys, *score)
    assert "the images differ in size or channels (5 16x16 grayscale" in err and "1 20x20 grayscale (e.g. big.png)" \
        in err and "1 16x16 RGB (e.g. colour.png)" in err and "--convert-generated" in err
    evaluate([*score, "--convert-generated"])
    conversion = json.loads((tmp_path / "e" / "generation.json").read_text())["protocol"]["generated_conversion"]
    assert conversion == ("1 of 7 resized (shorter side) and centre-cropped from 20x20 to 16x16; 1 of 7 converted "
                          "from RGB to grayscale (luma)")
    assert "the generated images: 1 of 7 resized" in capsys.readouterr().err
    for path in folder.glob("g*.png"):  # an all-colour set for a grayscale extractor: refused, naming the flag
        path.unlink()
    (folder / "big.png").unlink()
    err = _evaluate_error(capsys, *score)
    assert "the images are RGB but the mnist-cnn extractor takes grayscale images" in err
    assert "--convert-generated" in err and "images.mean" not in err


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "PNG"])
def test_images_with_several_frames_are_refused_naming_the_file(tiny_ckpt, tmp_path, capsys, fmt):
    path = tmp_path / f"anim.{fmt.lower()}"
    frames = [Image.fromarray(np.full((16, 16), v, np.uint8), "L") for v in (0, 120, 240)]
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:])
    err = _sample_error(capsys, *_restore(tiny_ckpt, path, tmp_path / "out"))
    assert str(path) in err and "it holds 3 frames" in err and "save each frame as its own file" in err


def test_inputs_that_are_not_what_a_flag_expects_get_one_line(tiny_ckpt, tmp_path, capsys):
    err = _sample_error(capsys, *_restore(tiny_ckpt, Path("/dev/null"), tmp_path / "out"))
    assert "--input '/dev/null' is neither an image file nor a folder of images" in err
    image = _grey(tmp_path / "one.png")
    err = _evaluate_error(capsys, "generation", "--generated", str(image), "--reference-dataset", "embedded-mnist",
                          "--extractor", "pixels", "--out", str(tmp_path / "e"))
    assert f"--generated '{image}' is a file; expected a folder of images" in err
    err = _evaluate_error(capsys, "restoration", "--ckpt", str(tiny_ckpt), "--folder", str(image),
                          "--out", str(tmp_path / "e"))
    assert str(image) in err and "is not a directory" in err


def test_a_second_restore_into_its_input_folder_skips_the_first_runs_outputs(tiny_ckpt, tmp_path, capsys):
    folder = tmp_path / "digits"
    _grey(folder / "a.png", 40)
    _grey(folder / "sub" / "b.png", 80)
    for _ in range(2):
        _sample(*_restore(tiny_ckpt, folder, folder))
    assert "skipping 3 file(s) that an earlier restore run wrote" in capsys.readouterr().err
    records = json.loads((folder / "restore.json").read_text())["images"]
    assert sorted(r["file"] for r in records) == [str(folder / "a.png"), str(folder / "sub" / "b.png")]
    assert sorted(str(p.relative_to(folder / "restored")) for p in (folder / "restored").rglob("*.png")) == \
        ["a.png", "sub/b.png"]


# -------------------------------------------------------------------------------------- train.py: one line each
def _train_error(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(list(args))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    return err


def test_pixelate_names_the_largest_num_steps_an_image_size_allows():
    import colddiff.degradations as cd

    with pytest.raises(ValueError, match=r"got 32x32; the largest num_steps a 32x32 image allows is 5"):
        cd.Pixelate(8).degrade(torch.rand(1, 1, 32, 32), torch.tensor([8]), {})  # as samplers call it
    with pytest.raises(ValueError, match=r"got 8x8; the largest num_steps a 8x8 image allows is 7"):
        cd.Pixelate(9, schedule="linear", image_size=8)
    assert cd.Pixelate(5).degrade(torch.rand(1, 1, 32, 32), torch.tensor([5]), {}).shape == (1, 1, 32, 32)


def test_a_training_folder_with_one_image_says_the_training_split_is_empty(tmp_path, capsys):
    _grey(tmp_path / "data" / "only.png", size=28)
    err = _train_error(capsys, "fit", "--config", str(QUICKSTART), "--trainer.default_root_dir", str(tmp_path / "run"),
                       "--data", "colddiff.data.ImageFolderDataModule", "--data.init_args.root",
                       str(tmp_path / "data"), "--data.init_args.image_size", "28", "--data.init_args.channels", "1")
    assert "ImageFolderDataModule: the training split is empty" in err and "has 1 image(s)" in err
    assert "val_fraction" in err and "KeyError" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_last_with_only_a_truncated_checkpoint_gives_one_consistent_message(tmp_path, capsys):
    override = run_config(tmp_path, max_steps=2, every=2, probe=False)
    (tmp_path / "checkpoints").mkdir()
    truncated = tmp_path / "checkpoints" / "last.ckpt"
    truncated.write_bytes(b"PK\x03\x04" + b"\x00" * 200)
    err = _train_error(capsys, "fit", "--config", str(QUICKSTART), "--config", str(override), "--ckpt_path", "last")
    assert "--ckpt_path last: no complete checkpoint to resume from" in err and str(truncated) in err
    assert "Restoring states" not in err and "skipping" not in err
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]  # nothing trained


def test_comparing_a_resume_never_builds_the_checkpoints_config(monkeypatch):
    """config_changes resolves the objective of both configs to compare them, but builds only the run's own config:
    a checkpoint's is data (its objective is recorded resolved, or as the former ``loss``)."""
    import colddiff.degradations as cd
    from colddiff.cli import config_changes

    run = {"degradation": {"class_path": "colddiff.degradations.GaussianBlur", "init_args": {"num_steps": 4}},
           "objective": {"class_path": "colddiff.objectives.PredictX0"}}
    saved = {"degradation": {"class_path": "colddiff.degradations.Pixelate", "init_args": {"num_steps": 10**9}},
             "loss": "l1"}  # a checkpoint from before objectives, with a config that would allocate if built

    def never(self, *args, **kwargs):
        raise AssertionError("the checkpoint's degradation was built")

    monkeypatch.setattr(cd.Pixelate, "__init__", never)
    changes = config_changes(saved, run)
    assert "objective" not in changes and "loss" not in changes  # loss l1 == PredictX0(loss="l1"), resolved
    assert "degradation" in changes
