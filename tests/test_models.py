import pytest
import torch
from torch import nn

from facegan.errors import FaceganError
from facegan.models import SUPPORTED_IMAGE_SIZES, Discriminator, Generator, count_parameters


def test_defaults_are_the_seeds_80px_networks():
    g, d = Generator(), Discriminator()
    assert count_parameters(g) == 4_395_904
    assert count_parameters(d) == 2_770_176
    assert g(torch.randn(3, 128)).shape == (3, 3, 80, 80)
    assert d(torch.randn(3, 3, 80, 80)).shape == (3, 1)
    # The seed's layer stack: no conv bias, 5 -> 10 -> 20 -> 40 -> 80.
    convs = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [
        (128, 512, 5), (512, 256, 4), (256, 128, 4), (128, 64, 4), (64, 3, 4)]
    assert all(c.bias is None for c in convs)
    assert isinstance(list(g.modules())[-1], nn.Tanh)


def test_instance_norm_critic_has_the_same_parameter_count():
    d = Discriminator(norm="instance")
    assert count_parameters(d) == 2_770_176
    assert any(isinstance(m, nn.InstanceNorm2d) and m.affine for m in d.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())


@pytest.mark.parametrize("size", SUPPORTED_IMAGE_SIZES)
def test_every_supported_size_round_trips(size):
    g = Generator(image_size=size, width=8, latent_dim=16)
    d = Discriminator(image_size=size, width=8)
    x = g(torch.randn(2, 16))
    assert x.shape == (2, 3, size, size)
    assert x.abs().max() <= 1
    assert d(x).shape == (2, 1)


def test_required_sizes_are_supported():
    assert {32, 64, 80, 128} <= set(SUPPORTED_IMAGE_SIZES)


def test_unsupported_size_lists_the_supported_ones():
    with pytest.raises(FaceganError, match=r"unsupported image size 100; supported sizes: 32, 40, 64, 80, 128, 160"):
        Generator(image_size=100)
    with pytest.raises(FaceganError, match="supported sizes"):
        Discriminator(image_size=48)


def test_dcgan_initialisation():
    torch.manual_seed(0)
    g = Generator()
    w = torch.cat([m.weight.flatten() for m in g.modules() if isinstance(m, nn.ConvTranspose2d)])
    assert abs(w.mean().item()) < 1e-3
    assert w.std().item() == pytest.approx(0.02, rel=0.02)
    bn = torch.cat([m.weight for m in g.modules() if isinstance(m, nn.BatchNorm2d)])
    assert bn.mean().item() == pytest.approx(1.0, abs=0.01)
