"""Any image size: padding to the network's multiple and overlapping tiles blended without seams."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import colddiff.degradations as cd
from colddiff.nets import UNet
from colddiff.sampling import sample_improved
from colddiff.tiling import PaddedRestore, TiledRestore, any_size, crop, pad_to_multiple, tile_starts, tile_window
from tests.conftest import smooth_images


def identity(x, t):
    return x.clone()


class Recorder:
    """The identity, recording the shapes and levels it is called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t):
        self.calls.append((tuple(x.shape), t.tolist()))
        return x.clone()


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular", "constant"])
@pytest.mark.parametrize("size", [(5, 7), (1, 3), (13, 16), (2, 9)])
def test_non_multiple_sizes_round_trip_through_padding(mode, size):
    x = torch.rand(2, 3, *size)
    padded, padding = pad_to_multiple(x, 8, mode)
    assert padded.shape[-2] % 8 == 0 and padded.shape[-1] % 8 == 0
    assert padded.shape[-2] - size[0] < 8 and padded.shape[-1] - size[1] < 8
    assert torch.equal(crop(padded, padding), x)
    restore = PaddedRestore(Recorder(), 8, mode)
    assert torch.equal(restore(x, torch.tensor([1, 2])), x)
    assert restore.restore.calls == [((2, 3, *padded.shape[-2:]), [1, 2])]


def test_reflect_padding_mirrors_without_repeating_the_edge():
    x = torch.arange(3.0).view(1, 1, 1, 3)
    padded, padding = pad_to_multiple(x, (1, 8))
    assert padding == (0, 0, 2, 3)
    assert padded.flatten().tolist() == [2.0, 1.0, 0.0, 1.0, 2.0, 1.0, 0.0, 1.0]  # longer than the image: periodic
    x = torch.rand(1, 1, 8, 16)
    same, padding = pad_to_multiple(x, 8)
    assert padding == (0, 0, 0, 0) and same is x
    y = torch.rand(1, 2, 6, 5)
    padded, padding = pad_to_multiple(y, (8, 8))  # within the image: what torch's reflect padding gives
    assert torch.equal(padded, F.pad(y, (padding[2], padding[3], padding[0], padding[1]), mode="reflect"))


def test_padded_unet_restores_any_size_like_the_network_at_its_own_size():
    torch.manual_seed(0)
    net = UNet(in_channels=1, dim=8, dim_mults=(1, 2, 4), num_blocks=1, attention="none").eval()
    multiple = 2 ** (3 - 1)  # one halving per level after the first
    restore = PaddedRestore(net, multiple)
    x = torch.rand(2, 1, 13, 10)
    t = torch.tensor([1, 3])
    with torch.no_grad():
        out = restore(x, t)
        padded, padding = pad_to_multiple(x, multiple)
        expected = crop(net(padded, t), padding)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError):  # the network alone refuses this size
        net(x, t)


def test_tile_layout_covers_the_image_with_the_overlap():
    assert tile_starts(100, 40, 10) == [0, 30, 60]
    assert tile_starts(40, 40, 10) == [0] and tile_starts(25, 40, 10) == [0]
    assert tile_starts(41, 40, 0) == [0, 1]
    for size, tile, overlap in [(100, 40, 10), (97, 16, 5), (33, 8, 7), (64, 16, 0)]:
        starts = tile_starts(size, tile, overlap)
        covered = torch.zeros(size, dtype=torch.bool)
        for s in starts:
            covered[s: s + tile] = True
        assert covered.all() and starts[-1] + tile == size
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    w = tile_window(10, 4, 4, torch.float64)
    assert (w > 0).all() and torch.equal(w[4:6], torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(w[:4] + w[-4:], torch.ones(4, dtype=torch.float64))  # opposite ramps: a partition


@pytest.mark.parametrize("tile,overlap", [(8, 2), (16, 5), ((8, 12), (3, 0)), (7, 6)])
def test_tiled_identity_and_constant_restorers(tile, overlap):
    x = smooth_images(batch=3, channels=2, size=40)[..., :37]
    calls = Recorder()
    out = TiledRestore(calls, tile, overlap)(x, torch.tensor([0, 4, 9]))
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)
    assert len(calls.calls) == 1  # one batched call for all tiles of all images
    (shape, levels), = calls.calls
    per_image = shape[0] // 3
    assert levels == [0] * per_image + [4] * per_image + [9] * per_image  # each tile at its image's level
    constant = TiledRestore(lambda x, t: torch.full_like(x, 0.3), tile, overlap)(x, torch.tensor([1, 1, 1]))
    torch.testing.assert_close(constant, torch.full_like(x, 0.3), rtol=0, atol=1e-6)
    flat = torch.full((1, 1, 30, 30), 0.7)
    torch.testing.assert_close(TiledRestore(identity, tile, overlap)(flat, torch.tensor([2])), flat, rtol=0,
                               atol=1e-6)


