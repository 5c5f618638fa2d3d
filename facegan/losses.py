"""The three training objectives: DCGAN, WGAN and WGAN-GP.

Each objective turns the discriminator's raw scores into the D and G losses and into the tutorial's
two "accuracies", which drive its adaptive balance:

- ``accuracy_g``: the share of fakes that fool D;
- ``accuracy_d``: how well D separates real from fake.

DCGAN uses binary cross-entropy on logits, the numerically stable equivalent of the tutorial's
sigmoid followed by BCE. WGAN-GP's penalty follows Gulrajani et al. (2017): uniform [0, 1]
interpolation weights and the gradient norm per sample over all pixels and channels (the tutorial
draws the weights from a normal distribution and takes the norm over channels only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facegan.errors import FaceganError


class Objective:
    """Base class; subclasses define the losses and the accuracies from raw D scores."""

    name: str = ""
    needs_penalty = False

    def d_loss(self, scores_real: torch.Tensor, scores_fake: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def g_loss(self, scores_fake: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def accuracies(self, scores_real: torch.Tensor, scores_fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(accuracy_g, accuracy_d)`` as 0-d tensors (kept on the device: no sync per step)."""
        raise NotImplementedError

    def after_d_step(self, discriminator: nn.Module) -> None:
        """Hook run after each optimiser step of D (weight clipping for WGAN)."""


class DCGANObjective(Objective):
    name = "dcgan"

    def d_loss(self, scores_real, scores_fake):
        return F.binary_cross_entropy_with_logits(
            scores_real, torch.ones_like(scores_real)
        ) + F.binary_cross_entropy_with_logits(scores_fake, torch.zeros_like(scores_fake))

    def g_loss(self, scores_fake):
        # The non-saturating loss: G maximises log D(G(z)).
        return F.binary_cross_entropy_with_logits(scores_fake, torch.ones_like(scores_fake))

    def accuracies(self, scores_real, scores_fake):
        # A logit >= 0 is a probability >= 0.5: the tutorial's thresholds on the sigmoid output.
        accuracy_g = (scores_fake >= 0).float().mean()
        accuracy_d = ((scores_fake <= 0).float().mean() + (scores_real > 0).float().mean()) / 2
        return accuracy_g, accuracy_d


class WGANObjective(Objective):
    name = "wgan"

    def __init__(self, clip_value: float = 0.1):
        self.clip_value = clip_value

    def d_loss(self, scores_real, scores_fake):
        return scores_fake.mean() - scores_real.mean()

    def g_loss(self, scores_fake):
        return -scores_fake.mean()

    def accuracies(self, scores_real, scores_fake):
        # A fake "fools" the critic when it scores at least the mean real score of this minibatch
        # (the tutorial compares with the previous minibatch's mean, kept alive as a graph tensor).
        accuracy_g = (scores_fake >= scores_real.mean()).float().mean()
        accuracy_d = (scores_real > scores_fake).float().mean()
        return accuracy_g, accuracy_d

    @torch.no_grad()
    def after_d_step(self, discriminator):
        # Two launches for all the weights rather than one per tensor (the same values as clamp_):
        # a small critic's step is bound by launches on a GPU.
        params = list(discriminator.parameters())
        torch._foreach_clamp_min_(params, -self.clip_value)
        torch._foreach_clamp_max_(params, self.clip_value)


class WGANGPObjective(WGANObjective):
    name = "wgan-gp"
    needs_penalty = True

    def __init__(self, gp_weight: float = 10.0):
        super().__init__()
        self.gp_weight = gp_weight

    def after_d_step(self, discriminator):
        """No clipping: the penalty keeps the critic Lipschitz."""

    def penalty(self, discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                alpha: torch.Tensor | None = None) -> torch.Tensor:
        """The gradient penalty at points ``alpha`` of the way from fake to real (drawn when None)."""
        return gradient_penalty(discriminator, real, fake, self.gp_weight, alpha=alpha)


def gradient_penalty(
    discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, weight: float = 10.0,
    alpha: torch.Tensor | None = None,
) -> torch.Tensor:
    """``weight * mean_i (||grad_x D(x_i)||_2 - 1)^2`` at random points between real and fake.

    ``x_i = a_i * real_i + (1 - a_i) * fake_i`` with ``a_i ~ U[0, 1]`` per sample (drawn here
    unless ``alpha``, N x 1 x 1 x 1, is given); the norm runs over every pixel and channel of
    sample ``i``. ``fake`` must not require grad (detach it).
    """
    if alpha is None:
        alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    mixed = torch.lerp(fake, real, alpha).requires_grad_(True)
    scores = discriminator(mixed)
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    norms = grad.flatten(1).norm(2, dim=1)
    return weight * ((norms - 1) ** 2).mean()


def make_objective(loss: str, *, gp_weight: float = 10.0, clip_value: float = 0.1) -> Objective:
    if loss == "dcgan":
        return DCGANObjective()
    if loss == "wgan":
        return WGANObjective(clip_value)
    if loss == "wgan-gp":
        return WGANGPObjective(gp_weight)
    raise FaceganError(f"unknown loss {loss!r}; choose dcgan, wgan or wgan-gp")
