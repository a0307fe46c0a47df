"""The torch-only inference pipeline: old files give the old images, exports hold one copy of the weights, the
prior and network contracts are checked at construction, crafted files are refused before allocation, and the
sampler set is open."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import colddiff.degradations as cd
from colddiff.export import export_model, load_model
from colddiff.module import ColdDiffusion
from colddiff.nets import ConvNeXtUNet
from colddiff.objectives import PredictEpsilon, PredictV, PredictX0
from colddiff.pipeline import Pipeline
from colddiff.priors import ChannelMeanPrior, GaussianNoisePrior
from colddiff.sampling import register_sampler, sample_direct, sampler_info, sampler_names

DATA = Path(__file__).parent / "data"


def tiny_net(image_size: int = 16, dim: int = 4) -> ConvNeXtUNet:
    return ConvNeXtUNet(in_channels=1, dim=dim, dim_mults=(1, 2), num_blocks=1, attention="none",
                        image_size=image_size)


@pytest.mark.parametrize("name", ["noise", "blur"])
def test_files_from_before_the_objective_give_the_images_they_gave(name):
    """Checkpoints and exports written before the objective and the pipeline (tests/data/README.md) load as x0 +
    L1 models (their `loss` entry) and restore, reconstruct and generate what the old code did (float tolerance:
    a refactored code path, the same arithmetic)."""
    expected = load_file(str(DATA / "legacy-outputs.safetensors"))
    checkpoint = DATA / f"legacy-{name}.ckpt"
    for model in (load_model(checkpoint), ColdDiffusion.load_from_checkpoint(checkpoint).eval()):
        assert isinstance(model.objective, PredictX0) and model.objective.loss_name == "l1"
        x0 = expected[f"{name}.x0"]
        result = model.reconstruct(x0, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(model.restore(result.degraded, torch.tensor([1, 3, 5, 6])),
                                   expected[f"{name}.restore"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(result.direct, expected[f"{name}.direct"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(result.sampled, expected[f"{name}.sampled"], atol=1e-5, rtol=1e-5)
        images, _ = model.generate(4, torch.Generator().manual_seed(2))
        torch.testing.assert_close(images, expected[f"{name}.generated"], atol=1e-5, rtol=1e-5)
    exported, _ = load_model(DATA / f"legacy-{name}-export").generate(4, torch.Generator().manual_seed(2))
    torch.testing.assert_close(exported, expected[f"{name}.generated_export"], atol=1e-5, rtol=1e-5)


def test_an_export_holds_one_copy_of_the_weights_and_round_trips(tmp_path):
    model = ColdDiffusion(cd.GaussianNoise(6, schedule="linear"), tiny_net(), prior=GaussianNoisePrior(),
                          image_size=16, channels=1)
    assert isinstance(model.objective, PredictEpsilon)  # the family default, recorded resolved
    assert model.hparams["objective"]["class_path"] == "colddiff.objectives.PredictEpsilon"
    folder = export_model(model, tmp_path / "export")
    state = load_file(str(folder / "model.safetensors"))
    network_keys = [k for k in state if k.startswith("network.")]
    assert len(network_keys) == len(model.ema_network.state_dict()) and not any("ema" in k for k in state)
    config = json.loads((folder / "config.json").read_text())["model"]
    assert config["objective"]["class_path"] == "colddiff.objectives.PredictEpsilon" and "ema_decay" not in config
    pipeline = load_model(folder)
    assert type(pipeline) is Pipeline and isinstance(pipeline.objective, PredictEpsilon)
    x = torch.rand(3, 1, 16, 16)
    t = torch.tensor([1, 3, 6])
    torch.testing.assert_close(pipeline.restore(x, t), model.eval().restore(x, t))
    assert pipeline.objective.clip_x0 and 0 <= pipeline.restore(x, t).min() and pipeline.restore(x, t).max() <= 1


def test_a_prior_that_does_not_draw_the_degradations_params_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"prior GaussianNoisePrior draws params \['noise'\] but the degradation "
                                         r"Compose takes \['1.noise'\]"):
        Pipeline(cd.Compose([cd.GaussianBlur(4, kernel_size=3), cd.GaussianNoise(4)]), tiny_net(),
                 prior=GaussianNoisePrior(), image_size=16, channels=1)
    with pytest.raises(ValueError, match=r"ChannelMeanPrior draws params \[\] but the degradation GaussianNoise"):
        ColdDiffusion(cd.GaussianNoise(4), tiny_net(), prior=ChannelMeanPrior(1), image_size=16, channels=1)


def test_a_network_without_the_contracts_attributes_gets_a_clear_message():
    class Bare(torch.nn.Module):
        def forward(self, x, t):
            return x

    with pytest.raises(TypeError, match=r"network Bare does not declare in_channels \(an int\) and image_size "
                                        r"\(an int, or None for any size\).*RestorationNetwork"):
        Pipeline(cd.GaussianBlur(4, kernel_size=3), Bare(), image_size=16, channels=1)


def test_an_objective_the_degradation_cannot_carry_is_refused_when_the_model_is_built():
    with pytest.raises(ValueError, match="PredictEpsilon .*but GaussianBlur has none"):
        ColdDiffusion(cd.GaussianBlur(4, kernel_size=3), tiny_net(), objective=PredictEpsilon(), image_size=16,
                      channels=1)
    with pytest.raises(ValueError, match="give objective or loss, not both"):
        ColdDiffusion(cd.GaussianBlur(4, kernel_size=3), tiny_net(), objective=PredictX0(), loss="l1",
                      image_size=16, channels=1)


def _doctored_export(tmp_path: Path, edit_state=None, edit_config=None) -> Path:
    folder = export_model(Pipeline(cd.GaussianBlur(4, kernel_size=3), tiny_net(), image_size=16, channels=1),
                          tmp_path / "model")
    state = load_file(str(folder / "model.safetensors"))
    payload = json.loads((folder / "config.json").read_text())
    if edit_state:
        state = edit_state(state)
    if edit_config:
        edit_config(payload["model"])
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(payload))
    return folder


def test_crafted_weights_are_refused_in_one_line_before_the_network_is_built(tmp_path, monkeypatch):
    """Issue 22, items 5, 10 and 11: missing/extra names, other shapes, integer weights, and a config asking for a
    huge network with a small file (checked on the meta device: no memory is allocated)."""
    first = "network.downsamples.0.conv.weight"

    def dim(config):
        config["network"]["init_args"]["dim"] = 100_000

    built = []
    original = ConvNeXtUNet.__init__

    def spy(self, *args, **kwargs):  # records every network built on a real device
        original(self, *args, **kwargs)
        built.append(next(self.parameters()).device.type)

    monkeypatch.setattr(ConvNeXtUNet, "__init__", spy)
    cases = [
        (lambda s: {k: v for k, v in s.items() if k != first}, None, r"missing \[.downsamples.0.conv.weight.\]"),
        (lambda s: {**s, "network.extra": torch.zeros(1)}, None, r"unexpected \['extra'\]"),
        (lambda s: {**s, first: torch.zeros(3, 3)}, None, r"network.downsamples.0.conv.weight has shape \(3, 3\)"),
        (lambda s: {k: v.long() if k == first else v for k, v in s.items()}, None, "holds torch.int64 values"),
        (lambda s: {k: v * 1e30 * 1e30 if k == first else v for k, v in s.items()}, None, "NaN or infinite"),
        (None, dim, r"has shape .* but the config's network needs"),
    ]
    for i, (edit_state, edit_config, match) in enumerate(cases):
        folder = _doctored_export(tmp_path / str(i), edit_state, edit_config)
        built.clear()
        with pytest.raises(ValueError, match=match) as err:
            load_model(folder)
        assert "\n" not in str(err.value) and str(folder) in str(err.value)
        assert "cpu" not in built  # refused on the meta device: the network was never allocated


def test_samplers_are_an_open_set(tmp_path):
    """A new sampler is one decorated function: models, configs and the CLIs find it by name; an import path in a
    file's config goes through the allow-list."""
    calls = []

    @register_sampler("test-once")
    def once(restore, degradation, x_t, t=None, steps=None):  # it takes only what it uses
        calls.append(t)
        return sample_direct(restore, degradation, x_t, t)

    assert "test-once" in sampler_names()
    model = ColdDiffusion(cd.GaussianBlur(4, kernel_size=3), tiny_net(), image_size=16, channels=1,
                          sampler="test-once")
    x_T = model.degradation(torch.rand(2, 1, 16, 16), 4)
    torch.testing.assert_close(model.sample(x_T), model.sample(x_T, sampler="direct"))
    assert len(calls) == 1 and model.pipeline.network_calls() == 4  # counted per level for samplers that don't say
    folder = export_model(model, tmp_path / "m")
    assert load_model(folder).sampler == "test-once"
    payload = json.loads((folder / "config.json").read_text())
    payload["model"]["sampler"] = "os.system"
    (folder / "config.json").write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="refusing to import 'os.system'"):
        load_model(folder)
    with pytest.raises(ValueError, match=r"sampler must be one of \('naive', 'improved', 'direct'"):
        Pipeline(cd.GaussianBlur(4, kernel_size=3), tiny_net(), image_size=16, channels=1, sampler="ddim")
    flow = Pipeline(cd.FlowNoise(4), tiny_net(), image_size=16, channels=1)
    assert flow.network_calls("heun", 4) == 7 and flow.network_calls("direct") == 1
    assert sampler_info("heun").arguments == {"t", "steps", "callback"} and not sampler_info("heun").takes_noise
    assert sampler_info("direct").one_shot and sampler_info("naive").takes_noise


