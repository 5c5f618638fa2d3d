import pytest
import torch
from torch import nn

from facegan.losses import DCGANObjective, WGANGPObjective, WGANObjective, gradient_penalty


class LinearCritic(nn.Module):
    """D(x) = <w, x> + b: its input gradient is w for every sample."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.tensor(0.3))

    def forward(self, x):
        return (x.flatten(1) * self.w.flatten()).sum(1, keepdim=True) + self.b


def test_gradient_penalty_on_a_linear_critic_matches_the_hand_computed_value():
    torch.manual_seed(0)
    w = torch.randn(3, 4, 4) * 0.1
    critic = LinearCritic(w)
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    expected = 10 * (w.norm() - 1) ** 2  # the norm is over all pixels and channels, per sample
    assert gradient_penalty(critic, real, fake, 10.0).item() == pytest.approx(expected.item(), rel=1e-5)
    # The tutorial's bug (norm over channels only) would give a different value.
    seed_style = 10 * ((w.norm(dim=0) - 1) ** 2).mean()
    assert abs(seed_style.item() - expected.item()) > 1e-2


def test_gradient_penalty_is_differentiable_in_the_critic_weights():
    critic = LinearCritic(torch.full((3, 2, 2), 0.2))
    gp = gradient_penalty(critic, torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2), 10.0)
    gp.backward()
    # d/dw 10 (|w| - 1)^2 = 20 (|w| - 1) w / |w|
    w = critic.w.detach()
    expected = 20 * (w.norm() - 1) * w / w.norm()
    torch.testing.assert_close(critic.w.grad, expected, rtol=1e-5, atol=1e-6)


def test_gradient_penalty_interpolates_uniformly_between_real_and_fake():
    seen = []

    class Recorder(nn.Module):
        def forward(self, x):
            seen.append(x.detach().clone())
            return x.flatten(1).sum(1, keepdim=True)

    real, fake = torch.ones(4000, 1, 1, 1), torch.zeros(4000, 1, 1, 1)
    gradient_penalty(Recorder(), real, fake)
    alpha = seen[0].flatten()
    assert alpha.min() >= 0 and alpha.max() <= 1  # the tutorial's normal weights leave [0, 1]
    assert alpha.mean().item() == pytest.approx(0.5, abs=0.03)


def test_dcgan_losses_match_sigmoid_plus_bce():
    obj = DCGANObjective()
    real, fake = torch.randn(8, 1), torch.randn(8, 1)
    bce = nn.BCELoss()
    expected_d = bce(torch.sigmoid(real), torch.ones(8, 1)) + bce(torch.sigmoid(fake), torch.zeros(8, 1))
    assert obj.d_loss(real, fake).item() == pytest.approx(expected_d.item(), rel=1e-5)
    assert obj.g_loss(fake).item() == pytest.approx(bce(torch.sigmoid(fake), torch.ones(8, 1)).item(), rel=1e-5)
    # Stable where sigmoid + BCE saturates.
    assert torch.isfinite(obj.g_loss(torch.tensor([[-200.0]])))


def test_seed_accuracy_definitions():
    real = torch.tensor([[2.0], [-1.0], [3.0], [0.5]])
    fake = torch.tensor([[-1.0], [1.0], [-3.0], [0.0]])
    acc_g, acc_d = DCGANObjective().accuracies(real, fake)
    assert acc_g.item() == pytest.approx(0.5)  # logits >= 0: 1.0 and 0.0
    assert acc_d.item() == pytest.approx((0.75 + 0.75) / 2)
    acc_g, acc_d = WGANObjective().accuracies(real, fake)
    assert acc_g.item() == pytest.approx(0.0)  # no fake reaches the real mean 1.125
    assert acc_d.item() == pytest.approx(0.75)  # pairwise real > fake: 3 of 4


def test_wgan_clips_and_wgan_gp_does_not():
    d = nn.Linear(4, 1)
    nn.init.constant_(d.weight, 3.0)
    WGANGPObjective().after_d_step(d)
    assert d.weight.max().item() == 3.0
    WGANObjective(clip_value=0.1).after_d_step(d)
    assert d.weight.abs().max().item() == pytest.approx(0.1)
