"""Known answers for every sampler family, with exact restorers over a small bank of real digits.

For a data distribution that is a bank of ``N`` images, the posterior over the bank given ``x_t`` is known in closed
form for every Gaussian forward process ``x~_t = alpha_t A_t x~0 + sigma_t eps`` (and for IHDM's blur plus its
training noise): weights ``w_i ~ exp(-||x~_t - alpha_t A_t x~_i||^2 / (2 sigma_t^2))``.  Its mean is what an MSE-trained
network converges to, its per-pixel median what an L1-trained one converges to.  Run through colddiff's own
operators, priors and samplers:

* with the posterior **mean**, DDIM (Algorithm 2 with the noise re-estimated), DDPM's ancestral sampler, the flow's
  Euler and Heun steps, Blurring Diffusion's DDIM and ancestral sampler, and IHDM's Algorithm 1 with its sampling
  noise all return bank images (nearest-bank distance near 0) in the bank's proportions (its mean ink);
* with the posterior **median** the noise-bearing samplers still end on bank images at this size, but in the wrong
  proportions: far too little ink (thin digits, "1"s), and for blur + noise far fewer distinct images — the mode
  collapse an L1-trained hot model shows.  (IHDM's small noise keeps its posterior nearly one-hot, where median and
  mean agree; no claim is made there.)

These tests keep the class of defect of issue 19 (noise-bearing methods trained for the median) from coming back.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

import colddiff.degradations as cd
from colddiff.datasets import EmbeddedMNIST, ImageTransform
from colddiff.degradations.base import SignalNoise
from colddiff.priors import GaussianNoisePrior
from colddiff.sampling import ancestral_refusal, ancestral_step, sample

SIZE, BANK, SAMPLES = 16, 300, 128


@pytest.fixture(scope="module")
def bank() -> torch.Tensor:
    digits = EmbeddedMNIST("train", ImageTransform(SIZE, 1, train=False))
    return torch.stack([digits[i] for i in range(BANK)])


def exact_restorer(op, bank: torch.Tensor, median: bool = False, noise_std: float | None = None):
    """``restore(x_t, t)``: the posterior mean (or per-pixel weighted median) of the bank given ``x_t``.

    ``noise_std``: the noise of the inputs in ``[0, 1]`` units when it is not the degradation's own (IHDM's
    training noise on a noise-free blur)."""
    flat = bank.flatten(1).double()
    sorted_values, order = flat.sort(0)

    def restore(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = op.coefficients(t)
        sigma = sigma if noise_std is None else torch.full_like(sigma, 2 * noise_std)  # centred units
        levels = t[:1].expand(len(bank))
        signal = (2 * bank - 1).double()
        signal = signal if op.signal_is_identity else op.apply_signal(signal, levels)
        distance = ((2 * x_t - 1).double().flatten(1)[:, None] - alpha[0] * signal.flatten(1)[None]) ** 2
        weights = torch.softmax(-distance.sum(-1) / (2 * sigma[:, None] ** 2).clamp(min=1e-12), dim=1)
        if not median:
            return (weights @ flat).view_as(x_t).to(x_t.dtype)
        cumulative = weights[:, order].cumsum(1)  # each pixel's bank values in sorted order
        index = (cumulative < 0.5).sum(1).clamp(max=len(bank) - 1)
        return sorted_values.gather(0, index).view_as(x_t).to(x_t.dtype)

    return restore


def summary(images: torch.Tensor, bank: torch.Tensor) -> tuple[torch.Tensor, int, float]:
    """Each image's RMSE to its nearest bank image, how many distinct bank images are nearest, the mean ink."""
    distance = torch.cdist(images.clamp(0, 1).flatten(1).double(), bank.flatten(1).double()) / math.sqrt(SIZE * SIZE)
    return distance.min(1).values, len(set(distance.argmin(1).tolist())), images.mean().item()


def _noise_start():
    return GaussianNoisePrior().sample(SAMPLES, (1, SIZE, SIZE), torch.Generator().manual_seed(1))