def test_a_v_model_trains_and_samples_through_the_pipeline(tmp_path):
    import lightning as L

    from colddiff.data import EmbeddedMNISTDataModule

    torch.manual_seed(0)
    model = ColdDiffusion(cd.GaussianNoise(6), tiny_net(), prior=GaussianNoisePrior(), image_size=16, channels=1,
                          optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), val_sample_batches=0)
    assert isinstance(model.objective, PredictV)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(model, EmbeddedMNISTDataModule(image_size=16, channels=1, batch_size=8))
    trainer.save_checkpoint(tmp_path / "v.ckpt")
    pipeline = load_model(tmp_path / "v.ckpt")
    assert isinstance(pipeline.objective, PredictV)
    images, _ = pipeline.generate(3, torch.Generator().manual_seed(0), steps=3)
    again, _ = model.eval().generate(3, torch.Generator().manual_seed(0), steps=3)
    assert torch.equal(images, again) and 0 <= images.min() and images.max() <= 1


def test_the_pipelines_config_entries_are_the_training_modules_arguments():
    """Every constructor argument of ColdDiffusion is a pipeline component, a sampling setting or a training-only
    entry (which Pipeline.load accepts and ignores): a new argument that is none of these would make every new
    checkpoint fail to load as a pipeline ("unknown entries")."""
    import inspect

    from colddiff.files import COMPONENTS as _COMPONENTS
    from colddiff.files import SETTINGS as _SETTINGS
    from colddiff.files import TRAINING_ONLY

    arguments = set(inspect.signature(ColdDiffusion.__init__).parameters) - {"self"}
    assert arguments == set(_COMPONENTS) | set(_SETTINGS) | set(TRAINING_ONLY) | {"loss"}


