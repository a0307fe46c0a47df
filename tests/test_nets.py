"""The restoration networks: the paper's two U-Nets, sizes, time conditioning, errors, the network contract."""

from __future__ import annotations

import warnings

import pytest
import torch

from colddiff.nets import ConvNeXtUNet, DDPMUNet, RestorationNetwork, UNet

NETS = {"convnext": ConvNeXtUNet, "ddpm": DDPMUNet}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_convnext_unet_parameter_count():
    net = ConvNeXtUNet(in_channels=3, dim=64, dim_mults=(1, 2, 4, 8), num_blocks=2)
    assert abs(count(net) - 56.6e6) / 56.6e6 < 0.05, count(net)


def test_paper_ddpm_unet_parameter_count_is_the_default():
    net = DDPMUNet()
    assert abs(count(net) - 35.7e6) / 35.7e6 < 0.05, count(net)
    assert net.attention_levels == [1]  # 16x16 is the second level of a 32x32 input


@pytest.mark.parametrize("kind", sorted(NETS))
@pytest.mark.parametrize("attention", ["linear", "full", "none"])
def test_tiny_networks_run_at_any_divisible_size(kind, attention):
    net = NETS[kind](in_channels=1, dim=8, dim_mults=(1, 2, 2), num_blocks=1, attention=attention,
                     attention_resolutions=None, image_size=None, heads=2, dim_head=4)
    for size in ((16, 16), (12, 20), (8, 8)):
        x = torch.rand(2, 1, *size)
        y = net(x, torch.tensor([0, 3]))
        assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("kind", sorted(NETS))
def test_every_parameter_receives_gradient(kind):
    """All skips are consumed (the original ConvNeXt U-Net computed a full-resolution skip it never used)."""
    net = NETS[kind](in_channels=3, dim=8, dim_mults=(1, 2, 4), num_blocks=2, attention_resolutions=None,
                     image_size=None, dropout=0.0, heads=2, dim_head=4)
    x = torch.rand(2, 3, 16, 16)
    net(x, torch.tensor([1, 2])).square().mean().backward()
    unused = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert unused == []


def test_output_depends_on_the_level():
    net = ConvNeXtUNet(in_channels=1, dim=8, dim_mults=(1, 2), num_blocks=1)
    x = torch.rand(1, 1, 8, 8)
    assert not torch.allclose(net(x, torch.tensor([1])), net(x, torch.tensor([7])))


def test_out_channels_and_dropout():
    net = DDPMUNet(in_channels=3, out_channels=1, dim=8, dim_mults=(1, 2), num_blocks=1, attention_resolutions=None,
                   image_size=None, dropout=0.5)
    assert net(torch.rand(2, 3, 8, 8), torch.tensor([1, 1])).shape == (2, 1, 8, 8)


@pytest.mark.parametrize("kind", sorted(NETS))
def test_rejects_sizes_the_levels_cannot_divide(kind):
    net = NETS[kind](in_channels=1, dim=8, dim_mults=(1, 2, 4, 8), num_blocks=1, attention_resolutions=None,
                     image_size=None)
    assert net.size_multiple == 8
    name = type(net).__name__
    with pytest.raises(ValueError, match=rf"{name}: image sides must be divisible by 2\*\*3 = 8.*got 28x28"):
        net(torch.rand(1, 1, 28, 28), torch.tensor([1]))
    with pytest.raises(ValueError, match="divisible by 2"):
        NETS[kind](in_channels=1, dim=8, dim_mults=(1, 2, 4, 8), attention_resolutions=None, image_size=28)
    with pytest.raises(ValueError, match=r"expected input \(B, 1, H, W\)"):
        net(torch.rand(1, 3, 32, 32), torch.tensor([1]))