HOT = lambda: cd.GaussianNoise(1000, schedule="linear")  # noqa: E731 - DDPM's forward process
FLOW = lambda: cd.FlowNoise(1000)  # noqa: E731
BLUR_NOISE = lambda: cd.BlurNoise(1000, noise="cosine-logsnr", heat_sigma_max=8.0)  # noqa: E731 - Blurring Diffusion


@pytest.mark.parametrize("make,sampler,steps", [
    (HOT, "improved", 20),      # DDIM
    (HOT, "ancestral", 20),     # DDPM
    (FLOW, "improved", 20),     # Euler
    (FLOW, "heun", 10),         # Heun, 19 network calls
    (BLUR_NOISE, "improved", 20),   # Blurring Diffusion, DDIM
    (BLUR_NOISE, "ancestral", 20),  # Blurring Diffusion's ancestral sampler, frequency by frequency
], ids=["ddim", "ddpm-ancestral", "flow-euler", "flow-heun", "blurring-ddim", "blurring-ancestral"])
def test_the_posterior_mean_samples_bank_images_in_the_banks_proportions(bank, make, sampler, steps):
    op = make()
    start = _noise_start()
    images = sample(sampler, exact_restorer(op, bank), op, start.x_T, params=start.params, steps=steps,
                    generator=torch.Generator().manual_seed(2))
    nearest, distinct, ink = summary(images, bank)
    assert (nearest < 0.01).float().mean() >= 0.95, nearest  # bank images
    assert distinct >= 0.7 * SAMPLES  # diverse
    assert abs(ink - bank.mean().item()) < 0.1 * bank.mean().item()  # the bank's proportions (mean ink, 128 draws)


def test_ihdm_with_the_posterior_mean_samples_bank_images(bank):
    """IHDM (arXiv 2206.13397): the noise-free heat blur, inputs with its training noise sigma, Algorithm 1 with its
    sampling noise delta, and its prior (blurred bank images + delta noise)."""
    op = cd.BlurNoise(40, heat_schedule="log", heat_sigma_min=0.5, heat_sigma_max=8.0, noise="none", min_scale=0.0)
    generator = torch.Generator().manual_seed(1)
    x_T = op.final_state(bank[torch.randint(0, BANK, (SAMPLES,), generator=generator)])
    x_T = x_T + 0.01 * torch.randn(x_T.shape, generator=generator)
    images = sample("naive", exact_restorer(op, bank, noise_std=0.01), op, x_T,
                    params={}, noise=0.01, generator=torch.Generator().manual_seed(2))
    nearest, distinct, ink = summary(images, bank)
    assert (nearest < 0.01).float().mean() >= 0.95 and distinct >= 0.7 * SAMPLES
    assert abs(ink - bank.mean().item()) < 0.1 * bank.mean().item()


@pytest.mark.parametrize("make,ink_ratio,distinct_ratio", [(HOT, 0.93, 1.1), (BLUR_NOISE, 0.75, 0.75)],
                         ids=["ddim", "blurring-ddim"])
def test_the_posterior_median_samples_the_wrong_proportions(bank, make, ink_ratio, distinct_ratio):
    """What an L1-trained noise-bearing model learns: the same sampler from the same start states with the median
    restorer gives too little ink (thin digits) and, for blur + noise, far fewer distinct images than with the mean
    (measured at this size: hot ink 0.110 vs 0.123; blur + noise 0.074 vs 0.129 and 62 vs 107 distinct)."""
    op = make()
    start = _noise_start()
    results = {}
    for median in (False, True):
        images = sample("improved", exact_restorer(op, bank, median=median), op, start.x_T, params=start.params,
                        steps=20)
        results[median] = summary(images, bank)
    (_, distinct_mean, ink_mean), (_, distinct_median, ink_median) = results[False], results[True]
    assert ink_median < ink_ratio * ink_mean, (ink_median, ink_mean)
    assert distinct_median <= distinct_ratio * distinct_mean, (distinct_median, distinct_mean)


