"""The generator and the discriminator (critic).

With no arguments both are exactly the tutorial's 80x80 networks: a DCGAN-style stack that starts
from a ``base``x``base`` map (5 for 80 px) and doubles it ``n`` times. Other sizes follow the
same pattern with ``size = base * 2**n``, base 4 or 5 and 3 to 5 doublings, so 32, 40, 64, 80,
128 and 160 are supported. Convolutions carry no bias, as in the tutorial (a following norm layer
makes it redundant).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from facegan.architecture import (  # noqa: F401  (re-exported: the networks' public names)
    DISCRIMINATOR_NORMS,
    GENERATOR_NORMS,
    SUPPORTED_IMAGE_SIZES,
    NetworkConfig,
    layout,
)

def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        # affine=True as in the tutorial's WGAN-GP critic; BatchNorm would couple the samples that the
        # gradient penalty treats independently.
        return InstanceNorm2d(channels, affine=True)
    return nn.Identity()


class InstanceNorm2d(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` (same parameters, same state_dict) computed as a group norm with one
    channel per group, which is the same function.

    Why: the gradient penalty differentiates the critic twice. PyTorch's instance norm runs as a
    batch norm over an N*C-channel view with repeated affine weights, and its double backward is
    composed of many small ops; group norm has native kernels for both, so a WGAN-GP step is
    faster (measured by ``experiments/bench_train.py``; experiments/RESULTS.md).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return super().forward(x)
        return F.group_norm(x, x.shape[1], self.weight, self.bias, self.eps)


def init_dcgan_weights(module: nn.Module) -> None:
    """DCGAN initialisation (Radford et al. 2016): conv weights ~ N(0, 0.02), norm scales ~ N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """Maps latent vectors (N x latent_dim) to images (N x 3 x S x S) in [-1, 1].

    Example:
        >>> g = Generator()                      # the tutorial's 80x80 generator
        >>> sum(p.numel() for p in g.parameters())
        4395904
        >>> g(torch.randn(2, 128)).shape
        torch.Size([2, 3, 80, 80])
    """

    def __init__(self, image_size: int = 80, latent_dim: int = 128, width: int = 64, norm: str = "batch"):
        super().__init__()
        NetworkConfig(image_size=image_size, latent_dim=latent_dim, g_width=width, g_norm=norm).validate()
        base, doublings = layout(image_size)
        self.image_size, self.latent_dim = image_size, latent_dim
        channels = [width * 2 ** (doublings - 1 - i) for i in range(doublings)]
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, channels[0], kernel_size=base, stride=1, padding=0, bias=False),
            _norm(norm, channels[0]),
            nn.ReLU(inplace=True),
        ]
        for c_in, c_out in zip(channels, channels[1:]):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1, bias=False),
                _norm(norm, c_out),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.ConvTranspose2d(channels[-1], 3, kernel_size=4, stride=2, padding=1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        init_dcgan_weights(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.latent_dim, 1, 1))


class Discriminator(nn.Module):
    """Maps images (N x 3 x S x S) to one raw score each (N x 1).

    The output is a logit for DCGAN (the sigmoid lives in the loss, which is numerically stable)
    and an unbounded critic value for WGAN and WGAN-GP.

    Example:
        >>> d = Discriminator()                  # the tutorial's 80x80 discriminator
        >>> sum(p.numel() for p in d.parameters())
        2770176
    """

    def __init__(self, image_size: int = 80, width: int = 64, norm: str = "batch"):
        super().__init__()
        NetworkConfig(image_size=image_size, d_width=width, d_norm=norm).validate()
        base, doublings = layout(image_size)
        self.image_size = image_size
        channels = [width * 2**i for i in range(doublings)]
        # The first layer has no norm, as in DCGAN: normalising the raw image throws away colour.
        layers: list[nn.Module] = [
            nn.Conv2d(3, channels[0], kernel_size=4, stride=2, padding=1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for c_in, c_out in zip(channels, channels[1:]):
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1, bias=False),
                _norm(norm, c_out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers += [nn.Conv2d(channels[-1], 1, kernel_size=base, stride=1, padding=0, bias=False), nn.Flatten()]
        self.net = nn.Sequential(*layers)
        init_dcgan_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_generator(cfg: NetworkConfig) -> Generator:
    return Generator(cfg.image_size, cfg.latent_dim, cfg.g_width, cfg.g_norm)


def build_discriminator(cfg: NetworkConfig) -> Discriminator:
    return Discriminator(cfg.image_size, cfg.d_width, cfg.d_norm)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
