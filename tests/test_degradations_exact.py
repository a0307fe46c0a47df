"""Operator-specific exactness: each closed form against the iterated / reference definition written here."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

import colddiff.degradations as cd
import colddiff.degradations.functional as FD
from colddiff.sampling import sample_improved
from colddiff.schedules import cosine_alpha_bar, exponential, linear
from tests.conftest import smooth_images


# ------------------------------------------------------------------------------------------------------ blur
def _gauss1d(sigma: float, k: int) -> torch.Tensor:
    x = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _iterated_blurs(x, sigmas, k, border):
    """Yield D(x, t) for t = 0..T by applying the per-step padded convolutions one after another (float32)."""
    c, p = x.shape[1], (k - 1) // 2
    out = x
    yield out
    for sigma in sigmas.tolist():
        g = _gauss1d(sigma, k)
        weight = (g[:, None] * g[None, :]).float()[None, None].expand(c, 1, k, k)
        out = F.conv2d(F.pad(out, (p, p, p, p), mode=border), weight, groups=c)
        yield out


BLUR_CASES = [
    # size (h, w), kernel, T, border, per-step sigmas
    ((28, 28), 27, 300, "circular", exponential(300, 1.0, 0.01)),
    ((28, 28), 27, 300, "reflect", exponential(300, 1.0, 0.01)),
    ((32, 32), 11, 50, "reflect", linear(50, 0.35, 0.01)),
    ((32, 32), 11, 20, "circular", torch.full((20,), 7.0, dtype=torch.float64)),
    ((64, 48), 5, 40, "reflect", linear(40, 0.1, 0.1)),
    ((128, 128), 27, 300, "circular", exponential(300, 1.0, 0.01)),
    ((128, 128), 15, 200, "reflect", exponential(200, 1.0, 0.01)),
]


@pytest.mark.parametrize("size,k,T,border,sigmas", BLUR_CASES,
                         ids=[f"{c[0][0]}x{c[0][1]}-k{c[1]}-T{c[2]}-{c[3]}" for c in BLUR_CASES])
def test_blur_matches_iterated_convolutions(size, k, T, border, sigmas):
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    blur = cd.GaussianBlur(T, kernel_size=k, sigmas=sigmas.tolist(), border=border)
    worst = 0.0
    for t, reference in enumerate(_iterated_blurs(x, blur.sigmas.double(), k, border)):
        worst = max(worst, (blur(x, t) - reference).abs().max().item())
    assert worst <= 1e-4


def test_blur_kernel_longer_than_the_image_wraps_like_circular_padding():
    x = torch.rand(1, 1, 9, 9)
    blur = cd.GaussianBlur(3, kernel_size=15, sigma=3.0)
    # 15 taps on a circle of 9: fold the taps modulo 9 and convolve circularly by hand
    g = _gauss1d(3.0, 15)
    folded = torch.zeros(9, dtype=torch.float64)
    for j, w in enumerate(g):
        folded[(j - 7) % 9] += w
    kernel = (folded[:, None] * folded[None, :]).float()
    expected = x
    for _ in range(3):
        spectrum = torch.fft.fft2(expected) * torch.fft.fft2(kernel)
        expected = torch.fft.ifft2(spectrum).real
    torch.testing.assert_close(blur(x, 3), expected, atol=1e-5, rtol=0)


def test_blur_final_mean_and_quantize():
    x = torch.rand(3, 3, 16, 16)
    blur = cd.GaussianBlur(10, kernel_size=5, sigma=1.0, final_mean=True, quantize=True)
    mean = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    torch.testing.assert_close(blur(x, 10), torch.round(mean * 255) / 255)
    plain = cd.GaussianBlur(10, kernel_size=5, sigma=1.0)
    torch.testing.assert_close(blur(x, 4), torch.round(plain(x, 4) * 255) / 255)
    assert torch.equal(blur(x, 0), x)
    levels = torch.unique(blur(x, 4) * 255)
    torch.testing.assert_close(levels, torch.round(levels))


def test_blur_zero_sigma_step_is_identity_in_the_functional_and_refused_by_the_operator():
    from colddiff.degradations.functional import gaussian_blur

    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(gaussian_blur(x, 2, [0.0, 0.0, 1.0], 5), x, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"GaussianBlur: every step's sigma must be > 0 \(a step with sigma 0"):
        cd.GaussianBlur(3, kernel_size=5, sigma=0)
    with pytest.raises(ValueError, match="every step's sigma must be > 0"):
        cd.GaussianBlur(3, kernel_size=5, sigmas=[0.0, 0.0, 1.0])


def test_blur_in_half_precision_stays_close():
    x = torch.rand(2, 3, 32, 32)
    blur = cd.GaussianBlur(50, kernel_size=11, schedule="linear", sigma=0.35, sigma_step=0.01, border="reflect")
    torch.testing.assert_close(blur(x.bfloat16(), 50).float(), blur(x, 50), atol=1e-2, rtol=0)


# ------------------------------------------------------------------------------------------------------ mask
def _paper_fade_kernel(size: int, sigma: float, cy: int, cx: int) -> torch.Tensor:
    """The original code's step mask: 1 - G / max G of a sampled Gaussian bump at an integer centre."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    g = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return 1 - g / g.max()


