"""The Lightning module: loss, EMA, validation metrics, sampling, generation, config round trip, bad input."""

from __future__ import annotations

from unittest import mock

import lightning as L
import pytest
import torch

import colddiff.degradations as cd
from colddiff.checkpoint import AtomicCheckpointIO
from colddiff.data import EmbeddedMNISTDataModule
from colddiff.module import ColdDiffusion, NonFiniteLossError
from colddiff.nets import ConvNeXtUNet, DDPMUNet
from colddiff.priors import ChannelMeanPrior
from colddiff.sampling import Prediction


def tiny_model(**kwargs) -> ColdDiffusion:
    defaults = dict(
        degradation=cd.GaussianBlur(4, kernel_size=5, sigma=1.0),
        network=ConvNeXtUNet(in_channels=1, dim=8, dim_mults=(1, 2), num_blocks=1, attention="none", image_size=16),
        image_size=16, channels=1, val_sample_steps=2,
    )
    defaults.update(kwargs)
    return ColdDiffusion(**defaults)


def tiny_data(**kwargs) -> EmbeddedMNISTDataModule:
    return EmbeddedMNISTDataModule(image_size=16, batch_size=8, val_size=16, **kwargs)


def trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=tmp_path, plugins=[AtomicCheckpointIO()])
    defaults.update(kwargs)
    return L.Trainer(**defaults)


