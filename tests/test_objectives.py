"""Objectives: what the network predicts, its loss, its level draw, and output -> x0_hat, on known answers."""

from __future__ import annotations

import pytest
import torch

import colddiff.degradations as cd
from colddiff.objectives import (
    OBJECTIVES,
    PredictEpsilon,
    PredictV,
    PredictVelocity,
    PredictX0,
    default_objective,
)
from tests.conftest import OPERATORS, smooth_images

T = 8

#: every noise-bearing degradation (with the levels tested), and the parameterisations it admits
SIGNAL_NOISE = {
    "GaussianNoise-cosine": (lambda: cd.GaussianNoise(T), ("x0", "v", "velocity")),
    "GaussianNoise-linear-1000": (lambda: cd.GaussianNoise(1000, schedule="linear"),
                                  ("x0", "epsilon", "v", "velocity")),
    "FlowNoise": (lambda: cd.FlowNoise(T), ("x0", "v", "velocity")),
    "Mix": (lambda: cd.Mix(T), ("x0", "v", "velocity")),
    "BlurNoise-heat-clipped": (lambda: cd.BlurNoise(T, heat_sigma_max=3.0, alpha_bar=_clipped_cosine()),
                               ("x0", "epsilon", "v", "velocity")),
    "BlurNoise-kernel": (lambda: cd.BlurNoise(T, blur="kernel", kernel_size=5, sigma=0.8, border="reflect"),
                         ("x0",)),  # its transfer function changes sign: ε, v and velocity are refused
}


def _clipped_cosine() -> list[float]:
    from colddiff.schedules import cosine_alpha_bar

    values = cosine_alpha_bar(T, 0.0).clamp(min=1e-3)
    values[0] = 1.0
    return values.tolist()


def _case(name: str, dtype: torch.dtype = torch.float64):
    """The degradation, clean images, params, eight levels from 1 to T (every level for T = 8) and x_t; float64,
    so that the conversions are checked as algebra (near zero SNR, float32 rounding of x_t is amplified by the
    conditioning ``1 / alpha_t``, which is the method's, not the code's)."""
    op = SIGNAL_NOISE[name][0]().to(dtype)
    x0 = smooth_images(batch=8, channels=1, size=16).to(dtype)
    context = {"partner": smooth_images(batch=8, channels=1, size=16, seed=5).to(dtype)} \
        if isinstance(op, cd.Mix) else {}
    params = op.make_params(x0, torch.Generator().manual_seed(0), **context)
    t = torch.linspace(1, op.num_steps, 8).round().long()
    return op, x0, params, t, op.degrade_input(x0, t, params)


@pytest.mark.parametrize("name,prediction", [(n, p) for n, (_, ps) in SIGNAL_NOISE.items() for p in ps])
def test_a_network_that_outputs_the_exact_target_restores_x0(name, prediction):
    """For each parameterisation, the batch's exact target (ε, v, velocity) turned into x0_hat is x0 at every
    level 1..T, zero SNR included where the parameterisation admits it (float tolerance)."""
    op, x0, params, t, x_t = _case(name)
    objective = OBJECTIVES[prediction](loss="l2")
    objective.check_degradation(op)
    target = objective.target(x0, t, params, op)
    x0_hat = objective.to_x0(target, x_t, t, op)
    torch.testing.assert_close(x0_hat, x0, atol=1e-7, rtol=0)
    assert objective.loss(target, target, t, op).item() == pytest.approx(0.0, abs=1e-12)