def test_mask_matches_product_of_step_masks_at_random_centres():
    T, size = 12, 24
    mask = cd.GaussianMask(T, sigma=1.1, sigma_step=0.3, center="random", fill=0.5)
    x = torch.rand(3, 3, size, size)
    params = mask.make_params(x, torch.Generator().manual_seed(3))
    for t in (1, 5, T):
        for b in range(3):
            cy, cx = params["center"][b].tolist()
            keep = torch.ones(size, size, dtype=torch.float64)
            for i in range(t):
                keep = keep * _paper_fade_kernel(size, mask.sigmas[i].item(), cy, cx)
            expected = keep.float() * x[b] + (1 - keep.float()) * 0.5
            torch.testing.assert_close(mask(x, t, params)[b], expected, atol=1e-6, rtol=0)


def test_centred_mask_is_symmetric_and_centred_between_pixels():
    mask = cd.GaussianMask(5, sigma=2.0, sigma_step=1.0, fill=0.0)
    ones = torch.ones(1, 1, 16, 16)
    keep = mask(ones, 5)[0, 0]
    torch.testing.assert_close(keep, keep.flip(0))
    torch.testing.assert_close(keep, keep.flip(1))
    torch.testing.assert_close(keep, keep.T)
    # centre (7.5, 7.5): the four central pixels are at r^2 = 0.5, not 0
    r2 = 0.5
    expected = math.prod(1 - math.exp(-r2 / (2 * s * s)) for s in mask.sigmas.tolist())
    assert keep[7, 7].item() == pytest.approx(expected, rel=1e-5)