def test_tiles_are_restored_in_batches_of_batch_size():
    calls = Recorder()
    x = torch.rand(2, 1, 20, 20)
    out = TiledRestore(calls, 8, 2, batch_size=5)(x, torch.tensor([3, 5]))
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)
    sizes = [shape[0] for shape, _ in calls.calls]
    assert sum(sizes) == 2 * 9 and max(sizes) == 5  # 3 x 3 tiles per image


def test_tiled_local_restorer_matches_the_untiled_result_on_a_smooth_image():
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16

    def local(x, t):  # a convolutional "restorer" with a 5x5 receptive field (two 3x3 convolutions)
        w = kernel.expand(x.shape[1], 1, 3, 3)
        for _ in range(2):
            x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), w, groups=x.shape[1])
        return 1.5 * x - 0.2

    x = smooth_images(batch=2, channels=3, size=64)
    x = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), 5, stride=1)  # smoother still
    t = torch.tensor([2, 2])
    whole = local(x, t)
    tiled = TiledRestore(local, 24, 8)(x, t)
    assert (tiled - whole).abs().max() < 0.01
    hard = TiledRestore(local, 24, 0)(x, t)  # no overlap: seams where tiles meet
    assert (tiled - whole).abs().max() < (hard - whole).abs().max()


def test_tiling_wraps_a_sampler():
    blur = cd.GaussianBlur(6, kernel_size=5, sigma=1.0)
    x_T = blur.final_state(smooth_images(batch=2, channels=1, size=40)[..., :38])
    steps = []
    plain = sample_improved(identity, blur, x_T, steps=3)
    wrapped = any_size(identity, multiple=4, tile=16, overlap=4)
    tiled = sample_improved(wrapped, blur, x_T, steps=3, callback=lambda info: steps.append(info["t"]))
    assert steps == [6, 4, 2]
    torch.testing.assert_close(tiled, plain, rtol=0, atol=1e-5)


def test_any_size_composes_padding_inside_tiling():
    calls = Recorder()
    restore = any_size(calls, multiple=8, tile=12, overlap=4)
    assert isinstance(restore, TiledRestore) and isinstance(restore.restore, PaddedRestore)
    x = torch.rand(1, 1, 30, 21)
    torch.testing.assert_close(restore(x, torch.tensor([1])), x, rtol=0, atol=1e-6)
    assert all(shape[-2] % 8 == 0 and shape[-1] % 8 == 0 for shape, _ in calls.calls)
    assert any_size(identity) is identity
    assert isinstance(any_size(identity, multiple=4), PaddedRestore)


def test_validation_errors():
    with pytest.raises(ValueError, match=r"overlap must satisfy 0 <= overlap < tile, got overlap 8 for tile 8"):
        TiledRestore(identity, 8, 8)
    with pytest.raises(ValueError, match="overlap must satisfy"):
        TiledRestore(identity, 8, -1)
    with pytest.raises(ValueError, match="tile must be positive"):
        TiledRestore(identity, 0)
    with pytest.raises(TypeError, match="tile must be an int or a pair"):
        TiledRestore(identity, 2.5)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        TiledRestore(identity, 8, batch_size=0)
    with pytest.raises(TypeError, match="restore must be a callable"):
        TiledRestore("model", 8)
    with pytest.raises(ValueError, match="multiple must be positive"):
        PaddedRestore(identity, 0)
    with pytest.raises(ValueError, match="mode must be one of"):
        PaddedRestore(identity, 4, mode="wrap")
    with pytest.raises(ValueError, match=r"t must be a \(2,\) tensor of levels"):
        TiledRestore(identity, 8)(torch.rand(2, 1, 20, 20), 3)
    with pytest.raises(ValueError, match=r"x_t must be a floating \(B, C, H, W\) tensor"):
        TiledRestore(identity, 8)(torch.rand(1, 20, 20), torch.tensor([1]))
