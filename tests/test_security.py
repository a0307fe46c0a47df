"""Attacks on every entry point that reads a model file: crafted checkpoints and exports must be refused before any
class they name is imported or built, and no payload may run (each payload would create a marker file).

Entry points: ``ColdDiffusion.load_from_checkpoint`` (even with ``weights_only=True``), ``colddiff.export.load_model``
(checkpoints and export folders), ``sample.py``, ``evaluate.py`` and ``train.py --ckpt_path``.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

import colddiff.degradations as cd
from colddiff.checkpoint import AtomicCheckpointIO
from colddiff.data import EmbeddedMNISTDataModule
from colddiff.evaluate_cli import main as evaluate_main
from colddiff.export import export_model, load_model
from colddiff.module import ColdDiffusion
from colddiff.nets import ConvNeXtUNet
from colddiff.sample_cli import main as sample_main

ROOT = Path(__file__).resolve().parents[1]


class _Touch:
    """A pickle payload: unpickling it creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real (tiny) training checkpoint, recorded as the quickstart CLI records it."""
    tmp = tmp_path_factory.mktemp("victim")
    model = ColdDiffusion(cd.GaussianBlur(4, kernel_size=5),
                          ConvNeXtUNet(in_channels=1, dim=8, dim_mults=(1, 2), num_blocks=1, attention="none",
                                       image_size=28), image_size=28, channels=1, val_sample_batches=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp, plugins=[AtomicCheckpointIO()])
    trainer.fit(model, EmbeddedMNISTDataModule(batch_size=8))
    trainer.save_checkpoint(tmp / "model.ckpt")
    return tmp / "model.ckpt"


def _doctor(checkpoint: Path, out: Path, network: dict) -> Path:
    state = torch.load(checkpoint, weights_only=True)
    state["hyper_parameters"]["network"] = network
    state["hyper_parameters"]["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
    torch.save(state, out)
    return out


def _attacks(tmp_path: Path) -> dict[str, tuple[dict, Path]]:
    """Network configs an attacker can write into a file that loads with weights_only=True."""
    marker = tmp_path / "pwned"
    weights = tmp_path / "weights.pth"
    torch.save({"payload": _Touch(marker)}, weights)  # runs the payload if anything unpickles it
    return {
        # an installed class whose __init__ calls torch.load(path, weights_only=False) on a path from its init args
        "torch-fidelity inception": ({"class_path": "torch_fidelity.feature_extractor_inceptionv3."
                                                    "FeatureExtractorInceptionV3",
                                      "init_args": {"name": "x", "features_list": ["2048"],
                                                    "feature_extractor_weights_path": str(weights)}}, marker),
        "a torch module": ({"class_path": "torch.nn.Conv2d",
                            "init_args": {"in_channels": 1, "out_channels": 1, "kernel_size": 1}}, marker),
        "a module with import side effects": ({"class_path": "this.Foo"}, marker),
        "a function": ({"class_path": "os.system", "init_args": {"command": f"touch {marker}"}}, marker),
    }


ATTACKS = ["torch-fidelity inception", "a torch module", "a module with import side effects", "a function"]


def _entry_points(path: Path, tmp_path: Path) -> dict[str, callable]:
    out = str(tmp_path / "out")
    return {
        "ColdDiffusion.load_from_checkpoint": lambda: ColdDiffusion.load_from_checkpoint(path, weights_only=True),
        "load_model": lambda: load_model(path),
        "sample.py": lambda: sample_main(["reconstruct", "--ckpt", str(path), "--dataset", "embedded-mnist",
                                          "--num", "2", "--out", out]),
        "evaluate.py": lambda: evaluate_main(["restoration", "--ckpt", str(path), "--dataset", "embedded-mnist",
                                              "--limit", "2", "--out", out]),
        "train.py --ckpt_path": lambda: _train_resume(path, tmp_path),
    }


def _train_resume(path: Path, tmp_path: Path) -> None:
    from colddiff.cli import cli_main

    cli_main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--trainer.default_root_dir",
              str(tmp_path / "run"), "--trainer.max_steps", "2", "--ckpt_path", str(path)])


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("entry", ["ColdDiffusion.load_from_checkpoint", "load_model", "sample.py", "evaluate.py",
                                   "train.py --ckpt_path"])
def test_a_checkpoint_config_cannot_import_or_build_foreign_classes(checkpoint, tmp_path, capsys, attack, entry):
    network, marker = _attacks(tmp_path)[attack]
    evil = _doctor(checkpoint, tmp_path / "evil.ckpt", network)
    modules_before = set(sys.modules)
    with pytest.raises((ValueError, SystemExit)) as error:
        _entry_points(evil, tmp_path)[entry]()
    message = str(error.value) + capsys.readouterr().err
    assert "refusing to import" in message or "another model config" in message, message
    assert not marker.exists()
    assert "this" not in set(sys.modules) - modules_before  # the module named in the file was never imported
    assert "Beautiful is better than ugly" not in capsys.readouterr().out


@pytest.mark.parametrize("attack", ATTACKS)
def test_an_export_config_cannot_import_or_build_foreign_classes(checkpoint, tmp_path, attack):
    network, marker = _attacks(tmp_path)[attack]
    folder = export_model(load_model(checkpoint), tmp_path / "export")
    config = json.loads((folder / "config.json").read_text())
    config["model"]["network"] = network
    (folder / "config.json").write_text(json.dumps(config))
    for load in (lambda: load_model(folder),
                 lambda: sample_main(["generate", "--ckpt", str(folder), "--out", str(tmp_path / "o")])):
        with pytest.raises((ValueError, SystemExit)):
            load()
    assert not marker.exists()


def test_the_class_path_check_happens_before_any_import():
    """In a fresh interpreter: refusing ``this.Foo`` must not import ``this`` (which prints on import)."""
    code = ("import sys; from colddiff._config import build\n"
            "try:\n    build({'class_path': 'this.Foo'}, 'network')\nexcept ValueError as e:\n    print('refused')\n"
            "print('this' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["refused", "False"], result.stdout


@pytest.mark.parametrize("entry", ["ColdDiffusion.load_from_checkpoint", "load_model", "sample.py", "evaluate.py",
                                   "train.py --ckpt_path"])
def test_pickled_payloads_are_refused_everywhere(checkpoint, tmp_path, capsys, entry):
    marker = tmp_path / "pwned"
    state = torch.load(checkpoint, weights_only=True)
    state["payload"] = _Touch(marker)
    evil = tmp_path / "evil.ckpt"
    torch.save(state, evil)
    with pytest.raises((pickle.UnpicklingError, SystemExit)) as error:
        _entry_points(evil, tmp_path)[entry]()
    assert "refusing to load" in str(error.value) + capsys.readouterr().err
    assert not marker.exists()


def test_weights_only_false_is_refused(checkpoint):
    with pytest.raises(ValueError, match="weights_only=True only"):
        ColdDiffusion.load_from_checkpoint(checkpoint, weights_only=False)


def test_an_explicitly_allowed_class_is_built(checkpoint, tmp_path):
    """The allow-list can be widened on purpose, by the caller, for a class they trust."""
    evil = _doctor(checkpoint, tmp_path / "conv.ckpt", {"class_path": "tests.test_nets.ThirdPartyNet"})
    with pytest.raises(ValueError, match="refusing to import 'tests.test_nets.ThirdPartyNet'"):
        ColdDiffusion.load_from_checkpoint(evil)
    with pytest.raises(ValueError, match="the network weights do not match its config: missing"):  # weights differ
        ColdDiffusion.load_from_checkpoint(evil, allow=["tests.test_nets.ThirdPartyNet"])