def test_targets_have_the_defining_relations():
    """ε is the noise the degradation drew; v = alpha eps - sigma x~0; the velocity is d x~_s / ds on the flow's
    straight path (a finite difference of the degradation itself)."""
    op, x0, params, t, x_t = _case("GaussianNoise-linear-1000")
    alpha, sigma = op.coefficients(t)
    eps = PredictEpsilon().target(x0, t, params, op)
    torch.testing.assert_close(eps, params["noise"])
    v = PredictV().target(x0, t, params, op)
    torch.testing.assert_close(v, alpha[:, None, None, None] * eps - sigma[:, None, None, None] * (2 * x0 - 1))
    flow = cd.FlowNoise(1000)
    flow_params = flow.make_params(x0, torch.Generator().manual_seed(1))
    level = torch.full((T,), 500)
    slope = (flow.degrade(x0, level + 1, flow_params) - flow.degrade(x0, level - 1, flow_params)) * 2 / (2 / 1000)
    torch.testing.assert_close(PredictVelocity().target(x0, level, flow_params, flow), slope, atol=2e-3, rtol=0)


def test_each_parameterisation_reduces_to_x0_prediction_where_it_must():
    """v at zero SNR is (minus) x0; the velocity at s = 1 is noise minus x0 and gives x0 from x_T alone; with no
    noise (alpha = 1) every conversion returns the input itself."""
    op, x0, params, t, x_t = _case("GaussianNoise-cosine")
    last = torch.full((8,), T)
    x_T = op.degrade_input(x0, last, params)
    torch.testing.assert_close(PredictV().to_x0(-(2 * x0 - 1), x_T, last, op), x0, atol=1e-6, rtol=0)
    zero = torch.zeros(8, dtype=torch.long)
    for objective in (PredictEpsilon(), PredictV(), PredictVelocity()):
        out = torch.randn_like(x0)  # whatever the network says, level 0 is the clean image itself
        torch.testing.assert_close(objective.to_x0(out, x0, zero, op), x0)
    assert torch.equal(PredictX0().to_x0(x_t, x0, t, op), x_t)


def test_min_snr_weighting_weights_the_x0_error_by_the_capped_snr():
    """Hang et al., eq. 8: the loss is ``min(SNR_t, gamma) ||x~0 - x~0_hat||^2`` whatever the network predicts; for
    ε that is their ``min(SNR, gamma) / SNR`` times the ε loss (so a gamma above every SNR is the plain ε loss)."""
    op, x0, params, t, x_t = _case("GaussianNoise-linear-1000")
    alpha, sigma = op.coefficients(t)
    snr = alpha**2 / sigma**2
    torch.manual_seed(0)
    for cls in (PredictX0, PredictEpsilon, PredictV, PredictVelocity):
        objective = cls(loss="l2", weighting="min-snr", snr_gamma=5.0)
        target = objective.target(x0, t, params, op)
        output = target + 0.01 * torch.randn_like(target)
        x0_error = ((objective.to_x0(output, x_t, t, op) - x0) * 2).pow(2).flatten(1).mean(1)  # centred units
        expected = (snr.clamp(max=5.0) * x0_error).mean()
        torch.testing.assert_close(objective.loss(output, target, t, op).double(), expected, rtol=1e-5, atol=0)
    unbounded = PredictEpsilon(weighting="min-snr", snr_gamma=1e30)
    target = unbounded.target(x0, t, params, op)
    output = target + 0.01 * torch.randn_like(target)
    torch.testing.assert_close(unbounded.loss(output, target, t, op), PredictEpsilon().loss(output, target, t, op))


