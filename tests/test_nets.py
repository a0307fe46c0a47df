"""The restoration U-Net: the paper's two networks, sizes, time conditioning, errors."""

from __future__ import annotations

import pytest
import torch

from colddiff.nets import UNet


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_convnext_unet_parameter_count():
    net = UNet(in_channels=3, dim=64, dim_mults=(1, 2, 4, 8), num_blocks=2, block="convnext")
    assert abs(count(net) - 56.6e6) / 56.6e6 < 0.05, count(net)


def test_paper_ddpm_unet_parameter_count():
    net = UNet(in_channels=3, dim=128, dim_mults=(1, 2, 2, 2), num_blocks=2, block="resnet",
               attention_resolutions=(16,), dropout=0.1, image_size=32)
    assert abs(count(net) - 35.7e6) / 35.7e6 < 0.05, count(net)
    assert net.attention_levels == [1]  # 16x16 is the second level of a 32x32 input


@pytest.mark.parametrize("block", ["convnext", "resnet"])
@pytest.mark.parametrize("attention", ["linear", "full", "none"])
def test_tiny_networks_run_at_any_divisible_size(block, attention):
    net = UNet(in_channels=1, dim=8, dim_mults=(1, 2, 2), num_blocks=1, block=block, attention=attention, heads=2,
               dim_head=4)
    for size in ((16, 16), (12, 20), (8, 8)):
        x = torch.rand(2, 1, *size)
        y = net(x, torch.tensor([0, 3]))
        assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("block", ["convnext", "resnet"])
def test_every_parameter_receives_gradient(block):
    """All skips are consumed (the original ConvNeXt U-Net computed a full-resolution skip it never used)."""
    net = UNet(in_channels=3, dim=8, dim_mults=(1, 2, 4), num_blocks=2, block=block, heads=2, dim_head=4)
    x = torch.rand(2, 3, 16, 16)
    net(x, torch.tensor([1, 2])).square().mean().backward()
    unused = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert unused == []


def test_output_depends_on_the_level():
    net = UNet(in_channels=1, dim=8, dim_mults=(1, 2), num_blocks=1)
    x = torch.rand(1, 1, 8, 8)
    assert not torch.allclose(net(x, torch.tensor([1])), net(x, torch.tensor([7])))


def test_out_channels_and_dropout():
    net = UNet(in_channels=3, out_channels=1, dim=8, dim_mults=(1, 2), num_blocks=1, block="resnet", dropout=0.5)
    assert net(torch.rand(2, 3, 8, 8), torch.tensor([1, 1])).shape == (2, 1, 8, 8)


def test_rejects_sizes_the_levels_cannot_divide():
    net = UNet(in_channels=1, dim=8, dim_mults=(1, 2, 4, 8), num_blocks=1)
    with pytest.raises(ValueError, match=r"divisible by 2\*\*3 = 8.*got 28x28"):
        net(torch.rand(1, 1, 28, 28), torch.tensor([1]))
    with pytest.raises(ValueError, match="divisible by 2"):
        UNet(in_channels=1, dim=8, dim_mults=(1, 2, 4, 8), image_size=28)
    with pytest.raises(ValueError, match=r"expected input \(B, 1, H, W\)"):
        net(torch.rand(1, 3, 32, 32), torch.tensor([1]))


def test_rejects_bad_configuration():
    with pytest.raises(ValueError, match=r"attention_resolutions \[12\] match no level"):
        UNet(dim=8, dim_mults=(1, 2), attention_resolutions=(12,), image_size=32)
    with pytest.raises(ValueError, match="need image_size"):
        UNet(dim=8, dim_mults=(1, 2), attention_resolutions=(16,))
    with pytest.raises(ValueError, match="block must be"):
        UNet(block="vit")
    with pytest.raises(ValueError, match="dropout"):
        UNet(dropout=1.5)
    with pytest.raises(ValueError, match="dim_mults"):
        UNet(dim_mults=())


def test_channels_last_gives_the_same_output():
    net = UNet(in_channels=3, dim=8, dim_mults=(1, 2), num_blocks=1, block="resnet").eval()
    x, t = torch.rand(2, 3, 16, 16), torch.tensor([1, 4])
    expected = net(x, t)
    net_cl = net.to(memory_format=torch.channels_last)
    torch.testing.assert_close(net_cl(x.contiguous(memory_format=torch.channels_last), t), expected,
                               atol=1e-5, rtol=1e-5)