def test_rejects_bad_configuration():
    with pytest.raises(ValueError, match=r"attention_resolutions \[12\] match no level"):
        ConvNeXtUNet(dim=8, dim_mults=(1, 2), attention_resolutions=(12,), image_size=32)
    with pytest.raises(ValueError, match="need image_size"):
        DDPMUNet(dim=8, dim_mults=(1, 2), attention_resolutions=(16,), image_size=None)
    with pytest.raises(ValueError, match="attention must be"):
        ConvNeXtUNet(attention="softmax")
    with pytest.raises(ValueError, match="dropout"):
        DDPMUNet(dropout=1.5)
    with pytest.raises(ValueError, match="dim_mults"):
        ConvNeXtUNet(dim_mults=())
    with pytest.raises(TypeError, match="ConvNeXtUNet: dim must be a positive int, got str"):
        ConvNeXtUNet(dim="64")
    with pytest.raises(ValueError, match="DDPMUNet: in_channels must be a positive int, got 0"):
        DDPMUNet(in_channels=0)


def test_channels_last_gives_the_same_output():
    net = DDPMUNet(in_channels=3, dim=8, dim_mults=(1, 2), num_blocks=1, attention_resolutions=None,
                   image_size=None).eval()
    x, t = torch.rand(2, 3, 16, 16), torch.tensor([1, 4])
    expected = net(x, t)
    net_cl = net.to(memory_format=torch.channels_last)
    torch.testing.assert_close(net_cl(x.contiguous(memory_format=torch.channels_last), t), expected,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block,cls", [("convnext", ConvNeXtUNet), ("resnet", DDPMUNet)])
def test_the_deprecated_unet_builds_the_split_classes_with_the_same_weights_layout(block, cls):
    """Configs and checkpoints written with ``colddiff.nets.UNet`` still build, warn, and load old weights."""
    kwargs = dict(in_channels=1, dim=8, dim_mults=(1, 2), num_blocks=1, block=block)
    with pytest.warns(DeprecationWarning, match=f"use class_path colddiff.nets.{cls.__name__} without 'block'"):
        net = UNet(**kwargs)
    assert type(net) is cls
    # the old class's defaults for both layouts were ConvNeXt's: no attention placement, no dropout
    assert net.attention_levels == [0, 1] and not any(isinstance(m, torch.nn.Dropout) and m.p > 0
                                                      for m in net.modules())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        twin = UNet(**kwargs)
    twin.load_state_dict(net.state_dict())  # same keys and shapes
    x, t = torch.rand(2, 1, 8, 8), torch.tensor([1, 3])
    torch.testing.assert_close(twin.eval()(x, t), net.eval()(x, t))
    with pytest.raises(ValueError, match="block must be 'convnext' or 'resnet', got 'vit'"):
        UNet(block="vit")


class ThirdPartyNet(torch.nn.Module):
    """A network written outside colddiff that meets the contract: forward(x_t, t) on [0, 1] images."""

    in_channels = out_channels = 1
    image_size = None  # fully convolutional: any size

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(16, 4)
        self.conv1 = torch.nn.Conv2d(1 + 4, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.embed(t)[:, :, None, None].expand(-1, -1, *x_t.shape[-2:])
        return x_t + self.conv2(torch.relu(self.conv1(torch.cat([x_t, emb], dim=1))))


def test_a_third_party_network_meeting_the_contract_trains_and_samples():
    import colddiff.degradations as cd
    from colddiff.module import ColdDiffusion

    net = ThirdPartyNet()
    assert isinstance(net, RestorationNetwork) and isinstance(ConvNeXtUNet(dim=8, dim_mults=(1,)), RestorationNetwork)
    model = ColdDiffusion(cd.GaussianBlur(4, kernel_size=5), net, image_size=8, channels=1,
                          optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    x0 = torch.rand(8, 1, 8, 8)
    optimizer = model.configure_optimizers()
    before = model.loss(x0, torch.Generator().manual_seed(0)).item()
    for _ in range(20):
        optimizer.zero_grad()
        model.loss(x0).backward()
        optimizer.step()
    assert model.loss(x0, torch.Generator().manual_seed(0)).item() < before
    model.update_ema(copy_only=True)
    result = model.reconstruct(x0[:2], generator=torch.Generator().manual_seed(0), steps=2)
    assert result.sampled.shape == (2, 1, 8, 8) and torch.isfinite(result.sampled).all()