def test_objectives_a_degradation_cannot_carry_are_refused_naming_both():
    for cls in (PredictEpsilon, PredictV, PredictVelocity):
        with pytest.raises(ValueError, match=rf"{cls.__name__} .* needs a degradation with signal and noise "
                                             r"coefficients.*but GaussianBlur has none"):
            cls().check_degradation(cd.GaussianBlur(4))
    with pytest.raises(ValueError, match="min-SNR weighting.*but Pixelate has none"):
        PredictX0(loss="l2", weighting="min-snr").check_degradation(cd.Pixelate(2))
    with pytest.raises(ValueError, match=r"PredictEpsilon cannot recover x0 where no signal is left.*levels \[8\]"):
        PredictEpsilon().check_degradation(cd.GaussianNoise(T))  # cosine: alpha_bar_T = 0
    with pytest.raises(ValueError, match="invertible signal operator"):  # the heat blur without d_min vanishes
        PredictEpsilon().check_degradation(cd.BlurNoise(T, min_scale=0.0, alpha_bar=_clipped_cosine()))
    for cls in (PredictEpsilon, PredictV, PredictVelocity):  # the kernel blur's transfer function changes sign
        with pytest.raises(ValueError, match="transfer function stays positive"):
            cls().check_degradation(cd.BlurNoise(T, blur="kernel", alpha_bar=_clipped_cosine()))
    with pytest.raises(ValueError, match=r"min-SNR weighting gives no weight where SNR_t = 0.*levels \[8\]"):
        PredictV(weighting="min-snr").check_degradation(cd.GaussianNoise(T))  # cosine: no signal at T
    with pytest.raises(ValueError, match="min-SNR weighting is defined for the L2 loss"):
        PredictEpsilon(loss="l1", weighting="min-snr")
    with pytest.raises(ValueError, match="loss must be 'l1' or 'l2'"):
        PredictX0(loss="huber")


def test_per_family_defaults():
    """x0 + L1 for the deterministic degradations and for mixing (the cold paper); what their papers train for the
    noise-bearing ones: ε + MSE where every level keeps signal, v where the schedule ends at zero SNR, the velocity
    for the flow; the defaults without a signal operator clip x0_hat to [0, 1] while sampling as DDPM does."""
    def spec(op):
        objective = default_objective(op)
        return type(objective).__name__, objective.loss_name, objective.clip_x0

    assert spec(cd.GaussianBlur(4)) == spec(cd.Pixelate(2)) == spec(cd.Mix(4)) == ("PredictX0", "l1", False)
    assert spec(cd.GaussianNoise(1000, schedule="linear")) == ("PredictEpsilon", "l2", True)
    assert spec(cd.GaussianNoise(20)) == ("PredictV", "l2", True)
    # Blurring Diffusion's sampler never clips (an x0_hat through the blur's inverse would spread amplified errors)
    assert spec(cd.BlurNoise(20, alpha_bar=None)) == ("PredictV", "l2", False)
    assert spec(cd.BlurNoise(T, alpha_bar=_clipped_cosine())) == ("PredictEpsilon", "l2", False)
    assert spec(cd.FlowNoise(20)) == ("PredictVelocity", "l2", False)
    assert spec(cd.BlurNoise(20, blur="kernel")) == ("PredictX0", "l2", True)  # the posterior mean, directly
    assert spec(cd.BlurNoise(20, noise="none")) == ("PredictX0", "l1", False)  # noise-free: deterministic
    assert spec(cd.Interpolation(10)) == ("PredictX0", "l2", False) and default_objective(
        cd.Interpolation(10)).end_probability == pytest.approx(1 / 3)  # InDI


