"""Known answers for the operators built on kornia, and their agreement with the kornia calls they wrap.

The shared contract (identity at 0, batched == per-sample loop, params, dtypes, the oracle samplers) runs on every
operator through tests/conftest.py; here each operator is checked against what it should compute.
"""

from __future__ import annotations

import kornia
import pytest
import torch
import torchvision.transforms.v2.functional as TF

import colddiff.degradations as cd
from colddiff.degradations import functional as F
from colddiff.estimation import check_estimable, estimate_level
from tests.conftest import smooth_images


def _impulse(size: int = 11) -> torch.Tensor:
    x = torch.zeros(1, 1, size, size)
    x[..., size // 2, size // 2] = 1.0
    return x


# ---------------------------------------------------------------------------------------------- motion blur
@pytest.mark.parametrize("length", [3, 5, 7])
def test_motion_blur_of_a_point_is_a_line_of_the_given_length(length):
    y = F.motion_blur(_impulse(), float(length))[0, 0]
    row = y[5]
    assert torch.count_nonzero(y).item() == length and torch.count_nonzero(row).item() == length
    torch.testing.assert_close(row[row > 0], torch.full((length,), 1.0 / length))
    vertical = F.motion_blur(_impulse(), float(length), angle=90.0)[0, 0]
    torch.testing.assert_close(vertical, y.T)


def test_fractional_lengths_blend_the_two_nearest_odd_lines():
    kernel = F.motion_kernels(torch.tensor([4.0]), torch.tensor([0.0]), torch.tensor([0.0]))[0]
    assert kernel.shape == (5, 5)
    torch.testing.assert_close(kernel[2], torch.tensor([0.1, 1 / 6 + 0.1, 1 / 6 + 0.1, 1 / 6 + 0.1, 0.1]))
    assert kernel.sum().item() == pytest.approx(1.0) and torch.count_nonzero(kernel[[0, 1, 3, 4]]) == 0
    assert torch.equal(F.motion_kernels(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.0])),
                       torch.ones(1, 1, 1))


def test_motion_blur_equals_kornias_call_per_image():
    x = smooth_images(batch=4)
    length, angle, direction = torch.tensor([3.0, 7.0, 3.0, 9.0]), torch.tensor([0.0, 30.0, 100.0, 250.0]), \
        torch.tensor([0.0, 0.5, -1.0, 0.2])
    batched = F.motion_blur(x, length, angle, direction, border="replicate")
    for b in range(4):
        single = kornia.filters.motion_blur(x[b:b + 1], int(length[b]), angle[b:b + 1], direction[b:b + 1],
                                            border_type="replicate")
        torch.testing.assert_close(batched[b:b + 1], single, atol=1e-6, rtol=0)


def test_motion_blur_params_and_sizes():
    random = cd.MotionBlur(5)
    assert random.param_keys == ("angle",) and "angle" in random.unknown_params_reason()
    angles = random.make_params(torch.rand(256, 1, 16, 16), torch.Generator().manual_seed(0))["angle"]
    assert 0 <= angles.min() and angles.max() < 180
    both = cd.MotionBlur(5, direction=None)
    assert both.param_keys == ("angle", "direction") and "angle and direction" in both.unknown_params_reason()
    fixed = cd.MotionBlur(5, angle=45.0)
    assert fixed.param_keys == () and fixed.unknown_params_reason() is None
    with pytest.raises(ValueError, match=r"11x11 motion kernel needs image sides longer than 5 pixels, got 5x9"):
        fixed(torch.rand(1, 1, 5, 9), 1)
    assert cd.MotionBlur(5, angle=45.0, border="replicate")(torch.rand(1, 1, 5, 9), 1).shape == (1, 1, 5, 9)
    with pytest.raises(ValueError, match=r"direction must lie in \[-1, 1\]"):
        cd.MotionBlur(5, direction=2.0)
    with pytest.raises(ValueError, match="border must be one of"):
        cd.MotionBlur(5, border="zeros")


