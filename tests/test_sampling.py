"""Samplers: schedules of levels, cost (O(T) operator calls), callbacks, errors, and the no-Lightning import."""

from __future__ import annotations

import pytest
import torch

import colddiff.degradations as cd
from colddiff.sampling import sample, sample_direct, sample_improved, sample_naive, timesteps
from tests.conftest import smooth_images


def test_timesteps():
    assert timesteps(5) == [5, 4, 3, 2, 1, 0]
    assert timesteps(300, 3) == [300, 200, 100, 0]
    assert timesteps(300, 30)[:3] == [300, 290, 280] and len(timesteps(300, 30)) == 31
    assert timesteps(7, 7) == list(range(7, -1, -1))
    assert timesteps(10, [10, 3, 0]) == [10, 3, 0]
    assert timesteps(10, torch.tensor([10, 0])) == [10, 0]
    assert timesteps(0) == [0]


@pytest.mark.parametrize("bad,match", [
    (([10, 5, 5, 0],), "decrease strictly"),
    (([9, 5, 0],), "from the start level 10"),
    (([10, 5, 1],), "to 0"),
    ((11,), r"\[1, 10\]"),
    ((0,), r"\[1, 10\]"),
])
def test_timesteps_rejects(bad, match):
    with pytest.raises(ValueError, match=match):
        timesteps(10, *bad)
    with pytest.raises(TypeError, match="sequence of ints"):
        timesteps(10, [10.0, 0.0])


class CountingOperator(cd.GaussianBlur):
    """Counts operator calls so the test can check the sampler's cost."""

    calls = 0

    def degrade(self, x0, t, params):
        type(self).calls += 1
        return super().degrade(x0, t, params)

    def step_difference(self, x0, t, t_next, params):
        type(self).calls += 1
        return super().step_difference(x0, t, t_next, params)


@pytest.mark.parametrize("sampler,per_step", [(sample_improved, 1), (sample_naive, 1)])
def test_cost_is_linear_in_T(sampler, per_step):
    T = 40
    op = CountingOperator(T, kernel_size=5)
    x0 = smooth_images(batch=2, size=16)
    restores = []

    def restore(x_t, t):
        restores.append(int(t[0]))
        return x0

    x_T = op(x0, T)
    CountingOperator.calls = 0
    sampler(restore, op, x_T)
    assert restores == list(range(T, 0, -1))
    assert CountingOperator.calls == per_step * T  # closed form: never a loop of per-step operators


def test_step_skipping_visits_only_the_given_levels():
    op = cd.GaussianBlur(100, kernel_size=5)
    x0 = smooth_images(batch=2, size=16)
    seen = []
    sample_improved(lambda x, t: x0, op, op(x0, 100), steps=4, callback=lambda info: seen.append(
        (info["t"], info["t_next"])))
    assert seen == [(100, 75), (75, 50), (50, 25), (25, 0)]


def test_callback_reports_states():
    op = cd.GaussianMask(6)
    x0 = smooth_images(batch=2, size=16)
    infos = []
    out = sample_improved(lambda x, t: x0 * 0.9, op, op(x0, 6), callback=infos.append)
    assert [i["i"] for i in infos] == list(range(6))
    assert set(infos[0]) == {"i", "t", "t_next", "x", "x0_hat", "x_next"}
    assert torch.equal(infos[-1]["x_next"], out)


def test_naive_and_improved_follow_their_update_rules():
    op = cd.GaussianBlur(12, kernel_size=7, sigma=1.0)
    x0 = smooth_images(batch=2, size=16)
    x_T = op(x0, 12)

    def restore(x, t):  # an imperfect restorer
        return (x * 1.1 - 0.05 + 0.001 * t[:, None, None, None]).clamp(0, 1)

    naive, improved = x_T, x_T
    for s in range(12, 0, -1):
        x0_hat = restore(naive, torch.full((2,), s))
        naive = op(x0_hat, s - 1)
        x0_hat = restore(improved, torch.full((2,), s))
        improved = improved - op(x0_hat, s) + op(x0_hat, s - 1)
    torch.testing.assert_close(sample_naive(restore, op, x_T), naive)
    torch.testing.assert_close(sample_improved(restore, op, x_T), improved)
    assert not torch.allclose(naive, improved)


def test_direct_and_dispatch():
    op = cd.GaussianBlur(10)
    x0 = smooth_images(batch=2, size=16)
    x_t = op(x0, 7)
    seen = []
    out = sample_direct(lambda x, t: seen.append(t) or x * 0 + 0.5, op, x_t, t=7)
    assert torch.equal(seen[0], torch.full((2,), 7)) and torch.all(out == 0.5)
    assert torch.equal(sample("direct", lambda x, t: x, op, x_t, t=7), x_t)
    torch.testing.assert_close(sample("improved", lambda x, t: x0, op, x_t, t=7), x0, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="sampler must be one of"):
        sample("ddpm", lambda x, t: x, op, x_t)
    with pytest.raises(ValueError, match="the direct sampler does not take steps=5"):  # refused, not ignored
        sample("direct", lambda x, t: x, op, x_t, t=7, steps=5)
    with pytest.raises(ValueError, match="the heun sampler does not take noise=0.1"):
        sample("heun", lambda x, t: x, cd.FlowNoise(10), x_t, noise=0.1)
    from colddiff.sampling import get_sampler, sampler_names
    assert sampler_names()[:3] == ("naive", "improved", "direct")  # the registry, in registration order
    assert get_sampler("naive") is sample_naive and sample(sample_direct, lambda x, t: x, op, x_t, t=7) is not None