def test_reverse_mask_shrinks_a_central_disc_to_the_fill_colour():
    T = 40
    gen = cd.GaussianMask(T, sigma=0.2, sigma_step=0.2, fill="random", reverse=True)
    x = torch.rand(2, 3, 32, 32)
    params = gen.make_params(x, torch.Generator().manual_seed(0))
    fill = params["fill"]
    assert ((fill >= 0.25) & (fill <= 0.75)).all()
    torch.testing.assert_close(gen(x, T, params), fill.expand_as(x))
    assert torch.equal(gen(x, 0, params), x)
    ones = torch.ones(1, 1, 32, 32)
    zero_fill = {"fill": torch.zeros(1, 1, 1, 1)}
    keeps = [gen(ones, t, zero_fill)[0, 0] for t in range(T + 1)]
    for before, after in zip(keeps, keeps[1:]):
        assert (after <= before + 1e-6).all()
    middle = keeps[T // 2]
    assert middle[15:17, 15:17].min() > middle[0, 0]  # the image survives in the centre, not at the corners


# -------------------------------------------------------------------------------------------------- pixelate
def test_pixelate_halving_matches_iterated_area_nearest():
    x = torch.rand(2, 3, 32, 32)
    pix = cd.Pixelate(3)
    reference = x
    for t in range(4):
        torch.testing.assert_close(pix(x, t), reference, atol=1e-6, rtol=0)
        size = 32 // 2 ** (t + 1)
        reference = F.interpolate(F.interpolate(reference, size=size, mode="area"), size=32, mode="nearest")
    blocks = pix(x, 3)  # exact 8x8 blocks, each the mean of its block
    block_mean = x[..., :8, :8].mean(dim=(-2, -1), keepdim=True).expand(-1, -1, 8, 8)
    torch.testing.assert_close(blocks[..., :8, :8], block_mean)


def test_pixelate_linear_matches_area_then_nearest_exact():
    x = torch.rand(2, 3, 30, 26)
    pix = cd.Pixelate(12, schedule="linear")
    for t in (1, 5, 12):
        expected = F.interpolate(F.interpolate(x, size=(30 - t, 26 - t), mode="area"), size=(30, 26),
                                 mode="nearest-exact")
        torch.testing.assert_close(pix(x, t), expected, atol=1e-6, rtol=0)


def test_pixelate_stays_in_range():
    x = torch.rand(4, 3, 64, 64)
    y = cd.Pixelate(4)(x, 4)
    assert y.min() >= x.min() - 1e-6 and y.max() <= x.max() + 1e-6  # area averaging never overshoots (bicubic did)


# ------------------------------------------------------------------------------------------------------ snow
def _reference_snow(x, field, vertical, threshold, blur_sigma, k):
    """The original code's per-level snow: threshold, clip, k x k motion kernel, 'same' conv, add rot180."""
    layer = field.clone()
    layer[layer < threshold] = 0
    layer = layer.clamp(0, 1)
    offsets = torch.arange(k, dtype=torch.float32) - k // 2
    g = torch.exp(-(offsets**2) / (2 * blur_sigma**2))
    g = g / g.sum()
    kernel = torch.zeros(k, k)
    kernel[k // 2] = g
    if vertical:
        kernel = torch.rot90(kernel, 1, (0, 1))
    out = F.conv2d(layer[None], kernel[None, None], padding="same")[0]
    return (x + out + torch.rot90(out, 2, (1, 2))).clamp(0, 1)


def test_snow_matches_reference_construction():
    T = 200
    snow = cd.Snow(T, level=3)
    x = smooth_images(batch=4, size=32)
    params = snow.make_params(x, torch.Generator().manual_seed(0))
    assert params["vertical"].any() and not params["vertical"].all()  # both motion directions exercised
    for t in (1, 70, T):
        y = snow(x, t, params)
        threshold = 1.15 + (0.7 - 1.15) * (t - 1) / (T - 1)
        blur_sigma = 0.05 + (16 - 0.05) * (t - 1) / (T - 1)
        for b in range(4):
            expected = _reference_snow(x[b], params["field"][b], bool(params["vertical"][b]), threshold, blur_sigma,
                                       11)
            torch.testing.assert_close(y[b], expected, atol=1e-5, rtol=0)


def test_snow_field_follows_imagenet_c_statistics():
    snow = cd.Snow(10, level=4)
    x = torch.zeros(64, 3, 64, 64)
    field = snow.make_params(x, torch.Generator().manual_seed(0))["field"]
    assert field.mean().item() == pytest.approx(0.55, abs=0.02)
    # the zoom (2.5x, bilinear) correlates neighbours strongly
    neighbour = torch.corrcoef(torch.stack([field[..., :, :-1].flatten(), field[..., :, 1:].flatten()]))[0, 1]
    assert neighbour > 0.8


def test_snow_shared_and_brightness():
    snow = cd.Snow(10, shared=True, fix_brightness=False)
    x = torch.full((3, 3, 16, 16), 0.2)
    params = snow.make_params(x)
    assert torch.equal(params["field"][0], params["field"][2])
    dark = snow(x, 10, {"field": torch.zeros_like(params["field"]), "vertical": params["vertical"]})
    # no snow: ImageNet-C brightening b x + (1 - b) max(x, 1.5 gray + 0.5), b = 0.4 at level T (preset 3)
    torch.testing.assert_close(dark, torch.full_like(x, 0.4 * 0.2 + 0.6 * (1.5 * 0.2 * (0.2989 + 0.587 + 0.114) + 0.5)))


# ------------------------------------------------------------------------------------------------ desaturate
def test_desaturate_luma_agrees_with_torchvision():
    x = torch.rand(4, 3, 16, 16)
    T = 20
    op = cd.Desaturate(T, grayscale="luma")
    for t in range(T + 1):
        torch.testing.assert_close(op(x, t), TF.adjust_saturation(x, 1 - t / T), atol=1e-6, rtol=0)


def test_desaturate_mean_matches_iterated_channel_mean_blends():
    """The original's per-step 1x1 convolution: blend factor 1 - diff / remaining, diff = 1 / T."""
    x = torch.rand(2, 3, 8, 8)
    T = 20
    op = cd.Desaturate(T)
    out, remaining = x, 1.0
    for t in range(1, T + 1):
        factor = 1 - (1 / T) / remaining
        remaining *= factor
        out = factor * out + (1 - factor) * out.mean(dim=1, keepdim=True)
        torch.testing.assert_close(op(x, t), out, atol=1e-5, rtol=0)
    torch.testing.assert_close(op(x, T), x.mean(dim=1, keepdim=True).expand_as(x))


# ---------------------------------------------------------------------------------------------- mix / noise
def test_mix_is_the_paper_formula_in_minus_one_one_units():
    T = 200
    op = cd.Mix(T)
    x, z = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    a = cosine_alpha_bar(T)
    for t in (1, 50, 199, 200):
        paper = math.sqrt(a[t]) * (2 * x - 1) + math.sqrt(1 - a[t]) * (2 * z - 1)  # in [-1, 1]
        torch.testing.assert_close(op(x, t, {"partner": z}), (paper + 1) / 2, atol=1e-6, rtol=0)
    torch.testing.assert_close(op(x, T, {"partner": z}), z)


def test_noise_final_state_is_standard_normal_in_paper_units():
    op = cd.GaussianNoise(100)
    x = torch.rand(16, 3, 32, 32)
    x_T = op.final_state(x, generator=torch.Generator().manual_seed(0))
    paper = 2 * x_T - 1
    assert paper.mean().abs() < 0.01 and (paper.std() - 1).abs() < 0.01


def test_noise_reestimation_is_ddim():
    """Algorithm 2 with re-estimated noise equals deterministic DDIM (eta = 0), written here in [-1, 1] units."""
    from colddiff.sampling import sample_improved

    T = 30
    op = cd.GaussianNoise(T)
    a = op.alpha_bar.double()
    x0 = smooth_images(batch=2, size=16).double()
    op = op.double()

    def restore(x_t, t):  # an imperfect x0-predictor (a fixed, deterministic function of x_t and t)
        return (0.7 * x_t + 0.3 * x0 + 0.01 * t[:, None, None, None] / T).clamp(0, 1)

    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x_T = op.final_state(x0, {"noise": noise})
    ours = sample_improved(restore, op, x_T, params={"noise": noise})
    y = 2 * x_T - 1  # DDIM in the paper's units
    for s in range(T, 0, -1):
        x0_hat = 2 * restore((y + 1) / 2, torch.full((2,), s)) - 1
        eps = (y - a[s].sqrt() * x0_hat) / (1 - a[s]).sqrt()
        y = a[s - 1].sqrt() * x0_hat + (1 - a[s - 1]).sqrt() * eps
    torch.testing.assert_close(ours, (y + 1) / 2, atol=1e-10, rtol=0)


def test_fixed_noise_variant_keeps_the_noise():
    op = cd.GaussianNoise(10, reestimate=False)
    params = {"noise": torch.randn(1, 1, 4, 4)}
    x = torch.rand(1, 1, 4, 4)
    assert op.update_params(x, x, torch.tensor([5]), params) is params


# --------------------------------------------------------------------------------------------------- compose
def test_compose_applies_parts_in_order_with_shared_t():
    blur, noise = cd.GaussianBlur(8, sigma=1.5), cd.GaussianNoise(8)
    comp = cd.Compose([blur, noise])
    x = torch.rand(3, 3, 16, 16)
    params = comp.make_params(x, torch.Generator().manual_seed(0))
    t = torch.tensor([0, 4, 8])
    expected = noise(blur(x, t), t, {"noise": params["1.noise"]})
    torch.testing.assert_close(comp(x, t, params), expected)


def test_compose_routes_the_mixing_partner():
    comp = cd.Compose([cd.Desaturate(5), cd.Mix(5)])
    x, z = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(comp(x, 5, partner=z), z)


@pytest.mark.parametrize("border", ["circular", "reflect"])
def test_blur_step_difference_fast_path_at_paper_scale(border):
    blur = cd.GaussianBlur(300, kernel_size=27, schedule="exponential", sigma=1.0, rate=0.01, border=border)
    x = torch.rand(3, 3, 64, 64)
    t, t_next = torch.tensor([300, 150, 1]), torch.tensor([299, 140, 0])
    fast = blur.step_difference(x, t, t_next, {})
    torch.testing.assert_close(fast, blur(x, t_next) - blur(x, t), atol=1e-5, rtol=0)


def test_sampler_state_stays_float32_under_half_precision_restorer():
    from colddiff.sampling import sample_improved

    blur = cd.GaussianBlur(50, kernel_size=11, schedule="linear", sigma=0.35, sigma_step=0.01, border="reflect")
    x0 = smooth_images(batch=2, size=32)
    x_T = blur(x0, 50)
    exact = sample_improved(lambda x, t: x0, blur, x_T)
    x0_half = x0.bfloat16().float()
    half = sample_improved(lambda x, t: x0.bfloat16(), blur, x_T)
    assert half.dtype == torch.float32
    # Algorithm 2 telescopes to x_T - D(x0_hat, T) + x0_hat: the only error left is x0's own bfloat16 rounding,
    # not 50 steps of bfloat16 arithmetic
    torch.testing.assert_close(half, x0_half + blur(x0 - x0_half, 50), atol=1e-5, rtol=0)
    torch.testing.assert_close(exact, x0, atol=1e-5, rtol=0)


# ------------------------------------------------------------------- quantisation: exact samplers, 8-bit inputs
def _quantising_pairs():
    """(name, quantised operator, the same operator unquantised) for the paper's two 8-bit settings."""
    blur = dict(kernel_size=11, schedule="exponential", sigma=1.0, rate=0.01, final_mean=True)
    mask = dict(sigma=1.1, sigma_step=0.1, center="random")
    return [
        ("blur-discrete", cd.GaussianBlur(40, quantize=True, **blur), cd.GaussianBlur(40, **blur)),
        ("blur-reflect", cd.GaussianBlur(40, quantize=True, border="reflect"), cd.GaussianBlur(40, border="reflect")),
        ("mask-random", cd.GaussianMask(40, quantize=True, **mask), cd.GaussianMask(40, **mask)),
    ]


def _smoothing_restorer(x_t, t):
    """An imperfect, deterministic restorer: a 3x3 box blur of the current state."""
    return F.avg_pool2d(x_t, 3, stride=1, padding=1, count_include_pad=False)


@pytest.mark.parametrize("sampler", ["improved", "naive"])
@pytest.mark.parametrize("name,quantised,exact", _quantising_pairs(), ids=[p[0] for p in _quantising_pairs()])
def test_quantize_never_enters_the_sampler(name, quantised, exact, sampler):
    """The original code quantised training inputs only: the sampler's terms D(x0_hat, s), D(x0_hat, s - 1) are exact,
    so with quantize=True the whole trajectory equals the unquantised operator's from the same start state."""
    from colddiff.sampling import sample_improved, sample_naive

    run = sample_improved if sampler == "improved" else sample_naive
    x0 = smooth_images(batch=3, size=16)
    params = quantised.make_params(x0, torch.Generator().manual_seed(0))
    x_T = quantised.final_state(x0, params) + 0.002 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    paths = {}
    for key, op in (("q", quantised), ("exact", exact)):
        states: list[torch.Tensor] = []
        out = run(_smoothing_restorer, op, x_T, params=params, callback=lambda info, s=states: s.append(info["x_next"]))
        paths[key] = (out, states)
    assert len(paths["q"][1]) == 40
    for a, b in zip(paths["q"][1], paths["exact"][1]):
        assert torch.equal(a, b)
    assert torch.equal(paths["q"][0], paths["exact"][0])
    # and the states are not on the 8-bit grid: nothing rounded them
    assert not torch.equal(paths["q"][1][5] * 255, (paths["q"][1][5] * 255).round())


@pytest.mark.parametrize("name,quantised,exact", _quantising_pairs(), ids=[p[0] for p in _quantising_pairs()])
def test_degrade_input_is_8bit_exact_and_degrade_is_not_rounded(name, quantised, exact):
    x0 = smooth_images(batch=4, size=16)
    params = quantised.make_params(x0, torch.Generator().manual_seed(0))
    t = torch.tensor([0, 1, 17, 40])
    exact_y = quantised.degrade(x0, t, params)
    torch.testing.assert_close(exact_y, exact.degrade(x0, t, params), atol=0, rtol=0)
    observed = quantised.degrade_input(x0, t, params)
    assert torch.equal(observed[0], x0[0])  # level 0 is the image itself, 8-bit or not
    levels = observed[1:] * 255
    assert torch.equal(levels, levels.round())  # on the 8-bit grid
    assert torch.equal(observed[1:], torch.round(exact_y[1:] * 255) / 255)  # nearest level, not truncated
    assert (observed[1:] - exact_y[1:]).abs().max() <= 0.5 / 255 + 1e-7
    assert not torch.equal(exact_y[1:] * 255, (exact_y[1:] * 255).round())
    # the validated call and the final state are the observed form; the unquantised operator's are exact
    assert torch.equal(quantised(x0, t, params), observed)
    assert torch.equal(quantised.final_state(x0, params), quantised.degrade_input(x0, torch.full((4,), 40), params))
    assert torch.equal(exact.degrade_input(x0, t, params), exact.degrade(x0, t, params))


def test_rounding_is_to_the_nearest_level_not_truncation():
    blur = cd.GaussianBlur(2, kernel_size=3, sigma=1.0, quantize=True)
    x = torch.full((1, 1, 4, 4), 0.7 / 255)  # a constant image: the blur keeps it, the observation rounds it
    assert torch.equal(blur(x, 1), torch.full_like(x, 1 / 255))  # truncation would give 0


def test_compose_quantises_once_at_the_end():
    blur_q, noise = cd.GaussianBlur(6, sigma=1.0, quantize=True), cd.GaussianNoise(6)
    comp = cd.Compose([blur_q, noise])
    x0 = smooth_images(batch=3, size=16)
    params = comp.make_params(x0, torch.Generator().manual_seed(0))
    t = torch.tensor([0, 3, 6])
    exact = noise.degrade(blur_q.degrade(x0, t, {}), t, {"noise": params["1.noise"]})
    torch.testing.assert_close(comp.degrade(x0, t, params), exact, atol=0, rtol=0)  # exact: no rounding between parts
    observed = comp(x0, t, params)
    assert torch.equal(observed[0], x0[0])
    assert torch.equal(observed[1:], torch.round(exact[1:] * 255) / 255)
    # two quantising parts still round once
    double = cd.Compose([blur_q, cd.GaussianMask(6, quantize=True)])
    y = double.degrade(x0, t, {})
    assert torch.equal(double(x0, t, {}), torch.where(t[:, None, None, None] == 0, y, torch.round(y * 255) / 255))


# ------------------------------------------------------------------------------------------- blur + noise
def _dct2_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix V^T (rows are the basis vectors), from its definition."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    basis = torch.cos(math.pi * k * (i + 0.5) / n) * math.sqrt(2 / n)
    basis[0] /= math.sqrt(2)
    return basis


def _heat_by_dct(y: torch.Tensor, sigma: float, d_min: float) -> torch.Tensor:
    """Blurring Diffusion's B = V diag((1 - d_min) exp(-lambda tau) + d_min) V^T with dense DCT-II matrices."""
    h, w = y.shape[-2:]
    vh, vw = _dct2_matrix(h), _dct2_matrix(w)
    freq_h = (math.pi * torch.arange(h, dtype=torch.float64) / h) ** 2
    freq_w = (math.pi * torch.arange(w, dtype=torch.float64) / w) ** 2
    scale = (1 - d_min) * torch.exp(-(freq_h[:, None] + freq_w[None, :]) * sigma**2 / 2) + d_min
    return vh.T @ (scale * (vh @ y @ vw.T)) @ vw


@pytest.mark.parametrize("sigma,d_min", [(0.7, 0.0), (3.0, 0.001), (6.0, 0.2)])
def test_heat_blur_is_blurring_diffusion_dct_scaling(sigma, d_min):
    x = torch.rand(2, 3, 12, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    scipy_fft = pytest.importorskip("scipy.fft")  # the reference's DCT-II matrix is scipy's orthonormal DCT-II
    torch.testing.assert_close(_dct2_matrix(12), torch.from_numpy(scipy_fft.dct(torch.eye(12).numpy(), axis=0,
                                                                               norm="ortho")).double())
    torch.testing.assert_close(FD.heat_blur(x, sigma, d_min), _heat_by_dct(x, sigma, d_min),
                               atol=1e-12, rtol=0)


def test_heat_blur_equals_spatial_gaussian_with_half_sample_symmetric_borders():
    """The heat equation for tau = sigma^2 / 2 is a Gaussian blur of width sigma: against a sampled 41-tap Gaussian
    convolved over the period-2N mirror extension (the DCT-II's), the error is the kernel's sampling (~1e-9)."""
    size, sigma, k = 16, 2.0, 41
    x = torch.rand(2, 1, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    period = torch.cat([x, x.flip(-1)], dim=-1)
    period = torch.cat([period, period.flip(-2)], dim=-2)  # one period (2N x 2N) of the symmetric extension
    tiled = period.repeat(1, 1, 3, 3)[..., 2 * size - 20 : 3 * size + 20, 2 * size - 20 : 3 * size + 20]
    g = _gauss1d(sigma, k)
    expected = F.conv2d(tiled, (g[:, None] * g[None, :])[None, None])
    torch.testing.assert_close(FD.heat_blur(x, sigma), expected, atol=1e-8, rtol=0)


def test_iterated_kernel_blur_is_the_heat_equation_for_the_summed_variance():
    """GaussianBlur's docstring: t steps of widths sigma_i act like the heat equation for tau = sum sigma_i^2 / 2
    (its reflect borders on the DCT-I grid of period 2N - 2), up to the kernels' sampling: negligible from sigma = 2
    (exp(-2 pi^2) at the Nyquist frequency), about exp(-pi^2 / 2) = 0.007 there at sigma = 1."""
    omega = 2 * math.pi * torch.arange(62, dtype=torch.float64) / 62
    omega = torch.minimum(omega, 2 * math.pi - omega)
    for sigma, tolerance in ((2.0, 1e-8), (1.0, 0.008)):
        blur = cd.GaussianBlur(20, kernel_size=31, sigma=sigma, border="reflect")
        rows, _ = blur.transfer(32, 32, torch.device("cpu"))
        for t in (1, 7, 20):
            tau = t * sigma**2 / 2
            torch.testing.assert_close(rows[t], torch.exp(-tau * omega**2), atol=tolerance, rtol=0)


@pytest.mark.parametrize("border", ["circular", "reflect"])
def test_blur_noise_without_noise_is_gaussian_blur_exactly(border):
    T = 30
    kw = dict(kernel_size=7, schedule="exponential", sigma=0.8, rate=0.02, border=border)
    op = cd.BlurNoise(T, blur="kernel", alpha_bar=[1.0] * (T + 1), **kw)
    blur = cd.GaussianBlur(T, **kw)
    x0 = smooth_images(batch=4, size=16)
    params = op.make_params(x0, torch.Generator().manual_seed(0))
    t = torch.tensor([0, 1, 17, 30])
    assert torch.equal(op(x0, t, params), blur(x0, t))
    # and its Algorithm 2 is the blur's, noise re-estimation or not (with alpha_bar = 1 there is no noise to estimate)
    out = sample_improved(_smoothing_restorer, op, blur(x0, T), params=params)
    torch.testing.assert_close(out, sample_improved(_smoothing_restorer, blur, blur(x0, T)), atol=1e-6, rtol=0)


def test_blur_noise_heat_without_noise_is_the_heat_blur():
    T = 10
    op = cd.BlurNoise(T, heat_sigma_max=4.0, alpha_bar=[1.0] * (T + 1))
    x0 = smooth_images(batch=3, size=16)
    params = op.make_params(x0)
    for t in (1, 5, 10):
        width = 4.0 * math.sin(math.pi * t / (2 * T)) ** 2
        # two code paths (the operator's table over all T + 1 levels, the function's over the batch): their
        # float64 exp() runs at other offsets of a vectorised loop (SIMD body or scalar tail, which differ in the
        # last ulp and by CPU vector width), so they agree to float32 rounding, not bit for bit
        torch.testing.assert_close(op(x0, t, params), FD.heat_blur(x0, op.heat_sigmas[t].item(), 0.001),
                                   atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(op(x0, t, params), _heat_by_dct(x0.double(), width, 0.001).float(),
                                   atol=1e-6, rtol=0)


@pytest.mark.parametrize("blur", ["heat", "kernel"])
def test_blur_noise_without_blur_is_gaussian_noise(blur):
    T = 25
    no_blur = {"heat_sigmas": [0.0] * (T + 1)} if blur == "heat" else {"sigmas": [0.0] * T}
    op, noise = cd.BlurNoise(T, blur=blur, **no_blur), cd.GaussianNoise(T)
    x0 = smooth_images(batch=3, size=16)
    params = op.make_params(x0, torch.Generator().manual_seed(2))
    for t in range(T + 1):
        torch.testing.assert_close(op(x0, t, params), noise(x0, t, params), atol=1e-6, rtol=0)
    x_T = noise.final_state(x0, params)
    ours = sample_improved(_smoothing_restorer, op, x_T, params=params)
    torch.testing.assert_close(ours, sample_improved(_smoothing_restorer, noise, x_T, params=params),
                               atol=1e-5, rtol=0)


def test_blur_noise_final_state_is_pure_noise_so_the_noise_prior_is_exact():
    from colddiff.priors import GaussianNoisePrior

    for op in (cd.BlurNoise(40), cd.BlurNoise(40, heat_schedule="ratio"), cd.BlurNoise(40, blur="kernel")):
        assert op.alpha_bar[-1].item() == 0.0
        start = GaussianNoisePrior().sample(3, (3, 16, 16), torch.Generator().manual_seed(0))
        for x0 in (smooth_images(batch=3, size=16), torch.zeros(3, 3, 16, 16)):
            assert torch.equal(op.final_state(x0, start.params), start.x_T)


@pytest.mark.parametrize("blur", ["heat", "kernel"])
def test_blur_noise_perfect_restorer_follows_the_forward_trajectory(blur):
    """With x0_hat = x0, the re-estimated noise is the true noise, so every state of Algorithm 2 is D(x0, s)."""
    T = 30
    op = cd.BlurNoise(T, blur=blur, **({"sigma": 0.7} if blur == "kernel" else {"heat_sigma_max": 6.0})).double()
    x0 = smooth_images(batch=2, size=16).double()
    params = op.make_params(x0, torch.Generator().manual_seed(3))
    states: list[tuple[int, torch.Tensor]] = []
    out = sample_improved(lambda x_t, t: x0, op, op.final_state(x0, params), params=params,
                          callback=lambda info: states.append((info["t_next"], info["x_next"])))
    for level, state in states:
        torch.testing.assert_close(state, op(x0, level, params), atol=1e-10, rtol=0)
    torch.testing.assert_close(out, x0, atol=1e-10, rtol=0)


def test_blur_noise_reestimation_is_ddim_of_blurring_diffusion():
    """Algorithm 2 with re-estimated noise equals the DDIM (eta = 0) update of Blurring Diffusion's process, written
    here in the paper's [-1, 1] units with dense DCT-II matrices: u_s = alpha_s d_s u0_hat + sigma_s eps_hat."""
    T = 20
    op = cd.BlurNoise(T, heat_sigma_max=5.0, min_scale=0.01, cosine_s=0.0).double()
    a = op.alpha_bar.double()
    widths = op.heat_sigmas.double()
    x0 = smooth_images(batch=2, size=12).double()

    def restore(x_t, t):  # an imperfect x0-predictor (a fixed, deterministic function of x_t and t)
        return (0.6 * x_t + 0.4 * x0 + 0.01 * t[:, None, None, None] / T).clamp(0, 1)

    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x_T = op.final_state(x0, {"noise": noise})
    ours = sample_improved(restore, op, x_T, params={"noise": noise})
    y = 2 * x_T - 1
    for s in range(T, 0, -1):
        y0_hat = 2 * restore((y + 1) / 2, torch.full((2,), s)) - 1
        signal = a[s].sqrt() * _heat_by_dct(y0_hat, widths[s].item(), 0.01)
        eps = (y - signal) / (1 - a[s]).sqrt()
        y = a[s - 1].sqrt() * _heat_by_dct(y0_hat, widths[s - 1].item(), 0.01) + (1 - a[s - 1]).sqrt() * eps
    torch.testing.assert_close(ours, (y + 1) / 2, atol=1e-10, rtol=0)


def test_blur_noise_schedules():
    from colddiff.schedules import blur_to_noise_sigmas, sine_blur_sigmas

    sine = sine_blur_sigmas(10, 20.0)
    assert sine[0] == 0 and sine[10] == pytest.approx(20.0) and sine[5] == pytest.approx(10.0)
    assert torch.equal(cd.BlurNoise(10).heat_sigmas, sine.float())
    a = cosine_alpha_bar(10)
    ratio = blur_to_noise_sigmas(a, 2.0)
    torch.testing.assert_close(ratio[1:-1], 2.0 * ((1 - a[1:-1]) / a[1:-1]).sqrt())
    assert ratio[0] == 0 and ratio[-1] == math.inf
    op = cd.BlurNoise(10, heat_schedule="ratio", blur_to_noise=2.0)
    torch.testing.assert_close(op.heat_sigmas, blur_to_noise_sigmas(op.alpha_bar.double(), 2.0).float())
    # a larger ratio blurs more at the same noise level; the ratio 0 is the noise alone
    x0 = smooth_images(batch=2, size=16)
    no_noise = [1.0] * 11
    sharp = cd.BlurNoise(10, heat_sigmas=blur_to_noise_sigmas(a, 0.5).tolist(), alpha_bar=no_noise)
    soft = cd.BlurNoise(10, heat_sigmas=blur_to_noise_sigmas(a, 4.0).tolist(), alpha_bar=no_noise)
    assert (soft(x0, 5) - x0).abs().mean() > (sharp(x0, 5) - x0).abs().mean()  # noise-free: no params
    assert sharp.param_keys == () and sharp.make_params(x0) == {} and sharp.unknown_params_reason() is None
    assert torch.equal(cd.BlurNoise(10, heat_schedule="ratio", blur_to_noise=0.0).heat_sigmas, torch.zeros(11))


@pytest.mark.parametrize("kwargs, refused", [
    ({"blur_to_noise": 2.0}, "blur_to_noise=2.0 (only heat_schedule='ratio' uses it, got 'sine')"),
    ({"heat_schedule": "log", "blur_to_noise": 2.0}, "blur_to_noise=2.0"),
    ({"heat_sigma_min": 1.0}, "heat_sigma_min=1.0 (only heat_schedule='log' uses it"),
    ({"heat_schedule": "ratio", "heat_sigma_max": 5.0},
     "heat_sigma_max=5.0 (heat_schedule='ratio' uses blur_to_noise)"),
    ({"heat_sigmas": [0.0] * 6, "heat_sigma_max": 5.0}, "heat_sigma_max=5.0 (heat_sigmas gives the widths)"),
    ({"heat_sigmas": [0.0] * 6, "heat_schedule": "log"}, "heat_schedule='log' (heat_sigmas gives the widths)"),
    ({"border": "reflect"}, "border='reflect' (a parameter of blur='kernel'"),
    ({"kernel_size": 5, "sigma": 0.5}, "kernel_size=5 (a parameter of blur='kernel'"),
    ({"blur": "kernel", "heat_sigma_max": 5.0}, "heat_sigma_max=5.0 (a parameter of blur='heat')"),
    ({"blur": "kernel", "min_scale": 0.0}, "min_scale=0.0 (a parameter of blur='heat')"),
    ({"blur": "kernel", "sigmas": [1.0] * 5, "rate": 0.1}, "rate=0.1 (sigmas gives the per-step kernels)"),
    ({"noise": "none", "cosine_s": 0.0}, "cosine_s=0.0 (only noise='cosine' without alpha_bar uses it)"),
    ({"alpha_bar": [1.0] * 6, "cosine_s": 0.0}, "cosine_s=0.0"),
    ({"logsnr_range": (-5.0, 5.0)},
     "logsnr_range=(-5.0, 5.0) (only noise='cosine-logsnr' uses it, got noise='cosine')"),
])
def test_blur_noise_refuses_an_argument_its_setting_would_ignore(kwargs, refused):
    """A value the chosen setting does not use is refused with the reason, never silently ignored."""
    with pytest.raises(ValueError, match=re.escape(refused)):
        cd.BlurNoise(5, **kwargs)


def test_blur_noise_accepts_unused_arguments_left_at_their_defaults():
    """Saved configurations list every argument with its default: those still load (lists for tuples too)."""
    op = cd.BlurNoise(5, blur="heat", heat_schedule="log", heat_sigma_min=0.5, heat_sigma_max=20.0, blur_to_noise=1.0,
                      kernel_size=11, schedule="constant", sigma=1.0, sigma_step=None, rate=0.01, border="circular",
                      cosine_s=0.008, noise="none", logsnr_range=[-10.0, 10.0])
    assert op.heat_schedule == "log" and op.param_keys == ()
    cd.BlurNoise(5, noise="cosine-logsnr", logsnr_range=[-5.0, 5.0], cosine_s=0.008)  # used: accepted


def test_blur_noise_rejects_bad_arguments():
    with pytest.raises(ValueError, match="blur must be 'heat' or 'kernel'"):
        cd.BlurNoise(5, blur="box")
    with pytest.raises(ValueError, match="heat_schedule must be"):
        cd.BlurNoise(5, heat_schedule="cosine")
    with pytest.raises(ValueError, match="blur='kernel' takes sigmas"):
        cd.BlurNoise(5, blur="kernel", heat_sigmas=[0.0] * 6)
    with pytest.raises(ValueError, match="blur='heat' takes heat_sigmas"):
        cd.BlurNoise(5, sigmas=[1.0] * 5)
    with pytest.raises(ValueError, match=r"one value per level \(6 values\), got 5"):
        cd.BlurNoise(5, heat_sigmas=[0.0] * 5)
    with pytest.raises(ValueError, match="must start at 0"):
        cd.BlurNoise(5, heat_sigmas=[1.0] * 6)
    with pytest.raises(ValueError, match=">= 0"):
        cd.BlurNoise(5, heat_sigmas=[0.0, 1.0, -1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match=r"min_scale \(d_min\) must be a number in \[0, 1\]"):
        cd.BlurNoise(5, min_scale=1.5)
    with pytest.raises(ValueError, match="blur-to-noise ratio"):
        cd.BlurNoise(5, heat_schedule="ratio", blur_to_noise=-1.0)
    with pytest.raises(ValueError, match="sigma_max"):
        cd.BlurNoise(5, heat_sigma_max=float("nan"))
    with pytest.raises(ValueError, match="alpha_bar must lie in"):
        cd.BlurNoise(5, alpha_bar=[0.5] * 6)
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="noise must have the shape of x"):
        FD.blur_noise(x, torch.randn(2, 3, 4, 4), 0.5)
    with pytest.raises(ValueError, match="blur_sigma must be >= 0"):
        FD.heat_blur(x, -1.0)
    with pytest.raises(ValueError, match=r"params\['noise'\] must have shape"):
        cd.BlurNoise(5)(x, 1, {"noise": torch.randn(2, 3, 4, 8)})