# ---------------------------------------------------------------------------------------------- defocus
def test_defocus_blur_of_a_point_is_a_disk():
    y = F.defocus_blur(_impulse(), 3.0)[0, 0]
    assert y.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(y, y.T)
    torch.testing.assert_close(y, y.flip(0))
    assert torch.count_nonzero(y[5]).item() == 7 and y[5, 5] == y.max()  # the disk spans 2 r + 1 pixels
    assert torch.count_nonzero(y[1]).item() == 0  # 4 pixels from the centre: outside (taps start at 3.5)
    assert torch.equal(F.defocus_blur(_impulse(), 0.5), _impulse())  # a disk inside one pixel is the identity
    flat = torch.full((1, 3, 9, 9), 0.3)
    torch.testing.assert_close(F.defocus_blur(flat, 2.5), flat)
    op = cd.DefocusBlur(4, max_radius=2.0)
    assert op.severity.tolist() == [0.5, 0.875, 1.25, 1.625, 2.0]


# ---------------------------------------------------------------------------------------------- JPEG
def test_jpeg_equals_kornias_codec_at_that_quality():
    x = smooth_images(batch=3)  # 32 x 32: sides multiple of 16
    quality = torch.tensor([90.0, 50.0, 10.0])
    expected = kornia.enhance.jpeg_codec_differentiable(x, quality).clamp(0, 1)
    torch.testing.assert_close(F.jpeg(x, quality), expected, atol=0, rtol=0)
    op = cd.JPEG(9)
    torch.testing.assert_close(op.degrade(x, torch.tensor([1, 5, 9]), {}),
                               kornia.enhance.jpeg_codec_differentiable(x, op.severity[[1, 5, 9]]).clamp(0, 1))


def test_large_cpu_batches_are_coded_in_chunks_with_the_same_result(monkeypatch):
    from colddiff.degradations import kornia_ops

    x = smooth_images(batch=5)
    quality = torch.tensor([95.0, 70.0, 50.0, 30.0, 10.0])
    whole = F.jpeg(x, quality)
    monkeypatch.setattr(kornia_ops, "JPEG_CPU_CHUNK", 2 * x[0].numel())  # chunks of 2 images
    torch.testing.assert_close(F.jpeg(x, quality), whole, atol=1e-6, rtol=0)


def test_jpeg_at_other_sizes_pads_by_edge_replication_and_crops_back():
    x = smooth_images(batch=2)[..., :20, :28]
    padded = torch.nn.functional.pad(x, (0, 4, 0, 12), mode="replicate")
    expected = kornia.enhance.jpeg_codec_differentiable(padded, torch.tensor([30.0, 30.0]))[..., :20, :28]
    torch.testing.assert_close(F.jpeg(x, 30.0), expected.clamp(0, 1))


def test_grayscale_jpeg_codes_the_repeated_channel_and_returns_its_luma():
    gray = smooth_images(batch=2)[:, :1]
    out = F.jpeg(gray, 20.0)
    coded = kornia.enhance.jpeg_codec_differentiable(gray.repeat(1, 3, 1, 1), torch.tensor([20.0, 20.0]))
    assert out.shape == gray.shape
    torch.testing.assert_close(out, kornia.color.rgb_to_grayscale(coded).clamp(0, 1))
    torch.testing.assert_close(out, coded[:, :1].clamp(0, 1), atol=2e-2, rtol=0)  # flat chroma: R = G = B ~ Y
    with pytest.raises(ValueError, match=r"RGB \(3 channels\) or grayscale \(1 channel\) images, got 2 channels"):
        cd.JPEG(4)(torch.rand(1, 2, 16, 16), 1)
    with pytest.raises(ValueError, match="channels must be 1, 3 or None"):
        cd.JPEG(4, channels=2)


def test_jpeg_quality_falls_with_the_level_and_only_level_zero_is_the_identity():
    op = cd.JPEG(10)
    assert op.severity.tolist() == pytest.approx([100 - 9 * t for t in range(11)])
    x = smooth_images()
    errors = [(op(x, t) - x).abs().mean().item() for t in range(11)]
    assert errors[0] == 0 and 0 < errors[1] < errors[5] < errors[10]
    high = F.jpeg(x, 100.0)
    assert not torch.equal(high, x) and (high - x).abs().mean() < 0.05  # quality 100 is not the identity
    assert op.unknown_params_reason() is None
    check_estimable(op)