def test_partial_start_level_and_random_params_drawn():
    op = cd.GaussianMask(20, center="random")
    x0 = smooth_images(batch=3, size=16)
    g = torch.Generator().manual_seed(0)
    params = op.make_params(x0, g)
    x_t = op(x0, 8, params)
    out = sample_improved(lambda x, t: x0, op, x_t, t=8, params=params)
    torch.testing.assert_close(out, x0, atol=1e-6, rtol=0)
    # without params the sampler draws its own (a restoration of an unknown degradation still runs)
    out = sample_improved(lambda x, t: x0, op, x_t, t=8, generator=torch.Generator().manual_seed(1))
    assert out.shape == x0.shape


def test_sampler_errors():
    op = cd.GaussianBlur(10)
    x = smooth_images(batch=2, size=16)
    with pytest.raises(TypeError, match="callable"):
        sample_improved(None, op, x)
    with pytest.raises(ValueError, match=r"level of x_t.*\[0, 10\], got 11"):
        sample_improved(lambda a, b: a, op, x, t=11)
    with pytest.raises(TypeError, match="Degradation"):
        sample_improved(lambda a, b: a, torch.nn.Identity(), x)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        sample_improved(lambda a, b: a, op, x[0])
    with pytest.raises(ValueError, match="Mix needs a partner"):
        sample_improved(lambda a, b: a, cd.Mix(10), x)


def test_samplers_do_not_track_gradients():
    op = cd.GaussianBlur(5)
    net = torch.nn.Conv2d(3, 3, 3, padding=1)
    out = sample_improved(lambda x, t: net(x), op, smooth_images(batch=1, size=8))
    assert not out.requires_grad


def test_sampling_noise_is_added_at_every_level_but_the_last():
    """Algorithm 1 with noise (IHDM's ancestral step): with a perfect restorer each state is D(x0, s') + delta eps,
    and the final image (level 0) is x0 exactly."""
    op = cd.GaussianBlur(6, kernel_size=5)
    x0 = smooth_images(batch=4, size=16)
    states = []
    out = sample_naive(lambda x, t: x0, op, op(x0, 6), noise=0.05, generator=torch.Generator().manual_seed(0),
                       callback=lambda info: states.append((info["t_next"], info["x_next"])))
    torch.testing.assert_close(out, x0)
    for level, state in states[:-1]:
        residual = state - op(x0, level)
        assert abs(residual.std().item() - 0.05) < 0.005 and abs(residual.mean().item()) < 0.005
    again = sample_naive(lambda x, t: x0 + 0.01 * x, op, op(x0, 6), noise=0.05,
                         generator=torch.Generator().manual_seed(0))
    same = sample_naive(lambda x, t: x0 + 0.01 * x, op, op(x0, 6), noise=0.05,
                        generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, same)  # a seeded generator reproduces the noise
    silent = sample_improved(lambda x, t: x0 + 0.01 * x, op, op(x0, 6), noise=0.0)
    torch.testing.assert_close(silent, sample_improved(lambda x, t: x0 + 0.01 * x, op, op(x0, 6)))


def test_algorithm_2_with_noise_carries_the_noise_and_its_last_step_returns_the_estimate():
    """Algorithm 2 keeps x_s - D(x0_hat, s): with a perfect restorer the added noise accumulates in the states
    (std delta * sqrt(k) after k noisy steps) and the last step returns R(x_1, 1) = x0 instead of x0 + that noise."""
    op = cd.GaussianBlur(6, kernel_size=5)
    x0 = smooth_images(batch=8, size=32)
    states = []
    out = sample_improved(lambda x, t: x0, op, op(x0, 6), noise=0.05, generator=torch.Generator().manual_seed(0),
                          callback=lambda info: states.append((info["t_next"], info["x_next"])))
    torch.testing.assert_close(out, x0)
    for k, (level, state) in enumerate(states[:-1], start=1):
        assert abs((state - op(x0, level)).std().item() - 0.05 * k ** 0.5) < 0.01 * k ** 0.5
    last = []  # an imperfect restorer: the output is its last estimate, R(x_1, 1)
    restore = lambda x, t: x0 + 0.1 * (x - x0)  # noqa: E731
    out = sample_improved(restore, op, op(x0, 6), noise=0.05, generator=torch.Generator().manual_seed(0),
                          callback=lambda info: last.append(info["x0_hat"]))
    torch.testing.assert_close(out, last[-1])


def test_sampling_noise_per_level_and_per_image_generators():
    op = cd.GaussianBlur(4, kernel_size=5)
    x0 = smooth_images(batch=2, size=8)
    restore = lambda x, t: 0.9 * x  # noqa: E731
    both = sample_naive(restore, op, op(x0, 4), noise=[0, 0.1, 0.1, 0.1, 0.1],
                        generator=[torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    first = sample_naive(restore, op, op(x0, 4)[:1], noise=0.1, generator=[torch.Generator().manual_seed(1)])
    torch.testing.assert_close(both[:1], first)  # an image's noise depends on its own generator only
    with pytest.raises(ValueError, match=r"noise must be a number or have one value per level \(5 values\)"):
        sample_naive(restore, op, op(x0, 4), noise=[0.1, 0.1])
    with pytest.raises(ValueError, match="noise must be finite and >= 0"):
        sample_naive(restore, op, op(x0, 4), noise=-0.1)
