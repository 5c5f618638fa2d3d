"""Test doubles with known behaviour: generators whose samples are drawn from a fixed pool of faces."""

from __future__ import annotations

import torch
from torch import nn

from facegan.synthetic import synthetic_faces


class PoolGenerator(nn.Module):
    """A 'generator' that hands back faces from a fixed pool: latent z picks a face, deterministically.

    ``pool`` faces of the built-in renderer (seed ``seed``), plus per-sample brightness noise of
    size ``noise`` (so that checkpoints of one history differ in quality). A pool of a few faces is
    a collapsed generator; a pool of hundreds a healthy one.
    """

    def __init__(self, pool: int, *, noise: float = 0.0, seed: int = 100, image_size: int = 32, latent_dim: int = 8):
        super().__init__()
        self.latent_dim = latent_dim
        faces = synthetic_faces(pool, image_size, seed=seed).images.float() / 127.5 - 1.0
        self.register_buffer("faces", faces)
        self.noise = noise

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        index = ((z[:, 0] * 7919.0).abs().floor().long() + (z[:, 1] * 104729.0).abs().floor().long()) % len(self.faces)
        images = self.faces[index] + self.noise * z[:, 2, None, None, None]
        return images.clamp(-1, 1)


def collapsing_history(onset: int, epochs: int = 10) -> dict[int, PoolGenerator]:
    """Healthy checkpoints improving until ``onset``, then a generator of three faces."""
    return {epoch: PoolGenerator(600, noise=0.3 / epoch) if epoch < onset else PoolGenerator(3, seed=7)
            for epoch in range(1, epochs + 1)}


def stable_history(epochs: int = 10) -> dict[int, PoolGenerator]:
    """Healthy checkpoints throughout, each drawing from its own pool of faces."""
    return {epoch: PoolGenerator(600, noise=0.3 / epoch, seed=100 + epoch) for epoch in range(1, epochs + 1)}