@pytest.mark.parametrize("make", [HOT, FLOW, BLUR_NOISE], ids=["hot", "flow", "blur-noise"])
def test_the_ancestral_step_draws_from_the_posterior(make):
    """With the true x0, a forward draw at t followed by the ancestral step to s < t is a forward draw at s:
    mean 0.5 + alpha_s A_s (x0 - 0.5), standard deviation 0.5 sigma_s per pixel (4,000 draws)."""
    op = make()
    x0 = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)).expand(4000, 1, 8, 8).contiguous()
    t, s = torch.full((4000,), 700), torch.full((4000,), 300)
    params = op.make_params(x0, torch.Generator().manual_seed(1))
    x_s = ancestral_step(op, op.degrade(x0, t, params), x0, t, s, torch.Generator().manual_seed(2))
    alpha_s, sigma_s = op.coefficients(s[:1])
    mean = 0.5 + 0.5 * alpha_s.float() * op.apply_signal(2 * x0[:1] - 1, s[:1])
    torch.testing.assert_close(x_s.mean(0, keepdim=True), mean, atol=0.03, rtol=0)  # about 4 standard errors
    torch.testing.assert_close(x_s.std(0).mean(), 0.5 * sigma_s.float()[0], atol=0.01, rtol=0)


def test_indi_iteration_is_algorithm_2_with_the_observation_reestimated():
    """InDI's Algorithm 1, x_{s - d} = (d / s) F(x_s) + (1 - d / s) x_s, written out, equals colddiff's Algorithm 2 on
    the Interpolation path (any restorer, here an imperfect one), to float rounding."""
    op = cd.Interpolation(10, cd.GaussianBlur(10, kernel_size=5), noise_std=0.01)
    y = op.target.final_state(torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0)))

    def restorer(x, t):  # imperfect and level-dependent
        return (0.8 * x + 0.1 * t.float()[:, None, None, None] / 10).clamp(0, 1)

    x = y.clone()
    for level in range(10, 0, -1):
        s, d = level / 10, 1 / 10
        x = (d / s) * restorer(x, torch.full((3,), level)) + (1 - d / s) * x
    out = sample("improved", restorer, op, y, params=op.make_params(y))  # params: any, re-estimated at once
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)