def test_jpeg_quantize_rounds_the_observed_form_only():
    op = cd.JPEG(4, quantize=True)
    x = smooth_images()
    observed = op(x, 2)
    assert torch.equal(observed, torch.round(observed * 255) / 255)
    assert not torch.equal(op.degrade(x, torch.full((4,), 2), {}), observed)
    assert torch.equal(op(x, 0), x)


def test_the_level_of_a_jpeg_image_is_found_exactly_with_a_perfect_restorer():
    """JPEG is deterministic: re-degrading the true image explains its level exactly.  With a perfect restorer the
    residual is a spike at the true level (JPEG's levels are not ordered by distance), narrower than the default
    coarse grid: JPEG asks the estimator for an exhaustive scan, which finds every level."""
    op = cd.JPEG(8, min_quality=5.0)
    x0 = smooth_images(batch=6)
    t = torch.tensor([0, 1, 3, 5, 7, 8])
    estimate = estimate_level(lambda y, s: _rows(x0, y), op, op(x0, t))
    assert estimate.levels.tolist() == t.tolist()
    assert estimate.evaluations == [9] * 6 and op.level_search_grid(9) == 9
    coarse = estimate_level(lambda y, s: _rows(x0, y), op, op(x0, t), grid=5)  # what the default search would do
    assert coarse.levels.tolist() != t.tolist()
    assert cd.GaussianBlur(8).level_search_grid(9) is None