def test_training_reduces_the_loss(tmp_path):
    torch.manual_seed(0)
    model = tiny_model(optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    data = tiny_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    before = model.loss(batch).item()
    trainer(tmp_path, max_steps=40, limit_val_batches=0).fit(model, data)
    model.eval()
    with torch.no_grad():
        after = torch.stack([model.loss(batch) for _ in range(5)]).mean().item()
    assert after < 0.7 * before


def test_default_optimiser_is_the_papers():
    model = tiny_model()
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 2e-5
    params = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert params == {id(p) for p in model.network.parameters()}  # never the EMA copy


def test_ema_schedule_copy_then_decay():
    model = tiny_model(ema_decay=0.9, ema_every=2, ema_start=4)
    ema, live = list(model.ema_network.parameters())[0], list(model.network.parameters())[0]
    with torch.no_grad():
        live.add_(1.0)
    model.update_ema(copy_only=True)
    torch.testing.assert_close(ema, live)
    old = ema.clone()
    with torch.no_grad():
        live.add_(1.0)
    model.update_ema()
    torch.testing.assert_close(ema, 0.9 * old + 0.1 * live)
    assert not ema.requires_grad


def test_ema_follows_the_paper_schedule_during_training(tmp_path):
    model = tiny_model(ema_decay=0.5, ema_every=3, ema_start=6, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    calls = []
    original = model.update_ema
    model.update_ema = lambda copy_only=False: (calls.append((model.global_step, copy_only)), original(copy_only))
    trainer(tmp_path, max_steps=10, limit_val_batches=0, accumulate_grad_batches=2).fit(model, tiny_data())
    assert calls == [(0, True), (3, True), (6, False), (9, False)]


def test_power_function_ema_weighs_steps_as_edm2():
    """EDM2's power-function EMA (arXiv 2312.02696): sigma_rel 0.05 and 0.10 are their gamma 16.97 and 6.94, and
    averaging the weights theta_tau = tau over N steps weighs them ~ tau^gamma: the mean is N (gamma + 1) / (gamma + 2)
    (checked through the module's own update, at N = 400), whatever N; the first update is a copy."""
    from colddiff.ema import power_ema_gamma

    assert abs(power_ema_gamma(0.05) - 16.97) < 0.01 and abs(power_ema_gamma(0.10) - 6.94) < 0.01
    model = tiny_model(ema_decay=None, ema_every=1, ema_start=0, ema_sigma_rel=0.10)
    ema, live = list(model.ema_network.parameters())[0], list(model.network.parameters())[0]
    steps = 400
    with mock.patch.object(ColdDiffusion, "global_step", new_callable=mock.PropertyMock) as global_step:
        for step in range(steps):  # what optimizer_step does after each optimiser step (global_step counts before)
            global_step.return_value = step
            with torch.no_grad():
                live.fill_(float(step + 1))
            model.update_ema()
            if step == 0:
                torch.testing.assert_close(ema, live)  # a copy at the first step
    gamma = model.ema_gamma
    expected = steps * (gamma + 1) / (gamma + 2)
    assert abs(ema.mean().item() - expected) < 0.01 * expected, (ema.mean().item(), expected)


def test_power_function_ema_refuses_settings_it_would_ignore():
    with pytest.raises(ValueError, match="ema_decay: null, ema_every: 1, ema_start: 0"):
        tiny_model(ema_sigma_rel=0.1)  # ema_decay, ema_every, ema_start left at the paper's schedule
    with pytest.raises(ValueError, match="ema_sigma_rel must be a number in"):
        tiny_model(ema_decay=None, ema_every=1, ema_start=0, ema_sigma_rel=0.5)
    with pytest.raises(ValueError, match="ema_decay must lie in"):
        tiny_model(ema_decay=None)


def test_ema_network_stays_in_eval_mode():
    model = tiny_model(network=DDPMUNet(in_channels=1, dim=8, dim_mults=(1, 2), num_blocks=1, dropout=0.5,
                                        attention_resolutions=None, image_size=16))
    model.train()
    assert model.network.training and not model.ema_network.training


def test_validation_logs_loss_and_restoration_metrics(tmp_path):
    model = tiny_model()
    result = trainer(tmp_path).validate(model, tiny_data(), verbose=False)[0]
    assert {"val/loss", "val/psnr_direct", "val/ssim_direct", "val/psnr_sampled", "val/ssim_sampled"} <= set(result)
    assert all(torch.isfinite(torch.tensor(v)) for v in result.values())


def test_validation_is_reproducible(tmp_path):
    model, data = tiny_model(), tiny_data()
    a = trainer(tmp_path).validate(model, data, verbose=False)[0]
    b = trainer(tmp_path).validate(model, data, verbose=False)[0]
    assert a == b


def test_sample_with_a_perfect_restorer_and_samplers():
    model = tiny_model()
    x0 = torch.rand(2, 1, 16, 16)
    model.pipeline.predict = lambda x_t, t: Prediction(x0)  # type: ignore[method-assign]  # what samplers call
    x_T = model.degradation(x0, 4)
    for sampler in ("naive", "improved"):
        torch.testing.assert_close(model.sample(x_T, sampler=sampler), x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.sample(x_T, sampler="direct"), x0)
    torch.testing.assert_close(model.sample(x_T, steps=2), x0, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="sampler must be one of"):
        model.sample(x_T, sampler="ddim")


def test_reconstruct_is_degrade_then_direct_and_sampled():
    model = tiny_model(sample_steps=2)
    x0 = torch.rand(3, 1, 16, 16)
    result = model.reconstruct(x0, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(result.degraded, model.degradation(x0, 3).clamp(0, 1))
    torch.testing.assert_close(result.direct, model.sample(result.degraded, 3, sampler="direct").clamp(0, 1))
    torch.testing.assert_close(result.sampled, model.sample(result.degraded, 3).clamp(0, 1))
    assert result.level == 3 and result.params == {} and torch.equal(result.x0, x0)
    model.pipeline.predict = lambda x_t, t: Prediction(x0)  # type: ignore[method-assign]  # a perfect restorer
    perfect = model.reconstruct(x0)
    torch.testing.assert_close(perfect.sampled, x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(perfect.direct, x0)
    with pytest.raises(ValueError, match=r"level must be an int in \[0, 4\]"):
        model.reconstruct(x0, 5)


def test_reconstruct_draws_params_with_the_context_the_degradation_declares():
    """Mixing partners arrive through the degradation's context_keys, also inside a Compose."""
    degradation = cd.Compose([cd.GaussianBlur(4, kernel_size=5), cd.Mix(4)])
    assert degradation.context_keys == ("partner",)
    model = tiny_model(degradation=degradation)
    x0, partner = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    result = model.reconstruct(x0, partner=partner)
    torch.testing.assert_close(result.degraded, partner)  # D(x0, T) of a mix is the partner
    torch.testing.assert_close(result.params["1.partner"], partner)
    with pytest.raises(ValueError, match="Mix needs a partner image"):
        model.reconstruct(x0)


def test_validation_and_grids_use_reconstruct(tmp_path, monkeypatch):
    from colddiff.callbacks import SampleGrid

    calls = []
    original = ColdDiffusion.reconstruct

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("steps"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ColdDiffusion, "reconstruct", spy)
    model = tiny_model(val_sample_steps=2)
    trainer(tmp_path, max_steps=1, limit_val_batches=1, callbacks=[SampleGrid(every_n_steps=1, steps=3)]).fit(
        model, tiny_data())
    assert 2 in calls and 3 in calls  # validation's steps and the grid's steps


class _Spy(torch.nn.Module):
    """A network that records what it is fed (and outputs zeros)."""

    in_channels = out_channels = 1
    image_size = None

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t):
        self.seen.append((x.detach().clone(), t.clone()))
        return x * self.weight


def test_training_inputs_are_quantised_when_the_degradation_says_so():
    model = tiny_model(degradation=cd.GaussianBlur(4, kernel_size=5, quantize=True), network=_Spy())
    model.loss(torch.rand(6, 1, 16, 16), torch.Generator().manual_seed(0))
    x_t, t = model.network.seen[-1]
    assert (t >= 1).all()
    torch.testing.assert_close(x_t, torch.round(x_t * 255) / 255, atol=0, rtol=0)


def test_training_noise_adds_sigma_eps_to_the_network_input():
    x0 = torch.rand(64, 1, 16, 16)

    def fed(model):  # the network's input, the levels, and the noise-free input with the same draws
        model.loss(x0, torch.Generator().manual_seed(0))
        noisy, t = model.network.seen[-1]
        generator = torch.Generator().manual_seed(0)
        levels = model.objective.draw_levels(64, model.degradation.num_steps, "cpu", generator)
        params = model.degradation.make_params(x0, generator)
        assert torch.equal(levels, t)
        return noisy, t, model.degradation.degrade_input(x0, t, params)

    noisy, t, clean = fed(tiny_model(train_noise=0.05, network=_Spy()))
    assert abs((noisy - clean).std().item() - 0.05) < 0.003
    noisy, t, clean = fed(tiny_model(train_noise=[0, 0, 0, 0, 0.1], network=_Spy()))  # noise at level T only
    residual = (noisy - clean).flatten(1).std(dim=1)
    assert (residual[t < 4] == 0).all() and (residual[t == 4] > 0.08).all()
    with pytest.raises(ValueError, match="train_noise must be a number or have one value per level"):
        tiny_model(train_noise=[0.1, 0.2])


@pytest.mark.parametrize("noise", [None, 0.02])
def test_generated_images_depend_on_the_seed_not_on_the_batch_size(noise):
    model = tiny_model(degradation=cd.GaussianBlur(4, kernel_size=5, final_mean=True), prior=ChannelMeanPrior(1),
                       sample_steps=2, sample_noise=noise)
    model.prior.fit(torch.rand(32, 1, 16, 16))
    whole, _ = model.generate(5, torch.Generator().manual_seed(7))
    for batch_size in (1, 2, 3):
        again, start = model.generate(5, torch.Generator().manual_seed(7), batch_size=batch_size)
        torch.testing.assert_close(again, whole)
        assert len(start.provenance) == 5


def test_priors_get_what_they_need_from_the_data_through_one_hook():
    from colddiff.datasets import DatasetSource
    from colddiff.priors import GaussianNoisePrior, SourceImagePrior

    images = torch.rand(20, 1, 8, 8) * 0.2
    fitted = ChannelMeanPrior(1).fit_from(DatasetSource(list(images)), limit=10)
    assert fitted.is_fitted and 0 < fitted.gmm.means.item() < 0.2
    partners = [torch.rand(1, 8, 8) for _ in range(3)]
    source_prior = SourceImagePrior().fit_from(DatasetSource(partners=partners))
    assert source_prior.is_fitted and source_prior.sample(2, (1, 8, 8)).x_T.shape == (2, 1, 8, 8)
    assert GaussianNoisePrior().fit_from(DatasetSource()).is_fitted  # needs nothing
    with pytest.raises(ValueError, match="needs training images"):
        ChannelMeanPrior(1).fit_from(DatasetSource())
    with pytest.raises(ValueError, match="partner images"):
        SourceImagePrior().fit_from(DatasetSource(list(images)))


def test_generate_with_a_fitted_prior():
    model = tiny_model(degradation=cd.GaussianBlur(4, kernel_size=5, final_mean=True), prior=ChannelMeanPrior(1))
    model.prior.fit(torch.rand(32, 1, 16, 16))
    images, start = model.generate(3, torch.Generator().manual_seed(0))
    assert images.shape == (3, 1, 16, 16) and 0 <= images.min() and images.max() <= 1
    assert len(start.provenance) == 3 and start.provenance[0]["source"] == "prior"
    again, _ = model.generate(3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(images, again)
    with pytest.raises(RuntimeError, match="no generation prior"):
        tiny_model().generate(2)


def test_prior_is_fitted_at_the_start_of_training(tmp_path):
    model = tiny_model(degradation=cd.GaussianBlur(4, kernel_size=5, final_mean=True), prior=ChannelMeanPrior(1),
                       prior_fit_images=200)
    assert not model.prior.is_fitted
    trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, tiny_data())
    assert model.prior.is_fitted
    mean = model.prior.gmm.means[0, 0].item()
    assert 0.05 < mean < 0.3  # MNIST digits: mostly black


def test_hyperparameters_are_a_config_and_reload(tmp_path):
    model = tiny_model(prior=ChannelMeanPrior(1), degradation=cd.GaussianBlur(4, kernel_size=5, final_mean=True))
    model.prior.fit(torch.rand(16, 1, 16, 16))
    hp = dict(model.hparams)
    assert hp["degradation"]["class_path"] == "colddiff.degradations.blur.GaussianBlur"
    assert hp["network"]["init_args"]["dim"] == 8
    t = trainer(tmp_path, max_steps=1, limit_val_batches=0)
    t.fit(model, tiny_data())
    path = tmp_path / "model.ckpt"
    t.save_checkpoint(path)
    reloaded = ColdDiffusion.load_from_checkpoint(path, weights_only=True)
    assert isinstance(reloaded.degradation, cd.GaussianBlur) and reloaded.degradation.final_mean
    x, level = torch.rand(2, 1, 16, 16), torch.tensor([1, 3])
    torch.testing.assert_close(reloaded.restore(x, level), model.restore(x, level))
    torch.testing.assert_close(reloaded.prior.gmm.means, model.prior.gmm.means)


def test_loading_never_unpickles(tmp_path):
    path = tmp_path / "model.ckpt"
    t = trainer(tmp_path, max_steps=1, limit_val_batches=0)
    t.fit(tiny_model(), tiny_data())
    t.save_checkpoint(path)
    with pytest.raises(ValueError, match="weights_only=True only"):
        ColdDiffusion.load_from_checkpoint(path, weights_only=False)
    assert isinstance(ColdDiffusion.load_from_checkpoint(path).degradation, cd.GaussianBlur)


def test_networks_that_do_not_record_their_arguments_must_be_passed_on_reload(tmp_path):
    class Plain(torch.nn.Module):
        in_channels = out_channels = 1
        image_size = None  # any size

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x, t):
            return self.conv(x)

    model = tiny_model(network=Plain())
    t = trainer(tmp_path, max_steps=1, limit_val_batches=0)
    t.fit(model, tiny_data())
    t.save_checkpoint(tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match=r"network .*Plain.* pass it explicitly"):
        ColdDiffusion.load_from_checkpoint(tmp_path / "plain.ckpt", weights_only=True)
    reloaded = ColdDiffusion.load_from_checkpoint(tmp_path / "plain.ckpt", weights_only=True, network=Plain())
    torch.testing.assert_close(reloaded.network.conv.weight, model.network.conv.weight)


def test_batches_that_do_not_match_the_model_are_rejected():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"configured for \(B, 1, 16, 16\).*check the data module"):
        model.loss(torch.rand(2, 3, 16, 16))


@pytest.mark.parametrize("kwargs,match", [
    (dict(image_size=15), r"divisible by 2\*\*1 = 2.*got 15x15"),
    (dict(channels=3), "in_channels is 1 but the images have channels=3"),
    (dict(degradation=cd.Pixelate(3)), r"divisible by 2\*\*3 = 8, got 12x12"),
    (dict(loss="huber"), "loss must be"),
    (dict(sampler="ddpm"), "sampler must be one of"),
    (dict(ema_decay=1.5), "ema_decay"),
    (dict(degradation=torch.nn.Identity()), "degradation must be a colddiff Degradation"),
])
def test_bad_configuration_fails_at_construction(kwargs, match):
    if kwargs.get("degradation") is not None and isinstance(kwargs["degradation"], cd.Pixelate):
        kwargs = dict(kwargs, image_size=12,
                      network=ConvNeXtUNet(in_channels=1, dim=8, dim_mults=(1, 2), image_size=12))
    with pytest.raises((ValueError, TypeError), match=match):
        tiny_model(**kwargs)


class _NaNAfter(torch.nn.Module):
    """Wraps a network and returns NaN from a given call on."""

    def __init__(self, net, after):
        super().__init__()
        self.net, self.after, self.calls = net, after, 0
        self.in_channels = self.out_channels = net.in_channels
        self.image_size = net.image_size

    def forward(self, x, t):
        self.calls += 1
        out = self.net(x, t)
        return out * float("nan") if self.training and self.calls > self.after else out


def test_nonfinite_loss_stops_training_naming_the_step(tmp_path):
    net = ConvNeXtUNet(in_channels=1, dim=8, dim_mults=(1, 2), num_blocks=1, attention="none", image_size=16)
    model = tiny_model(network=_NaNAfter(net, after=3))
    with pytest.raises(NonFiniteLossError, match="at global step 3"):
        trainer(tmp_path, max_steps=20, limit_val_batches=0, log_every_n_steps=5).fit(model, tiny_data())


def test_nonfinite_batches_skipped_and_counted_on_request(tmp_path):
    net = ConvNeXtUNet(in_channels=1, dim=8, dim_mults=(1, 2), num_blocks=1, attention="none", image_size=16)
    model = tiny_model(network=_NaNAfter(net, after=3), nonfinite_loss="skip")
    snapshots = {}

    class Snapshot(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            snapshots[batch_idx] = [p.detach().clone() for p in module.network.parameters()]

    trainer(tmp_path, max_steps=6, limit_val_batches=0, callbacks=[Snapshot()]).fit(model, tiny_data())
    assert int(model.skipped_batches) == 3  # batches 3, 4, 5 gave NaN
    assert all(torch.isfinite(p).all() for p in model.network.parameters())
    for before, after in zip(snapshots[2], snapshots[5]):
        assert torch.equal(before, after)  # skipped batches changed nothing
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[0], snapshots[2]))