def test_both_loaders_refuse_a_files_sampler_path_unless_allowed(tmp_path):
    """A sampler import path in a checkpoint's config is refused by ColdDiffusion.load_from_checkpoint as by
    Pipeline.load, before anything is imported, unless the caller allows it; colddiff's own functions are no
    exception (only registered samplers)."""
    import lightning as L

    model = ColdDiffusion(cd.GaussianBlur(4, kernel_size=3), tiny_net(), image_size=16, channels=1,
                          val_sample_batches=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)
    from colddiff.data import EmbeddedMNISTDataModule

    trainer.fit(model, EmbeddedMNISTDataModule(image_size=16, channels=1, batch_size=4))
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    for evil in ("this.s", "colddiff.io.atomic_write_bytes"):
        checkpoint["hyper_parameters"]["sampler"] = evil
        torch.save(checkpoint, tmp_path / "evil.ckpt")
        for load in (ColdDiffusion.load_from_checkpoint, load_model):
            with pytest.raises(ValueError, match=rf"refusing to import '{evil}'"):
                load(tmp_path / "evil.ckpt")
    checkpoint["hyper_parameters"]["sampler"] = "colddiff.sampling.sample_naive"
    torch.save(checkpoint, tmp_path / "allowed.ckpt")
    allowed = ColdDiffusion.load_from_checkpoint(tmp_path / "allowed.ckpt", allow=["colddiff.sampling.sample_naive"])
    assert allowed.pipeline.sampler == "colddiff.sampling.sample_naive"
    assert load_model(tmp_path / "allowed.ckpt", allow=["colddiff.sampling.sample_naive"]).sampler == \
        "colddiff.sampling.sample_naive"


