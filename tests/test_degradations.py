"""The degradation contract, checked for every operator of ``colddiff.degradations.__all__``."""

from __future__ import annotations

import io
import pickle

import pytest
import torch

import colddiff.degradations as cd
from colddiff.degradations import functional as F
from colddiff.sampling import sample_improved, sample_naive
from tests.conftest import OPERATORS, T, context_for, smooth_images


def _draw(op, x0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return op.make_params(x0, g, **context_for(op, x0))


def test_every_exported_operator_is_covered():
    exported = {name for name in cd.__all__ if isinstance(getattr(cd, name), type)
                and issubclass(getattr(cd, name), cd.Degradation) and name != "Degradation"}
    covered = {type(factory(T)).__name__ for factory in OPERATORS.values()}
    assert exported == covered


def test_builds_from_num_steps_alone():
    for name in cd.__all__:
        cls = getattr(cd, name)
        if isinstance(cls, type) and issubclass(cls, cd.Degradation) and cls not in (cd.Degradation, cd.Compose,
                                                                                     cd.Transform):
            op = cls(7)
            assert op.num_steps == 7


def test_the_generic_transform_needs_its_function():
    """The adapter (like Compose) is built from what it adapts: a function, and for one that is not registered, the
    severities of levels 0 and T."""
    with pytest.raises(TypeError, match="function"):
        cd.Transform(7)
    with pytest.raises(ValueError, match="give clean and end"):
        cd.Transform(7, function=lambda x, s: x)


def test_identity_at_level_zero(op):
    x0 = smooth_images()
    params = _draw(op, x0)
    assert torch.equal(op(x0, 0, params), x0)
    assert torch.equal(op(x0, torch.zeros(4, dtype=torch.long), params), x0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_shape_dtype_device_kept(op, dtype):
    x0 = smooth_images().to(dtype)
    params = _draw(op, x0)
    for t in (1, T // 2, T):
        y = op(x0, t, params)
        assert y.shape == x0.shape and y.dtype == dtype and y.device == x0.device
        assert torch.isfinite(y.float()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_gpu_like_on_cpu(op):
    x0 = smooth_images()
    params = _draw(op, x0)
    t = torch.arange(4) % (T + 1)
    cpu = op(x0, t, params)
    gpu = op.cuda()(x0.cuda(), t.cuda(), {k: v.cuda() for k, v in params.items()})
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)


def test_batched_levels_equal_per_sample_loop(op):
    x0 = smooth_images(batch=5)
    params = _draw(op, x0)
    t = torch.tensor([0, 1, T // 2, T - 1, T])
    batched = op(x0, t, params)
    for b in range(5):
        single = op(x0[b : b + 1], int(t[b]), {k: v[b : b + 1] for k, v in params.items()})
        torch.testing.assert_close(batched[b : b + 1], single, atol=1e-6, rtol=0)


def test_same_params_same_output(op):
    x0 = smooth_images()
    params = _draw(op, x0)
    t = torch.tensor([1, 2, T - 1, T])
    assert torch.equal(op(x0, t, params), op(x0, t, params))


def test_seeded_generator_reproduces(op):
    x0 = smooth_images()
    ctx = context_for(op, x0)
    a = op(x0, T, generator=torch.Generator().manual_seed(7), **ctx)
    b = op(x0, T, generator=torch.Generator().manual_seed(7), **ctx)
    assert torch.equal(a, b)
    if op.param_keys and "partner" not in op.context_keys:  # random operators: another seed gives another draw
        c = op(x0, T, generator=torch.Generator().manual_seed(8), **ctx)
        assert not torch.equal(a, c)


def test_final_state_is_level_T(op):
    x0 = smooth_images()
    params = _draw(op, x0)
    assert torch.equal(op.final_state(x0, params), op(x0, T, params))


def test_no_parameters_only_buffers(op):
    assert list(op.parameters()) == []
    for name, buf in op.named_buffers():
        assert isinstance(buf, torch.Tensor), name


def test_pickle_and_state_dict_round_trip(op_name, op):
    x0 = smooth_images()
    params = _draw(op, x0)
    t = torch.tensor([0, 1, T - 1, T])
    expected = op(x0, t, params)  # also fills any cache, which must not break pickling
    clone = pickle.loads(pickle.dumps(op))
    assert torch.equal(clone(x0, t, params), expected)
    fresh = OPERATORS[op_name](T)
    buffer = io.BytesIO()
    torch.save(op.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(fresh(x0, t, params), expected)


def test_to_dtype_moves_buffers(op):
    op64 = op.to(torch.float64)
    for buf in op64.buffers():
        if buf.is_floating_point():
            assert buf.dtype == torch.float64
    x0 = smooth_images().double()
    params = {k: (v.double() if v.is_floating_point() else v) for k, v in _draw(op64, x0).items()}
    assert op64(x0, T, params).dtype == torch.float64


def test_state_dict_load_changes_output():
    """Loading other buffers must invalidate the cached transfer functions."""
    x0 = smooth_images()
    a, b = cd.GaussianBlur(T, sigma=0.5), cd.GaussianBlur(T, sigma=2.0)
    before = a(x0, T)
    a.load_state_dict(b.state_dict())
    assert not torch.allclose(a(x0, T), before)
    torch.testing.assert_close(a(x0, T), b(x0, T))


def _functional(op, x0, t, params):
    """The functional twin's answer for the module's per-level parameters."""
    name = type(op).__name__
    if isinstance(op, cd.GaussianBlur):
        return F.gaussian_blur(x0, t, op.sigmas, op.kernel_size, op.border, op.final_mean, op.quantize)
    if isinstance(op, cd.GaussianMask):
        fill = params.get("fill", op.fill)
        return F.gaussian_mask(x0, t, op.sigmas, params.get("center"), fill, op.reverse, op.quantize)
    if isinstance(op, cd.Pixelate):
        rows, cols = op.level_sizes(*x0.shape[-2:])
        out = F.pixelate(x0, torch.stack([rows[t], cols[t]], dim=1))
        return torch.where(t[:, None, None, None] == 0, x0, out)
    if isinstance(op, cd.Snow):
        brightness = None if op.fix_brightness else op.brightness[t]
        out = F.snow(x0, params["field"], params["vertical"], op.threshold[t], op.blur_sigma[t], brightness,
                     op.kernel_length)
        return torch.where(t[:, None, None, None] == 0, x0, out)
    if isinstance(op, cd.Desaturate):
        return F.desaturate(x0, op.remaining[t], op.grayscale)
    if isinstance(op, cd.Mix):
        return F.mix(x0, params["partner"], op.alpha_bar[t])
    if isinstance(op, cd.GaussianNoise):
        return F.gaussian_noise(x0, params["noise"], op.alpha_bar[t])
    if isinstance(op, cd.FlowNoise):
        return F.flow_noise(x0, params["noise"], t.double() / op.num_steps)
    if isinstance(op, cd.Interpolation):
        return F.interpolate(x0, params["observation"], t.double() / op.num_steps)
    if isinstance(op, cd.BlurNoise) and op.blur == "heat":  # a noise-free instance takes no noise param
        noise = params.get("noise", torch.zeros_like(x0))
        return F.blur_noise(x0, noise, op.alpha_bar[t], op.heat_sigmas[t], op.min_scale)
    if isinstance(op, cd.BlurNoise):  # the kernel blur, then the blend with no further blur
        blurred = F.gaussian_blur(x0, t, op.sigmas, op.kernel_size, op.border)
        return F.blur_noise(blurred, params["noise"], op.alpha_bar[t])
    if isinstance(op, cd.Transform):
        return torch.where(t[:, None, None, None] == 0, x0, _transform_twin(op, x0, op.severity[t], params))
    if isinstance(op, cd.Compose):
        blur, noise = op.degradations
        y = F.gaussian_blur(x0, t, blur.sigmas, blur.kernel_size, blur.border)
        return F.gaussian_noise(y, params["1.noise"], noise.alpha_bar[t])
    raise AssertionError(f"no functional twin mapped for {name}")


def _transform_twin(op, x0, s, params):
    """The kornia operators' twins, called with the module's severities (level 0 replaced by the caller)."""
    options = op.options
    if isinstance(op, cd.MotionBlur):
        return F.motion_blur(x0, s, params.get("angle", options.get("angle")),
                             params.get("direction", options.get("direction")), options["border"])
    if isinstance(op, cd.DefocusBlur):
        return F.defocus_blur(x0, s, options["border"])
    if isinstance(op, cd.JPEG):
        return F.jpeg(x0, s)
    if isinstance(op, cd.Rotate):
        return F.rotate(x0, s, params.get("sign", 1.0), options["padding"])
    if isinstance(op, cd.Zoom):
        return F.zoom(x0, s, options["padding"])
    if isinstance(op, cd.Posterize):
        return F.posterize(x0, s, options["rounding"])
    if isinstance(op, cd.ContrastLoss):
        return F.contrast(x0, s)
    if isinstance(op, cd.Elastic):
        return F.elastic(x0, s, params["field"], options["padding"])
    # the generic adapter: its own function, clamped to [0, 1]
    return op.function(x0, s, **options, **params).clamp(0, 1)


def test_functional_equals_module(op):
    x0 = smooth_images()
    params = _draw(op, x0)
    t = torch.tensor([0, 1, T - 1, T])
    torch.testing.assert_close(_functional(op, x0, t, params), op(x0, t, params), atol=1e-6, rtol=0)


#: operators whose distance between two images falls below its level-0 value but not from every step to the next:
#: one-pixel-per-step pixelation (successive sizes are not nested: 32 -> 31 -> 30 ..., and nearest upsampling at a
#: non-integer ratio repeats some pixels more than others) and JPEG (rounding DCT coefficients is not a contraction:
#: two images' codes can move apart by a little from one quality to the next)
NOT_MONOTONE = {"Pixelate-linear", "JPEG", "JPEG-exponential"}
#: warps: bijective away from the borders, they lose only what leaves the frame and what interpolation smooths, so
#: the distance stays at most its level-0 value but need not shrink (a quarter turn of a square image is an isometry)
WARPS = {"Rotate", "Rotate-random-direction", "Elastic"}
#: rounding to a few grey levels pulls nearby values apart (0.49 and 0.51 go to 0 and 1): what the image holds falls
#: (tests/test_kornia_ops.py counts its distinct values), the distance between two images need not
ROUNDING = {"Posterize", "Posterize-truncate"}


def test_information_decreases_with_t(op_name, op):
    """How much the output still depends on the input: the distance between the degradations of two different
    images (same params) is below its level-0 value at every t >= 1 and shrinks from step to step (exceptions:
    ``NOT_MONOTONE``, ``WARPS``, ``ROUNDING`` above, each with its reason)."""
    if op_name in ROUNDING:
        pytest.skip("rounding to few levels is not a contraction (its information test is in test_kornia_ops.py)")
    xa, xb = smooth_images(seed=1), smooth_images(seed=2)
    params = _draw(op, xa)
    dist = [(op(xa, t, params) - op(xb, t, params)).pow(2).mean().sqrt().item() for t in range(T + 1)]
    if op_name in WARPS:
        assert all(d <= dist[0] * (1 + 1e-4) for d in dist[1:]), dist
        return
    assert all(d < dist[0] for d in dist[1:]), dist
    if op_name not in NOT_MONOTONE:
        for before, after in zip(dist, dist[1:]):
            assert after <= before * (1 + 1e-4), dist


@pytest.mark.parametrize("steps", [None, 2])
@pytest.mark.parametrize("sampler", [sample_improved, sample_naive])
def test_oracle_sampler_returns_x0(op, sampler, steps):
    x0 = smooth_images()
    params = _draw(op, x0)
    x_T = op.final_state(x0, params)
    out = sampler(lambda x_t, t: x0, op, x_T, params=params, steps=steps)
    assert (out - x0).abs().max().item() <= 1e-4


# ---------------------------------------------------------------------------------------------- bad input
def test_rejects_bad_images(op):
    x0 = smooth_images()
    ctx = context_for(op, x0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        op(x0[0], 1, **ctx)
    with pytest.raises(TypeError, match="floating"):
        op((x0 * 255).to(torch.uint8), 1, **ctx)
    with pytest.raises(TypeError, match="torch.Tensor"):
        op(x0.numpy(), 1, **ctx)
    with pytest.raises(ValueError, match="empty batch"):
        op(x0[:0], 1, **ctx)


def test_rejects_bad_levels(op):
    x0 = smooth_images()
    params = _draw(op, x0)
    with pytest.raises(ValueError, match=rf"\[0, {T}\].*got values in \[{T + 1}, {T + 1}\]"):
        op(x0, T + 1, params)
    with pytest.raises(ValueError, match=r"got values in \[-1"):
        op(x0, torch.tensor([-1, 0, 1, 2]), params)
    with pytest.raises(TypeError, match="integer"):
        op(x0, torch.tensor([0.5, 1.0, 1.0, 1.0]), params)
    with pytest.raises(TypeError, match="int"):
        op(x0, 1.0, params)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        op(x0, torch.tensor([1, 2]), params)


def test_rejects_bad_params(op):
    x0 = smooth_images()
    params = _draw(op, x0)
    if op.param_keys:
        with pytest.raises(ValueError, match="params must have keys"):
            op(x0, 1, {})
        with pytest.raises(ValueError, match="batch-first"):
            op(x0, 1, {k: v[:2] for k, v in params.items()})
    with pytest.raises(ValueError, match="unexpected"):
        op(x0, 1, {**params, "bogus": torch.zeros(4)})
    with pytest.raises(TypeError, match="dict"):
        op(x0, 1, [1, 2])


@pytest.mark.parametrize("cls", [cd.GaussianBlur, cd.GaussianMask, cd.Pixelate, cd.Snow, cd.Desaturate, cd.Mix,
                                 cd.GaussianNoise, cd.BlurNoise, cd.MotionBlur, cd.DefocusBlur, cd.JPEG, cd.Rotate,
                                 cd.Zoom, cd.Posterize, cd.ContrastLoss, cd.Elastic])
def test_rejects_non_positive_num_steps(cls):
    with pytest.raises(ValueError, match="num_steps must be a positive int, got 0"):
        cls(0)
    with pytest.raises(ValueError, match="got -3"):
        cls(-3)
    with pytest.raises(TypeError, match="num_steps"):
        cls(2.5)


def test_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match="expected 3 channels, got 1"):
        cd.GaussianBlur(4, channels=3)(torch.rand(2, 1, 16, 16), 1)
    with pytest.raises(ValueError, match="expected 3 channels, got 1"):
        cd.Desaturate(4)(torch.rand(2, 1, 16, 16), 1)


def test_rejects_negative_sigma_and_even_kernel():
    with pytest.raises(ValueError, match=r"sigmas.*>= 0.*-1"):
        cd.GaussianBlur(3, sigmas=[1.0, -1.0, 2.0])
    with pytest.raises(ValueError, match=r">= 0.*-0.5"):
        cd.GaussianBlur(3, sigma=-0.5)
    with pytest.raises(ValueError, match="one value per step \\(3 values\\), got 2"):
        cd.GaussianBlur(3, sigmas=[1.0, 2.0])
    with pytest.raises(ValueError, match="kernel_size must be a positive odd int, got 4"):
        cd.GaussianBlur(3, kernel_size=4)
    with pytest.raises(ValueError, match=r">= 0"):
        cd.GaussianMask(3, sigmas=[1.0, -2.0, 1.0])
    with pytest.raises(ValueError, match="kernel_size must be a positive odd int, got 10"):
        cd.Snow(3, kernel_length=10)
    with pytest.raises(ValueError, match="border must be one of"):
        cd.GaussianBlur(3, border="zeros")


def test_rejects_missing_mixing_partner():
    x0 = smooth_images()
    with pytest.raises(ValueError, match="Mix needs a partner image"):
        cd.Mix(5)(x0, 2)
    with pytest.raises(ValueError, match="shape of x0"):
        cd.Mix(5)(x0, 2, params={"partner": torch.rand(4, 3, 16, 16)})
    with pytest.raises(TypeError, match="unexpected context"):
        cd.GaussianBlur(5).make_params(x0, partner=x0)


def test_rejects_sizes_the_operator_cannot_serve():
    with pytest.raises(ValueError, match=r"divisible by 2\*\*3 = 8, got 28x28"):
        cd.Pixelate(3)(torch.rand(1, 1, 28, 28), 1)
    with pytest.raises(ValueError, match="divisible"):
        cd.Pixelate(3, image_size=20)
    with pytest.raises(ValueError, match="larger than 40"):
        cd.Pixelate(40, schedule="linear")(torch.rand(1, 1, 32, 32), 1)
    with pytest.raises(ValueError, match="luma grayscale needs RGB"):
        cd.Desaturate(4, grayscale="luma", channels=None)(torch.rand(1, 2, 8, 8), 1)
    with pytest.raises(ValueError, match="at least 2 channels"):
        cd.Desaturate(4, channels=None)(torch.rand(1, 1, 8, 8), 1)


def test_compose_rejects_mismatched_parts():
    with pytest.raises(ValueError, match="same num_steps"):
        cd.Compose([cd.GaussianBlur(3), cd.GaussianNoise(4)])
    with pytest.raises(ValueError, match="at least one"):
        cd.Compose([])
    with pytest.raises(TypeError, match="part 1 must be a Degradation"):
        cd.Compose([cd.GaussianBlur(3), torch.nn.Identity()])


def test_step_difference_equals_two_calls(op):
    """The fast Algorithm-2 update (one FFT for blur) agrees with the reference D(x, t') - D(x, t)."""
    x0 = smooth_images()
    params = _draw(op, x0)
    t, t_next = torch.tensor([1, 3, T, 2]), torch.tensor([0, 2, 2, 0])
    reference = op.degrade(x0, t_next, params) - op.degrade(x0, t, params)
    torch.testing.assert_close(op.step_difference(x0, t, t_next, params), reference, atol=2e-6, rtol=0)


def test_call_is_the_observed_form_and_level_zero_is_exact_in_both(op):
    x0 = smooth_images()
    params = _draw(op, x0)
    t = torch.tensor([0, 1, T - 1, T])
    assert torch.equal(op(x0, t, params), op.degrade_input(x0, t, params))
    assert torch.equal(op.degrade_input(x0, t, params), op.observe(op.degrade(x0, t, params), t))
    zero = torch.zeros(4, dtype=torch.long)
    assert torch.equal(op.degrade(x0, zero, params), x0)
    assert torch.equal(op.degrade_input(x0, zero, params), x0)
