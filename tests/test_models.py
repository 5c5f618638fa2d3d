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
    # The tutorial's layer stack: no conv bias, 5 -> 10 -> 20 -> 40 -> 80.
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


def test_instance_norm_matches_pytorchs_through_the_penalty_double_backward():
    """Our group-norm form of InstanceNorm2d against nn.InstanceNorm2d: outputs, state_dict keys,
    and the gradient-penalty gradients w.r.t. the critic's weights (a double backward)."""
    from facegan.losses import gradient_penalty
    from facegan.models import InstanceNorm2d

    torch.manual_seed(0)
    ours = Discriminator(image_size=32, width=8, norm="instance").double()
    reference = Discriminator(image_size=32, width=8, norm="instance").double()
    assert any(isinstance(m, InstanceNorm2d) for m in ours.modules())
    for name, module in list(reference.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, InstanceNorm2d):
                plain = nn.InstanceNorm2d(child.num_features, affine=True).double()
                setattr(module, child_name, plain)
    assert not any(isinstance(m, InstanceNorm2d) for m in reference.modules())
    reference.load_state_dict(ours.state_dict())  # same keys, strict
    for m in ours.modules():  # non-trivial affine parameters
        if isinstance(m, InstanceNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.3)
            nn.init.normal_(m.bias, 0.0, 0.3)
    reference.load_state_dict(ours.state_dict())

    real, fake = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.randn(4, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(ours(real), reference(real))
    grads = []
    for model in (ours, reference):
        torch.manual_seed(1)  # the same mixing weights
        penalty = gradient_penalty(model, real, fake, 10.0)
        grads.append(torch.autograd.grad(penalty, list(model.parameters())))
    for g_ours, g_ref in zip(*grads):
        torch.testing.assert_close(g_ours, g_ref)