def test_final_state_prior_draws_degraded_training_images():
    """IHDM's prior: a training image blurred to level K, plus noise of std noise_std; it needs the degradation,
    which the model gives it; it refuses a random degradation."""
    from colddiff.nets import ConvNeXtUNet
    from colddiff.pipeline import Pipeline
    from colddiff.priors import FinalStatePrior

    op = cd.BlurNoise(20, heat_schedule="log", heat_sigma_max=6.0, noise="none", min_scale=0.0)
    prior = FinalStatePrior(noise_std=0.0, max_images=8)
    with pytest.raises(ValueError, match="fitted through its model"):
        prior.fit(torch.rand(4, 1, 16, 16))
    net = ConvNeXtUNet(in_channels=1, dim=4, dim_mults=(1, 2), num_blocks=1, attention="none", image_size=16)
    Pipeline(op, net, prior=prior, image_size=16, channels=1)
    images = torch.rand(12, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    prior.fit(images)
    draw = prior.sample(5, (1, 16, 16), torch.Generator().manual_seed(1))
    for x_T, record in zip(draw.x_T, draw.provenance):
        torch.testing.assert_close(x_T, op.final_state(images[record["fit_index"]][None])[0])
    assert len(prior.states) == 8 and draw.params == {}
    with pytest.raises(ValueError, match=r"FinalStatePrior draws params \[\] but the degradation GaussianMask takes"):
        Pipeline(cd.GaussianMask(4, center="random"), net, prior=FinalStatePrior(), image_size=16, channels=1)
    with pytest.raises(ValueError, match="FinalStatePrior needs a deterministic degradation"):
        FinalStatePrior().bind(cd.GaussianMask(4, center="random"))


def test_the_ancestral_sampler_refuses_what_has_no_gaussian_posterior():
    x = torch.rand(2, 1, 8, 8)
    for op, match in ((cd.Mix(5), "noise image is not Gaussian noise"),
                      (cd.BlurNoise(5, noise="none"), "noise-free levels"),
                      (cd.BlurNoise(5, blur="kernel", kernel_size=3), "positive, invertible transfer function")):
        params = op.make_params(x, partner=torch.rand(2, 1, 8, 8)) if isinstance(op, cd.Mix) else None
        with pytest.raises(ValueError, match="the ancestral sampler cannot sample this degradation: .*" + match):
            sample("ancestral", lambda x_t, t: x_t, op, op.final_state(x, params), params=params)
    for op in (cd.GaussianNoise(5), cd.FlowNoise(5), cd.BlurNoise(5)):
        assert ancestral_refusal(op) is None, op
    assert "changes sign" in ancestral_refusal(cd.BlurNoise(5, blur="kernel", kernel_size=3))
    assert "vanishes" in ancestral_refusal(cd.BlurNoise(5, min_scale=0.0))
    assert "not a Gaussian forward process" in ancestral_refusal(cd.GaussianBlur(5))


class _Shrink(SignalNoise):
    """A noise-bearing operator written from the SignalNoise protocol alone (coefficients, noise_of, degrade):
    x~_t = sqrt(alpha_bar_t) x~0 + sqrt(1 - alpha_bar_t) eps with its own schedule."""

    param_keys = ("noise",)

    def __init__(self, alpha_bar: list[float]) -> None:
        super().__init__(len(alpha_bar) - 1)
        self.reestimate = True
        self.register_buffer("alpha_bar", torch.tensor(alpha_bar))

    def make_params(self, x0, generator=None, **context):
        return {"noise": torch.randn(x0.shape, generator=generator, dtype=x0.dtype)}

    def coefficients(self, t):
        a = self.alpha_bar.index_select(0, t).double()
        return a.sqrt(), (1 - a).sqrt()

    def noise_of(self, params):
        return params["noise"]

    def degrade(self, x0, t, params):
        alpha, sigma = (c.to(x0)[:, None, None, None] for c in self.coefficients(t))
        return 0.5 + 0.5 * (alpha * (2 * x0 - 1) + sigma * params["noise"].to(x0))


def test_an_operator_written_from_the_protocol_alone_gets_the_samplers_and_its_objective():
    """DDPM's ancestral sampler, DDIM (Algorithm 2 with re-estimated noise) and the default objective come from the
    protocol, not from the operator: an operator that only gives its coefficients and noise image samples as
    GaussianNoise on the same schedule does, and trains ε (signal at every level)."""
    from colddiff.objectives import PredictEpsilon, default_objective

    alpha_bar = [1.0, 0.9, 0.6, 0.3, 0.1, 0.02]
    mine, reference = _Shrink(alpha_bar), cd.GaussianNoise(5, alpha_bar=alpha_bar)
    x_T = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def restore(x_t, t):
        return (0.8 * x_t + 0.02 * t.float()[:, None, None, None]).clamp(0, 1)

    for name in ("ancestral", "improved", "dpm++2m"):
        runs = [sample(name, restore, op, x_T, generator=torch.Generator().manual_seed(1),
                       **({"params": {"noise": torch.zeros_like(x_T)}} if name == "improved" else {}))
                for op in (mine, reference)]
        torch.testing.assert_close(runs[0], runs[1], atol=1e-5, rtol=0)
    objective = default_objective(mine)
    assert type(objective) is PredictEpsilon and objective.loss_name == "l2" and objective.clip_x0


def _posterior(alpha_t, sigma_t, alpha_s, sigma_s, x_t, x0):
    """``q(x_s | x_t, x0)`` of a Gaussian path by conditioning the joint Gaussian of ``(x_s, x_t)`` given ``x0``
    (Markov: ``x_t = alpha_ts x_s + sigma_ts eps``): mean ``alpha_s x0 + Cov(x_s, x_t) / Var(x_t) (x_t - alpha_t x0)``,
    variance ``sigma_s^2 - Cov^2 / Var``; centred units, written independently of the code's formula."""
    alpha_ts = alpha_t / alpha_s
    cov, var = alpha_ts * sigma_s**2, sigma_t**2
    return alpha_s * x0 + cov / var * (x_t - alpha_t * x0), (sigma_s**2 - cov**2 / var).sqrt()


@pytest.mark.parametrize("make", [HOT, FLOW], ids=["hot", "flow"])
def test_the_ancestral_step_is_the_posterior_given_x_t(make):
    """For one fixed x_t, 4,000 draws of the step have the conditional mean and standard deviation of
    q(x_s | x_t, x0) (a step that ignored x_t and redrew the forward process at s would fail)."""
    op = make()
    x0 = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t, s = torch.full((4000,), 700), torch.full((4000,), 650)  # close levels: x_t says much about x_s
    x_t = op.degrade(x0, t[:1], op.make_params(x0, torch.Generator().manual_seed(1))).expand(4000, 1, 8, 8)
    draws = ancestral_step(op, x_t.contiguous(), x0.expand(4000, 1, 8, 8), t, s, torch.Generator().manual_seed(2))
    (alpha_t, sigma_t), (alpha_s, sigma_s) = op.coefficients(t[:1]), op.coefficients(s[:1])
    mean, std = _posterior(alpha_t.float(), sigma_t.float(), alpha_s.float(), sigma_s.float(), 2 * x_t[:1] - 1,
                           2 * x0 - 1)
    standard_error = std[0].item() / math.sqrt(4000)
    torch.testing.assert_close(2 * draws.mean(0, keepdim=True) - 1, mean, atol=4.5 * standard_error, rtol=0)
    torch.testing.assert_close(2 * draws.std(0).mean(), std[0], atol=0.01, rtol=0)
    # a step that forgot x_t (a fresh forward draw at s) has another mean: alpha_s x0
    assert (mean - alpha_s.float() * (2 * x0 - 1)).pow(2).mean().sqrt() > 10 * standard_error


def test_blurring_diffusions_ancestral_step_is_the_posterior_frequency_by_frequency():
    """In the DCT basis (scipy's orthonormal DCT-II, independent of colddiff's FFT route) each frequency of the
    step's draws has the mean and standard deviation of the per-frequency Gaussian posterior, with
    alpha_t = a_t d_t and d_t = (1 - d_min) exp(-lambda tau_t) + d_min."""
    scipy_fft = pytest.importorskip("scipy.fft")
    op = cd.BlurNoise(1000, noise="cosine-logsnr", heat_sigma_max=4.0)
    x0 = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)).double()
    t, s = torch.full((4000,), 700), torch.full((4000,), 300)
    op = op.double()
    x_t = op.degrade(x0, t[:1], op.make_params(x0, torch.Generator().manual_seed(1))).expand(4000, 1, 8, 8)
    draws = ancestral_step(op, x_t.contiguous(), x0.expand(4000, 1, 8, 8), t, s, torch.Generator().manual_seed(2))
    dct = lambda image: torch.from_numpy(scipy_fft.dctn((2 * image - 1).numpy(), axes=(-2, -1), norm="ortho"))  # noqa: E731
    k = torch.arange(8, dtype=torch.float64)
    lam = (math.pi * k[:, None] / 8) ** 2 + (math.pi * k[None, :] / 8) ** 2

    def alpha(level):
        a, sigma = op.coefficients(level[:1])
        tau = op.heat_sigmas[level[0]].double() ** 2 / 2
        return a * ((1 - op.min_scale) * torch.exp(-lam * tau) + op.min_scale), sigma

    (alpha_t, sigma_t), (alpha_s, sigma_s) = alpha(t), alpha(s)
    mean, std = _posterior(alpha_t, sigma_t, alpha_s, sigma_s, dct(x_t[:1])[0, 0], dct(x0)[0, 0])
    coefficients = dct(draws)[:, 0]
    standard_error = std.max().item() / math.sqrt(4000)
    torch.testing.assert_close(coefficients.mean(0), mean, atol=4.5 * standard_error, rtol=0)
    torch.testing.assert_close(coefficients.std(0), std, atol=0.05 * std.max().item(), rtol=0)