#: the default objective (class and the arguments that differ from its defaults) of every shared operator of
#: tests/conftest.py that does not train x0 under L1, and of the noise-bearing variants below; recorded from the code
#: before the policy moved from SignalNoise.default_objective to colddiff.objectives (issue 31), where it must stay
DEFAULTS = {
    "GaussianNoise": (PredictV, {"loss": "l2", "clip_x0": True}),
    "GaussianNoise-linear": (PredictEpsilon, {"loss": "l2", "clip_x0": True}),
    "FlowNoise": (PredictVelocity, {"loss": "l2"}),
    "Interpolation-InDI": (PredictX0, {"loss": "l2", "end_probability": 1 / 3}),
    "BlurNoise": (PredictV, {"loss": "l2"}),
    "BlurNoise-ratio": (PredictV, {"loss": "l2"}),
    "BlurNoise-kernel-fixed": (PredictX0, {"loss": "l2", "clip_x0": True}),
    "GaussianNoise-linear-1000": (PredictEpsilon, {"loss": "l2", "clip_x0": True}),
    "GaussianNoise-alpha-bar": (PredictEpsilon, {"loss": "l2", "clip_x0": True}),
    "BlurNoise-cosine-logsnr": (PredictEpsilon, {"loss": "l2"}),
    "BlurNoise-alpha-bar": (PredictEpsilon, {"loss": "l2"}),
    "BlurNoise-min0-cosine-logsnr": (PredictV, {"loss": "l2"}),
    "BlurNoise-kernel": (PredictX0, {"loss": "l2", "clip_x0": True}),
    "BlurNoise-kernel-cosine-logsnr": (PredictX0, {"loss": "l2", "clip_x0": True}),
}
#: noise-bearing variants beyond the shared operators
VARIANTS = {
    "GaussianNoise-linear-1000": lambda T: cd.GaussianNoise(1000, schedule="linear"),
    "GaussianNoise-alpha-bar": lambda T: cd.GaussianNoise(4, alpha_bar=[1.0, 0.9, 0.5, 0.2, 0.05]),
    "Mix-alpha-bar": lambda T: cd.Mix(4, alpha_bar=[1.0, 0.9, 0.5, 0.2, 0.05]),
    "BlurNoise-cosine-logsnr": lambda T: cd.BlurNoise(T, noise="cosine-logsnr"),
    "BlurNoise-alpha-bar": lambda T: cd.BlurNoise(4, alpha_bar=[1.0, 0.9, 0.5, 0.2, 0.05]),
    "BlurNoise-none": lambda T: cd.BlurNoise(T, noise="none"),
    "BlurNoise-min0-cosine-logsnr": lambda T: cd.BlurNoise(T, noise="cosine-logsnr", min_scale=0.0),
    "BlurNoise-kernel": lambda T: cd.BlurNoise(T, blur="kernel"),
    "BlurNoise-kernel-cosine-logsnr": lambda T: cd.BlurNoise(T, blur="kernel", noise="cosine-logsnr"),
    "BlurNoise-kernel-none": lambda T: cd.BlurNoise(T, blur="kernel", noise="none"),
}


@pytest.mark.parametrize("name", sorted({*OPERATORS, *VARIANTS}))
def test_the_default_objective_of_every_operator(name):
    """Same class, same recorded arguments as before the policy moved into colddiff.objectives (issue 31): x0 under
    L1 unless listed in DEFAULTS."""
    from colddiff._config import describe

    op = (OPERATORS.get(name) or VARIANTS[name])(5)
    cls, arguments = DEFAULTS.get(name, (PredictX0, {"loss": "l1"}))
    assert describe(default_objective(op)) == describe(cls(**arguments))


def test_level_draws():
    uniform, stratified = PredictX0(), PredictX0(levels="stratified")
    for objective in (uniform, stratified):
        t = objective.draw_levels(4000, 20, "cpu", torch.Generator().manual_seed(0))
        assert t.min() >= 1 and t.max() <= 20 and t.dtype == torch.long
        counts = torch.bincount(t, minlength=21)[1:].double()
        assert (counts - 200).abs().max() < 60  # about uniform over 1..20
    # stratified: a batch of T covers every level once, in random order
    t = stratified.draw_levels(20, 20, "cpu", torch.Generator().manual_seed(1))
    assert sorted(t.tolist()) == list(range(1, 21)) and t.tolist() != list(range(1, 21))
    # InDI's point mass at the observation: a third of the draws at T
    t = PredictX0(end_probability=1 / 3).draw_levels(6000, 20, "cpu", torch.Generator().manual_seed(2))
    assert abs((t == 20).float().mean().item() - (1 / 3 + 2 / 3 / 20)) < 0.02
    # uniform keeps the draws of the module before objectives existed (same generator, same levels)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(uniform.draw_levels(16, 7, "cpu", g1), torch.randint(1, 8, (16,), generator=g2))


def test_training_loss_is_zero_for_a_network_that_outputs_the_target():
    """The training recipe's draws (levels, params, noise) are the ones target() sees."""
    op = cd.GaussianNoise(T, schedule="linear")
    x0 = smooth_images(batch=6, channels=1, size=16)
    objective = PredictEpsilon()

    def oracle(x_t, t):  # recovers the noise the batch was degraded with, from x_t and x0
        alpha, sigma = op.coefficients(t)
        return ((2 * x_t - 1) - alpha.float()[:, None, None, None] * (2 * x0 - 1)) / sigma.float()[:, None, None, None]

    loss = objective.training_loss(oracle, op, x0, generator=torch.Generator().manual_seed(0))
    assert loss.item() < 1e-9