def test_checkpoint_configs_cannot_build_arbitrary_callables():
    from colddiff._config import build, model_kwargs

    with pytest.raises(ValueError, match="refusing to import 'os.system'"):
        build({"class_path": "os.system", "init_args": {"command": "echo pwned"}}, "network")
    with pytest.raises(ValueError, match="refusing to import 'collections.OrderedDict'"):
        model_kwargs({"degradation": {"class_path": "collections.OrderedDict"}})
    with pytest.raises(ValueError, match="refusing to build 'colddiff.module.ColdDiffusion'"):
        build({"class_path": "colddiff.module.ColdDiffusion"}, "network")  # a colddiff class, not a component
    with pytest.raises(ValueError, match="cannot import"):
        build({"class_path": "colddiff.nets.NoSuchNet"}, "network")
    with pytest.raises(ValueError, match="refusing to import 'torch.nn.Conv2d'"):
        model_kwargs({"optimizer": {"class_path": "torch.nn.Conv2d"}})
    optimizer = model_kwargs({"optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5}}})["optimizer"]
    assert isinstance(optimizer([torch.nn.Parameter(torch.zeros(1))]), torch.optim.SGD)


def test_compiled_sampling_network_matches_eager():
    """The fast path (torch.compile of the EMA network) gives the eager network's outputs."""
    model = tiny_model().eval()
    x, t = torch.rand(2, 1, 16, 16), torch.tensor([1, 4])
    expected = model.restore(x, t)
    model.pipeline.compile_for_sampling(None)
    torch.testing.assert_close(model.restore(x, t), expected, atol=1e-5, rtol=1e-5)
    x_T = model.degradation(torch.rand(2, 1, 16, 16), 4)
    compiled = model.sample(x_T, steps=2)
    model.pipeline._compiled.clear()
    torch.testing.assert_close(compiled, model.sample(x_T, steps=2), atol=1e-5, rtol=1e-5)


def _conv_weights(network: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(name, p) for name, p in network.named_parameters() if p.ndim == 4]


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_reloaded_model_samples_what_the_trained_model_sampled(tmp_path, channels_last):
    """Issue 18: the trained model ran channels-last weights (set by Lightning's configure_model) and the reloaded
    one contiguous weights, whose convolution kernels differ in the last bits on some CPUs. The layout is now set at
    construction and kept by loading, so the same checkpoint and seed give the same images, bit for bit."""
    from colddiff.export import export_model, load_model
    from colddiff.priors import GaussianNoisePrior

    torch.manual_seed(0)
    model = tiny_model(degradation=cd.GaussianNoise(4), prior=GaussianNoisePrior(), channels_last=channels_last,
                       ema_start=0, ema_every=1)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert all(p.is_contiguous(memory_format=layout) for _, p in _conv_weights(model.ema_network))
    t = trainer(tmp_path, max_steps=2, limit_val_batches=0)
    t.fit(model, tiny_data())
    path = tmp_path / "model.ckpt"
    t.save_checkpoint(path)
    model.eval()
    expected, _ = model.generate(6, torch.Generator().manual_seed(3))
    for reloaded in (ColdDiffusion.load_from_checkpoint(path).eval(), load_model(path),
                     load_model(export_model(model, tmp_path / "e"))):
        network = getattr(reloaded, "ema_network", getattr(reloaded, "network", None))
        for (name, p), (_, q) in zip(_conv_weights(model.ema_network), _conv_weights(network)):
            assert p.stride() == q.stride(), name  # the root cause: the same layout, hence the same kernels
        images, _ = reloaded.generate(6, torch.Generator().manual_seed(3))
        assert torch.equal(images, expected)  # one code path, one machine: bit-equal is the promise


def test_the_module_holds_its_inference_parts_only_through_its_pipeline():
    """Degradation, prior, objective and the EMA network live in the pipeline (one holder); the state dict keeps the
    checkpoints' layout (ema_network.*, degradation.*, prior.*), and the training forward is the pipeline's
    run_network with the live network."""
    from tests.helpers import tiny_model

    model = tiny_model()
    pipeline = model.pipeline
    assert model.degradation is pipeline.degradation and model.prior is pipeline.prior
    assert model.objective is pipeline.objective and model.ema_network is pipeline.network
    assert [name for name, _ in model.named_children()] == ["network", "pipeline", "val_metrics"]
    keys = set(model.state_dict())
    assert {k.split(".")[0] for k in keys} == {"network", "ema_network", "degradation", "prior", "skipped_batches"}
    other = tiny_model(seed=1)
    other.load_state_dict(model.state_dict())
    for a, b in zip(other.ema_network.parameters(), model.ema_network.parameters()):
        assert torch.equal(a, b)
    x, t = torch.rand(2, 1, 16, 16), torch.tensor([1, 3])
    torch.testing.assert_close(model(x, t), model.network(x, t))
