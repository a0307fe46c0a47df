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


# ---------------------------------------------------------------------------------------- crafted model contents
# Files that load with weights_only=True but whose content is wrong: every one must get one line (`error: ...`)
# that names the file and the field, never a traceback.
def _export(tmp_path: Path, model=None) -> Path:
    from tests.helpers import tiny_model

    return export_model(tiny_model() if model is None else model, tmp_path / "export")


def _edit_config(folder: Path, edit) -> Path:
    payload = json.loads((folder / "config.json").read_text())
    edit(payload)
    (folder / "config.json").write_text(json.dumps(payload))
    return folder


def _sample_error(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        sample_main(list(args))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


_DEGRADATION = "colddiff.degradations.GaussianBlur"
CONFIG_ATTACKS = {
    "a string where a number is expected": (
        lambda p: p["model"]["degradation"]["init_args"].update(num_steps="ten"),
        ["degradation (colddiff.degradations.blur.GaussianBlur) cannot be built",
         "num_steps must be a positive int, got str 'ten'"]),
    "an unknown init argument": (
        lambda p: p["model"]["network"]["init_args"].update(colour="red"),
        ["network.init_args", "takes no argument 'colour'"]),
    "init_args that are not a mapping": (
        lambda p: p["model"]["degradation"].update(init_args=[4, 5]),
        ["degradation.init_args: expected a mapping of arguments, got list"]),
    "a string for the network": (
        lambda p: p["model"].update(network="colddiff.nets.ConvNeXtUNet"),
        ["network: expected a component config {class_path, init_args}, got str"]),
    "a list for the whole model config": (
        lambda p: p.update(model=[1, 2, 3]),
        ["the model config must be a mapping", "got list"]),
    "a string for the whole model config": (
        lambda p: p.update(model="colddiff.module.ColdDiffusion"),
        ["the model config must be a mapping", "got str"]),
}


@pytest.mark.parametrize("attack", sorted(CONFIG_ATTACKS))
def test_wrong_types_in_a_config_get_one_line_naming_the_file_and_the_field(tmp_path, capsys, attack):
    edit, expected = CONFIG_ATTACKS[attack]
    folder = _edit_config(_export(tmp_path), edit)
    err = _sample_error(capsys, "generate", "--ckpt", str(folder), "--out", str(tmp_path / "o"), "--num", "2")
    assert str(folder) in err and all(part in err for part in expected), err
    assert not (tmp_path / "o").exists()


def test_config_errors_name_the_file_given_to_build(tmp_path):
    from colddiff._config import ModelFileError, build, model_kwargs

    with pytest.raises(ModelFileError, match=r"^'m\.ckpt': degradation \(colddiff.degradations.GaussianBlur\) "
                                             r"cannot be built.*num_steps must be a positive int"):
        build({"class_path": _DEGRADATION, "init_args": {"num_steps": "ten"}}, "degradation", source="m.ckpt")
    with pytest.raises(ModelFileError, match=r"^'m\.ckpt': degradation\.init_args: .*missing a required argument: "
                                             r"'num_steps'"):
        model_kwargs({"degradation": {"class_path": _DEGRADATION}, "network": {"class_path": "x.Y"}},
                     source="m.ckpt")
    with pytest.raises(ModelFileError, match=r"^'m\.ckpt': optimizer\.init_args: expected a mapping"):
        model_kwargs({"degradation": {"class_path": _DEGRADATION, "init_args": {"num_steps": 3}},
                      "network": {"class_path": "colddiff.nets.ConvNeXtUNet"},
                      "optimizer": {"class_path": "torch.optim.Adam", "init_args": [1e-3]}}, source="m.ckpt")


def _kde_export(tmp_path: Path) -> Path:
    from colddiff.priors import LowResKDEPrior

    torch.manual_seed(0)
    network = ConvNeXtUNet(in_channels=1, dim=8, dim_mults=(1, 2), num_blocks=1, attention="none", image_size=16)
    prior = LowResKDEPrior(1, low_size=4, bandwidth=0.0).fit(torch.rand(12, 1, 16, 16))
    model = ColdDiffusion(cd.Pixelate(2), network, prior, image_size=16, channels=1, val_sample_batches=0)
    return export_model(model, tmp_path / "kde")


def _edit_weights(folder: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    edit(state)
    save_file(state, str(folder / "model.safetensors"))
    return folder


PRIOR_ATTACKS = {
    "no thumbnails although fitted": (
        lambda s: s.update({"prior.thumbnails": torch.zeros(0, 16), "prior.indices": torch.zeros(0, dtype=torch.long)}),
        "the prior is marked fitted but stores no thumbnails"),
    "fewer indices than thumbnails": (
        lambda s: s.update({"prior.indices": torch.arange(3)}), "12 stored thumbnails but 3 indices"),
    "thumbnails of another size": (
        lambda s: s.update({"prior.thumbnails": torch.rand(12, 9)}),
        "the stored thumbnails must be float (N, 16) for channels=1, low_size=4; got (12, 9)"),
    "a missing prior tensor": (lambda s: s.pop("prior.thumbnails"), "the stored state has no 'thumbnails' tensor"),
    "a missing mixture tensor": (lambda s: s.pop("prior.gmm.means"), "the stored state has no 'means' tensor"),
}


@pytest.mark.parametrize("attack", sorted(PRIOR_ATTACKS))
def test_a_broken_prior_state_gets_one_line_naming_the_file(tmp_path, capsys, attack):
    edit, expected = PRIOR_ATTACKS[attack]
    folder = _edit_weights(_kde_export(tmp_path), edit)
    err = _sample_error(capsys, "generate", "--ckpt", str(folder), "--out", str(tmp_path / "o"), "--num", "2")
    assert str(folder) in err and "prior" in err and expected in err, err


def test_a_mixture_prior_that_is_no_distribution_is_refused_on_load():
    from colddiff._config import ModelFileError
    from colddiff.priors import ChannelMeanPrior

    state = ChannelMeanPrior(1).fit(torch.rand(8, 1, 4, 4)).state_dict()
    state["gmm.covariances"] = -state["gmm.covariances"]
    with pytest.raises(ModelFileError, match=r"gmm \(GaussianMixture\): the stored covariance of component\(s\) \[0\] "
                                             "is not positive definite"):
        ChannelMeanPrior(1).load_state_dict(state)
    state = ChannelMeanPrior(1).fit(torch.rand(8, 1, 4, 4)).state_dict()
    state["gmm.weights"] = torch.tensor([3.0])
    with pytest.raises(ModelFileError, match="are not a probability distribution"):
        ChannelMeanPrior(1).load_state_dict(state)


# ------------------------------------------------------------------------------ crafted reference-cache entries
def _generation(tmp_path: Path, cache: Path) -> list[str]:
    from PIL import Image

    generated = tmp_path / "generated"
    if not generated.exists():
        generated.mkdir()
        for i in range(6):
            pixels = torch.randint(0, 255, (16, 16), dtype=torch.uint8).numpy()
            Image.fromarray(pixels, "L").save(generated / f"{i}.png")
    return ["generation", "--generated", str(generated), "--reference-dataset", "embedded-mnist",
            "--reference-size", "8", "--extractor", "pixels", "--no-floor", "--kid-subsets", "2",
            "--kid-subset-size", "4", "--cache-dir", str(cache), "--out", str(tmp_path / "eval")]


def _torch_file(path: Path) -> None:
    torch.save({"features": torch.zeros(8, 256)}, path)


CACHE_ATTACKS = {
    "random bytes": (lambda p: p.write_bytes(b"\x17\x00\x00\x00\x00\x00\x00\x00 random bytes"),
                     "it is not a safetensors file"),
    "a pickle": (lambda p: p.write_bytes(pickle.dumps({"features": [1.0] * 8})), "it is not a safetensors file"),
    "a foreign torch file": (_torch_file, "it is not a safetensors file"),
    "a directory": (lambda p: (p.unlink(), p.mkdir()), "it is not a file"),
    "an entry without features": (lambda p: __import__("safetensors.torch").torch.save_file(
        {"other": torch.zeros(8, 256)}, str(p)), "it has no 'features' tensor"),
    "fewer rows than the reference": (lambda p: __import__("safetensors.torch").torch.save_file(
        {"features": torch.zeros(2, 256)}, str(p)), "it holds features of 2 images but the reference has 8"),
    "integer features": (lambda p: __import__("safetensors.torch").torch.save_file(
        {"features": torch.zeros(8, 256, dtype=torch.int64)}, str(p)), "not float (N, D)"),
}


@pytest.mark.parametrize("attack", sorted(CACHE_ATTACKS))
def test_a_corrupt_or_wrong_reference_cache_entry_is_refused_naming_it(tmp_path, capsys, attack):
    craft, expected = CACHE_ATTACKS[attack]
    cache = tmp_path / "cache"
    evaluate_main(_generation(tmp_path, cache))  # computes and stores the entry
    entry = next((cache / "reference").iterdir())
    capsys.readouterr()
    craft(entry)
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main(_generation(tmp_path, cache))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    assert str(entry) in err and expected in err and "delete it" in err, err


# ----------------------------------------------------------------------- the loader's own checks (colddiff.pipeline)


def _one_line_load_error(folder: Path) -> str:
    with pytest.raises(ValueError) as error:
        load_model(folder)
    message = str(error.value)
    assert "\n" not in message and str(folder) in message, message
    return message


def test_loader_refuses_integer_weights_naming_the_file(tmp_path):
    key = "network.time_mlp.1.weight"
    folder = _edit_weights(_export(tmp_path), lambda s: s.update({key: s[key].round().to(torch.int64)}))
    message = _one_line_load_error(folder)
    assert "time_mlp.1.weight" in message and "int64" in message


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_loader_reports_missing_and_extra_weight_keys_in_one_line(tmp_path, change):
    def edit(state: dict) -> None:
        if change == "missing":
            state.pop("network.time_mlp.1.weight")
        else:
            state["network.surplus"] = torch.zeros(3)

    message = _one_line_load_error(_edit_weights(_export(tmp_path), edit))
    assert ("time_mlp.1.weight" if change == "missing" else "surplus") in message


def test_loader_reports_a_shape_mismatch_in_one_line(tmp_path):
    key = "network.time_mlp.1.weight"
    folder = _edit_weights(_export(tmp_path), lambda s: s.update({key: torch.zeros(3, *s[key].shape[1:])}))
    message = _one_line_load_error(folder)
    assert "time_mlp.1.weight" in message and "shape" in message


def test_loader_compares_weight_shapes_with_the_config_before_building(tmp_path, monkeypatch):
    """A small file whose config asks for a huge network (dim 100000, about 160 GB) is refused from the weight shapes
    in the file; the network is built only on the meta device (shapes, no memory) before the comparison, never on a
    real one (building it there fails the test instead of allocating)."""
    folder = _edit_config(_export(tmp_path), lambda p: p["model"]["network"]["init_args"].update(dim=100_000))
    original = ConvNeXtUNet.__init__

    def only_on_meta(self, *args, **kwargs):
        if torch.empty(0).device.type != "meta":
            raise AssertionError("the network was built before the file's weight shapes were compared with its config")
        original(self, *args, **kwargs)

    monkeypatch.setattr(ConvNeXtUNet, "__init__", only_on_meta)
    message = _one_line_load_error(folder)
    assert "dim" in message or "shape" in message


@pytest.mark.parametrize("edit", ["no network", "image_size a string"])
def test_loader_reports_wrong_model_arguments_in_one_line(tmp_path, edit):
    """The model's own arguments (not a component's) are checked where the model is constructed."""
    def change(payload: dict) -> None:
        if edit == "no network":
            payload["model"].pop("network")
        else:
            payload["model"]["image_size"] = "big"

    message = _one_line_load_error(_edit_config(_export(tmp_path), change))
    assert ("network" if edit == "no network" else "image_size") in message


def test_load_model_names_the_file_in_config_errors(tmp_path):
    folder = _edit_config(_export(tmp_path), lambda p: p["model"]["degradation"]["init_args"].update(num_steps="ten"))
    assert "num_steps" in _one_line_load_error(folder)