def test_ihdm_objective_predicts_the_previous_level_and_samples_every_level():
    """PredictPrevious (Inverse Heat Dissipation): the network's target is the residual D(x0, t - 1) - x_t of its
    (noisy) input; an oracle network makes the training loss 0 and Algorithm 1 walks D(x0, T) back to x0 exactly, one
    network call per level, and the samplers refuse to skip the levels it never learnt to jump."""
    from torch import nn

    from colddiff.objectives import PredictPrevious
    from colddiff.pipeline import Pipeline

    op = cd.BlurNoise(6, heat_schedule="log", heat_sigma_min=0.5, heat_sigma_max=4.0, min_scale=0.0, noise="none")
    x0 = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    calls = []

    class Oracle(nn.Module):
        in_channels, image_size = 1, 8

        def forward(self, x_t, t):
            calls.append(int(t[0]))
            return op.degrade(x0, t - 1, {}) - x_t

    objective = PredictPrevious()
    noise = 0.01 * torch.ones(7)
    assert objective.training_loss(Oracle(), op, x0, input_noise=noise) < 1e-12
    four, three = op.degrade(x0, torch.full((3,), 4), {}), op.degrade(x0, torch.full((3,), 3), {})
    torch.testing.assert_close(objective.output_target(x0, four, torch.full((3,), 4), {}, op), three - four)
    pipeline = Pipeline(op, Oracle(), objective, image_size=8, channels=1, sampler="naive")
    calls.clear()
    torch.testing.assert_close(pipeline.sample(op.degrade(x0, torch.full((3,), 6), {})), x0, atol=1e-5, rtol=0)
    assert calls == [6, 5, 4, 3, 2, 1]
    with pytest.raises(ValueError, match="predicts the next level only"):
        pipeline.sample(op.degrade(x0, torch.full((3,), 6), {}), steps=3)


def test_speed_draw_suppresses_the_convergence_area():
    """SpeeD's asymmetric sampling (arXiv 2405.17403, their code's criterion): on DDPM's linear betas, where
    sqrt(1 - alpha_bar_t) stops growing near pure noise, those levels are drawn 5 times less often than the others;
    on the flow's straight line (sigma grows at a constant rate) the draw is uniform; a degradation without noise is
    refused by name."""
    op = cd.GaussianNoise(1000, schedule="linear")
    objective = PredictEpsilon(levels="speed")
    objective.check_degradation(op)
    weights = objective._speed_weights(op)
    _, sigma = op.coefficients(torch.arange(0, 1001))
    growth = torch.gradient(sigma.double())[0][1:]
    assert torch.equal(weights, torch.where(growth >= 1e-4, 2.5, 0.5).double())
    converged = weights == 0.5
    assert 50 < int(converged.sum()) < 900 and bool(converged[-1]) and not bool(converged[0])
    t = objective.draw_levels(20000, 1000, "cpu", torch.Generator().manual_seed(0), op)
    per_level_rate = torch.bincount(t, minlength=1001)[1:].double()
    ratio = per_level_rate[~converged].mean() / per_level_rate[converged].mean()
    assert 4.0 < ratio < 6.0 and int(t.min()) >= 1 and int(t.max()) <= 1000
    flow = cd.FlowNoise(100)
    assert bool((PredictVelocity(levels="speed")._speed_weights(flow) == 2.5).all())
    with pytest.raises(ValueError, match="SpeeD's level draw"):
        PredictX0(levels="speed").check_degradation(cd.GaussianBlur(10, kernel_size=3))
    with pytest.raises(ValueError, match="pass the degradation"):
        objective.draw_levels(4, 1000, "cpu")