def test_heun_is_second_order_and_euler_first_on_gaussian_data():
    """Data x0 ~ N(m, v^2) per pixel: the exact posterior mean is known, and the flow's ODE carries the noise x_1
    to x_0 = m + v x_1 exactly. Halving the step divides Euler's error by about 2 and Heun's by about 4."""
    op = cd.FlowNoise(1000)
    m, v = 0.2, 0.5  # centred units

    def restore(x, t):
        s = (t.double() / 1000)[:, None, None, None]
        y = (2 * x.double() - 1)
        x0 = m + (1 - s) * v**2 / ((1 - s) ** 2 * v**2 + s**2) * (y - (1 - s) * m)
        return (0.5 + 0.5 * x0).to(x.dtype)

    noise = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_T, exact = 0.5 + 0.5 * noise, 0.5 + 0.5 * (m + v * noise)

    def error(sampler, steps):
        out = sample(sampler, restore, op.double(), x_T, params={"noise": noise}, steps=steps)
        return (out - exact).abs().max().item()

    euler, heun = [error("improved", n) for n in (10, 20)], [error("heun", n) for n in (10, 20)]
    assert 1.6 < euler[0] / euler[1] < 2.6 and heun[0] / heun[1] > 3.2 and heun[1] < euler[1] / 10