def _rows(x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A perfect restorer: the clean image nearest each degraded row (the estimator restores subsets of rows)."""
    index = [min(range(x0.shape[0]), key=lambda b: (x0[b] - row).abs().mean().item()) for row in y]
    return x0[index]


# ---------------------------------------------------------------------------------------------- geometry
def test_a_quarter_turn_is_rot90_and_the_sign_turns_it_back():
    x = torch.rand(2, 3, 12, 12)
    torch.testing.assert_close(F.rotate(x, 90.0), torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(F.rotate(x, 90.0, sign=torch.tensor([1.0, -1.0]))[1],
                               torch.rot90(x[1], -1, dims=(-2, -1)), atol=1e-5, rtol=0)
    op = cd.Rotate(2)
    torch.testing.assert_close(op(x, 2), torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    inner = op(x, 1)[..., 4:8, 4:8]  # 45 degrees: the centre stays inside the image
    assert torch.isfinite(inner).all() and not torch.equal(op(x, 1), x)
    random = cd.Rotate(4, random_direction=True)
    assert random.param_keys == ("sign",) and "sense of rotation" in random.unknown_params_reason()
    assert cd.Rotate(4).unknown_params_reason() is None


def test_zoom_by_two_shows_the_central_half():
    x = torch.rand(2, 1, 5, 5)
    torch.testing.assert_close(F.zoom(x, 2.0)[..., ::2, ::2], x[..., 1:4, 1:4], atol=1e-6, rtol=0)
    torch.testing.assert_close(F.zoom(x, 1.0), x, atol=1e-6, rtol=0)
    assert cd.Zoom(3, schedule="exponential", max_zoom=8.0).severity.tolist() == pytest.approx([1, 2, 4, 8])


# ---------------------------------------------------------------------------------------------- tones
def test_posterize_to_one_bit_gives_black_and_white():
    x = smooth_images()
    assert set(F.posterize(x, 1.0).unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(F.posterize(x, 2.0).unique(), torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))
    eight = F.posterize(x, 8.0)
    torch.testing.assert_close(eight, torch.round(x * 255) / 255)


def test_posterize_truncate_is_kornias():
    x = smooth_images()
    bits = torch.tensor([1.0, 3.0, 5.0, 8.0])
    torch.testing.assert_close(F.posterize(x, bits, rounding="truncate"),
                               kornia.enhance.posterize(x, torch.tensor([1, 3, 5, 8])), atol=0, rtol=0)
    torch.testing.assert_close(F.posterize(x, 1.0, rounding="truncate").unique(), torch.tensor([0.0, 128 / 255]))


@pytest.mark.parametrize("rounding", ["nearest", "truncate"])
def test_posterized_images_hold_fewer_values_at_every_level(rounding):
    """What rounding loses: the distinct values of a smooth image fall from level to level."""
    op = cd.Posterize(7, rounding=rounding)
    x = smooth_images(batch=1)
    counts = [op(x, t).unique().numel() for t in range(8)]
    assert all(after < before for before, after in zip(counts, counts[1:])), counts
    assert counts[-1] <= 2


def test_contrast_loss_is_torchvisions_adjust_contrast_per_image():
    x = smooth_images()
    factor = torch.tensor([1.0, 0.7, 0.3, 0.0])
    out = F.contrast(x, factor)
    for b in range(4):
        torch.testing.assert_close(out[b], TF.adjust_contrast(x[b], float(factor[b])), atol=2e-4, rtol=0)
    final = cd.ContrastLoss(4)(x, 4)
    assert torch.allclose(final, final.mean(dim=(-2, -1), keepdim=True))  # level T: a flat grey per image
    gray = smooth_images()[:, :1]
    torch.testing.assert_close(F.contrast(gray, 0.0), gray.mean(dim=(-2, -1), keepdim=True).expand_as(gray))


# ---------------------------------------------------------------------------------------------- elastic
def test_elastic_displaces_pixels_by_the_requested_rms():
    """Warping a linear ramp moves each value by the displacement itself (bilinear interpolation is exact on it):
    the measured RMS displacement is the level's, away from the borders."""
    size, sigma = 48, 3.0
    ramp_x = torch.arange(size, dtype=torch.float64).expand(size, size) / size
    image = torch.stack([ramp_x, ramp_x.T])[None].repeat(2, 1, 1, 1)  # channel 0: x, channel 1: y
    field = F.elastic_field(image, sigma, torch.Generator().manual_seed(0))
    displacement = torch.tensor([0.0, 2.0], dtype=torch.float64)
    moved = F.elastic(image, displacement, field, padding="border")
    shift = (moved - image) * size  # in pixels
    interior = shift[..., 8:-8, 8:-8]
    rms = interior.pow(2).sum(dim=1).mean(dim=(1, 2)).sqrt()
    assert rms[0].item() < 1e-9
    assert rms[1].item() == pytest.approx(2.0, rel=0.2)


def test_elastic_is_kornias_elastic_transform_with_the_field_smoothed_once():
    x = smooth_images()
    sigma, d = 4.0, torch.tensor([0.5, 1.0, 2.0, 3.0])
    field = F.elastic_field(x, sigma, torch.Generator().manual_seed(5))
    noise = F.elastic_noise(x, sigma, torch.Generator().manual_seed(5))  # the same draw, unsmoothed
    scale = torch.tensor([2.0 / 32, 2.0 / 32])[None, :, None, None]
    expected = kornia.geometry.transform.elastic_transform2d(x, noise * d[:, None, None, None] * scale, (25, 25),
                                                             (sigma, sigma), (1.0, 1.0), align_corners=False,
                                                             padding_mode="border")
    torch.testing.assert_close(F.elastic(x, d, field), expected, atol=1e-5, rtol=0)


def test_elastic_field_is_drawn_once_and_checked():
    op = cd.Elastic(4)
    x0 = smooth_images()
    params = op.make_params(x0, torch.Generator().manual_seed(1))
    assert op.param_keys == ("field",) and params["field"].shape == (4, 2, 32, 32)
    assert torch.equal(op(x0, 3, params), op(x0, 3, params))
    with pytest.raises(ValueError, match=r"params\['field'\] must have shape \(4, 2, 32, 32\), got \(4, 2, 16, 16\)"):
        op(x0, 1, {"field": torch.zeros(4, 2, 16, 16)})
    assert "displacement field" in op.unknown_params_reason()
    with pytest.raises(ValueError, match="sigma must be a positive number"):
        cd.Elastic(4, sigma=0.0)