def _counting(monkeypatch) -> list[int]:
    """Counts the pipeline's network calls (each a batch)."""
    calls: list[int] = []
    run_network = Pipeline.run_network

    def counted(self, x_t, t):
        calls.append(len(t))
        return run_network(self, x_t, t)

    monkeypatch.setattr(Pipeline, "run_network", counted)
    return calls


def test_restore_at_levels_keeps_the_models_sample_steps_and_reuses_the_searchs_restorations(monkeypatch):
    """Restoring given images goes through the pipeline's defaults (a model set to 3 of 12 levels restores in 3
    steps, not 12), and an estimate's restorations answer each run's first network call with the same images."""
    from colddiff.estimation import estimate_level, sample_at_levels

    torch.manual_seed(0)
    model = Pipeline(cd.GaussianBlur(12, kernel_size=5, sigma=1.0), tiny_net(), image_size=16, channels=1,
                     sample_steps=3).eval()
    y = model.degradation(torch.rand(3, 1, 16, 16), torch.tensor([12, 12, 5]))
    levels = torch.tensor([12, 12, 5])
    calls = _counting(monkeypatch)
    restored = model.restore_at_levels(y, levels)
    assert len(calls) == 3 + 3  # one run per level, 3 steps each (not 12 + 5)
    torch.testing.assert_close(restored, sample_at_levels("improved", model.restore, model.degradation, y, levels,
                                                          steps=3))
    estimate = estimate_level(model.restore, model.degradation, y, keep_restorations=True)
    assert estimate.restorations is not None and estimate.restorations.shape == y.shape
    torch.testing.assert_close(estimate.restorations, model.restore(y, estimate.levels))
    for sampler in ("direct", "improved"):
        calls.clear()
        fresh = model.restore_at_levels(y, estimate.levels, sampler=sampler, restore=model.restore)
        without = len(calls)
        calls.clear()
        reused = model.restore_at_levels(y, estimate, sampler=sampler, restore=model.restore)
        assert len(calls) == without - len(set(estimate.levels.tolist()) - {0})  # one call fewer per level
        torch.testing.assert_close(reused, fresh)


def _recorded(calls: list[str], name: str, function):
    def wrapper(*args, **kwargs):
        calls.append(name)
        return function(*args, **kwargs)

    return wrapper


def test_a_model_file_is_read_and_checked_once_per_load(tmp_path, monkeypatch):
    """colddiff.files checks a file's config, its sampler and its network's weights once per load, exports and
    checkpoints alike (the pipeline's constructor still validates its own arguments)."""
    import colddiff.files as files
    from tests.helpers import save_tiny_checkpoint, tiny_model

    model = tiny_model()
    paths = [export_model(model, tmp_path / "export"), save_tiny_checkpoint(model, tmp_path / "model.ckpt")]
    for path in paths:
        calls: list[str] = []
        for name in ("check_model_config", "check_file_sampler", "check_network_weights"):
            monkeypatch.setattr(files, name, _recorded(calls, name, getattr(files, name)))
        loaded = load_model(path)
        assert sorted(calls) == ["check_file_sampler", "check_model_config", "check_network_weights"], path
        torch.testing.assert_close(loaded.network.state_dict(), model.pipeline.network.state_dict())
        monkeypatch.undo()