def _gaussian_data_case(op, m: float = 0.2, v: float = 0.5):
    """Data x0 ~ N(m, v^2) per pixel (centred units) on the Gaussian path of ``op``, ``x~_t = alpha A_t x~0 + sigma
    eps`` (``A_t`` the identity, or Blurring Diffusion's heat blur, diagonal in the DCT basis with ``d_t``; both keep
    constant images): frequency by frequency, with ``a = alpha d``, the exact posterior mean ``m + a v^2 / (a^2 v^2 +
    sigma^2) (x~ - alpha m)``, a start state at level T, the path of the probability-flow ODE through it, ``alpha m +
    sqrt(a^2 v^2 + sigma^2) z`` with ``z`` white, and its end ``m + v z``.  Returns ``(op, restore, x_T, exact,
    on_path)``."""
    op = op.double()
    size = (64, 1, 4, 4)

    def coefficients(level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (alpha, a = alpha d per frequency)
        alpha, _ = op.coefficients(level)
        return alpha.double(), alpha.double()[:, None, None] * op.signal_spectrum(level, *size[-2:])

    def restore(x, t):
        (alpha, a), sigma = coefficients(t), op.coefficients(t)[1].double()[:, None, None]
        y = 2 * x.double() - 1
        gain = a * v**2 / (a**2 * v**2 + sigma**2)
        return (0.5 + 0.5 * (m + op.apply_spectrum(y - alpha[:, None, None, None] * m, gain))).to(x.dtype)

    z = torch.randn(*size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def on_path(level: int) -> torch.Tensor:  # the exact ODE solution through x_T at a level
        t = torch.tensor([level])
        (alpha, a), sigma = coefficients(t), float(op.coefficients(t)[1])
        return 0.5 + 0.5 * (float(alpha) * m + op.apply_spectrum(z, (a**2 * v**2 + sigma**2).sqrt()))

    return op, restore, on_path(op.num_steps), 0.5 + 0.5 * (m + v * z), on_path


@pytest.mark.parametrize("path", ["flow", "cosine", "linear", "blurring"])
@pytest.mark.parametrize(("sampler", "order"), [("dpm++2m", 2), ("unipc", 3)])
def test_multistep_solvers_show_their_order_on_gaussian_data(path, sampler, order):
    """With the exact posterior mean, between two levels of finite log-SNR (900 -> 100), the multistep solvers' error
    falls like a power of the step, the solver's order (halving the step divides it by about 4 for DPM-Solver++(2M),
    by 6-8 for UniPC's second-order predictor with its corrector, a third-order method) where DDIM's (Euler's) falls
    like the step, on the flow's straight path, the variance-preserving cosine and linear (DDPM) schedules, and
    Blurring Diffusion's blur plus noise (the solvers frequency by frequency); one network call per step; and over
    the whole run (from the start state to level 0) it is far closer to the ODE's end than DDIM at 20 steps.  (Into
    level 0 every solver returns ``x0_hat``: with time-uniform levels the last steps' log-SNR increments do not
    shrink with the step count, so the whole run is not where the order shows.)"""
    m, v = 0.2, 0.5
    op = {"flow": lambda: cd.FlowNoise(1000), "cosine": lambda: cd.GaussianNoise(1000),
          "linear": lambda: cd.GaussianNoise(1000, schedule="linear"),
          "blurring": lambda: cd.BlurNoise(1000, noise="cosine-logsnr", heat_sigma_max=3.0)}[path]()
    op, restore, x_T, exact, on_path = _gaussian_data_case(op, m, v)

    calls = []

    def counted(x, t):
        calls.append(1)
        return restore(x, t)

    def error(name, n):
        calls.clear()
        states = {}
        levels = [round(900 - 800 * i / n) for i in range(n + 1)] + [0]
        sample(name, counted, op, on_path(900), t=900, steps=levels,
               callback=lambda step: states.__setitem__(step["t_next"], step["x_next"]))
        assert len(calls) == n + 1
        return (states[100] - on_path(100)).abs().max().item()

    ddim, solver = [error("improved", n) for n in (16, 32)], [error(sampler, n) for n in (16, 32)]
    assert 1.7 < ddim[0] / ddim[1] < 2.3, ddim
    assert solver[0] / solver[1] > {2: 3.2, 3: 5.0}[order] and solver[1] < ddim[1] / 5, (solver, ddim)
    whole = {name: (sample(name, restore, op, x_T, params={"noise": torch.zeros_like(x_T)}, steps=20) - exact)
             .abs().max().item() for name in ("improved", sampler)}
    assert whole[sampler] < whole["improved"] / 2.5, whole


def test_blurring_diffusions_step_reads_the_networks_noise_not_x0():
    """The paper's step is written with eps_hat (mu = u_t / alpha_ts - sigma_ts^2 / (alpha_ts sigma_t) eps_hat per
    frequency): given the true noise with a wrong x0_hat it is the posterior around the truth, and it equals the
    x0-based step where both agree; x0_hat only comes out at level 0."""
    op = cd.BlurNoise(1000, noise="cosine-logsnr", heat_sigma_max=4.0).double()
    x0 = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)).double()
    params = op.make_params(x0, torch.Generator().manual_seed(1))
    t, s = torch.full((64,), 600), torch.full((64,), 500)
    x_t = op.degrade(x0, t, params)
    noise_true = op.noise_of(params)

    def step(x0_hat, noise_hat=None):
        return ancestral_step(op, x_t, x0_hat, t, s, torch.Generator().manual_seed(2), noise_hat)

    by_x0, by_noise = step(x0), step(torch.zeros_like(x0), noise_true)
    torch.testing.assert_close(by_noise, by_x0, atol=1e-9, rtol=0)  # the same posterior when both are right
    torch.testing.assert_close(op.noise_estimate(x_t, x0, t), noise_true, atol=1e-9, rtol=0)
    assert (step(torch.zeros_like(x0)) - by_x0).abs().max() > 0.01  # the wrong x0_hat alone moves the step
    zero = torch.zeros(64, dtype=torch.long)
    torch.testing.assert_close(ancestral_step(op, x_t, x0, t, zero, None, torch.zeros_like(x0)), x0)


def test_pipeline_samplers_get_the_networks_noise():
    """A pipeline hands its samplers a Denoiser: the ε of an ε-model comes straight from the network (not back from a
    clipped x0_hat), the x0_hat of restore() is the same call's."""
    from colddiff.nets import ConvNeXtUNet
    from colddiff.objectives import PredictEpsilon
    from colddiff.pipeline import Pipeline
    from colddiff.sampling import Denoiser, predict

    torch.manual_seed(0)
    op = cd.GaussianNoise(100, schedule="linear")
    pipeline = Pipeline(op, ConvNeXtUNet(1, dim=8, dim_mults=(1, 2), num_blocks=1, attention="none", image_size=8),
                        PredictEpsilon(clip_x0=True), image_size=8, channels=1).eval()
    x, t = torch.rand(4, 1, 8, 8), torch.tensor([3, 50, 90, 100])
    with torch.no_grad():
        guess = predict(Denoiser(pipeline.predict), op, x, t)
        torch.testing.assert_close(guess.noise, pipeline.network(x, t))
        torch.testing.assert_close(guess.x0, pipeline.restore(x, t))
        assert guess.previous is None and 0 <= guess.x0.min() and guess.x0.max() <= 1


@pytest.mark.parametrize("sampler", ["dpm++2m", "unipc", "heun"])
def test_the_ode_solvers_refuse_what_they_cannot_integrate(sampler):
    """The multistep solvers take BlurNoise's heat blur frequency by frequency but refuse a blur whose transfer function
    changes sign (the kernel blur) or vanishes (min_scale 0), a noise image that is not Gaussian (mixing) and a
    deterministic blur; Heun (the straight line of an isotropic path) refuses any signal operator."""
    x = torch.rand(2, 1, 8, 8)
    refused = [cd.BlurNoise(10, blur="kernel", kernel_size=3), cd.BlurNoise(10, min_scale=0.0), cd.Mix(10),
               cd.GaussianBlur(10, kernel_size=3)]
    if sampler == "heun":
        refused.append(cd.BlurNoise(10))
    for op in refused:
        with pytest.raises(ValueError, match=f"the {re.escape(sampler)} sampler"):
            sample(sampler, lambda x_t, t: x_t, op, x, steps=5)
    if sampler != "heun":
        out = sample(sampler, lambda x_t, t: x_t.clamp(0, 1), cd.BlurNoise(10), x, steps=5)
        assert out.shape == x.shape and out.isfinite().all()


def test_the_ancestral_step_reads_x0_hat_where_no_signal_is_left():
    """A v- or x0-model of Blurring Diffusion's blur on the cosine schedule that ends with no signal (alpha_T = 0):
    its first ancestral step from T is the posterior given x0_hat (the x0 form, frequency by frequency), not the
    epsilon form with the noise that x0_hat implies (which loses x0_hat where alpha_t = 0)."""
    op = cd.BlurNoise(100, heat_sigma_max=4.0).double()  # noise="cosine": alpha_bar_T = 0
    assert float(op.coefficients(torch.tensor([100]))[0]) == 0.0
    x_t = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)).double()
    t, s = torch.full((4,), 100), torch.full((4,), 90)
    a = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)).double()
    b = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2)).double()

    def step(x0_hat):
        return ancestral_step(op, x_t, x0_hat, t, s, torch.Generator().manual_seed(3))

    alpha_s, sigma_s = (float(c) for c in op.coefficients(s[:1]))
    alpha_s_f = alpha_s * op.signal_spectrum(s, 8, 8)  # per frequency; alpha_ts = 0: sigma_ts = sigma_t = 1
    expected = op.apply_spectrum(2 * (a - b), alpha_s_f) * 0.5  # the x0 term's difference, in [0, 1] units
    torch.testing.assert_close(step(a) - step(b), expected, atol=1e-9, rtol=0)
    assert (step(a) - step(b)).abs().max() > 1e-3
