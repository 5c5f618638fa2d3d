"""What defines the networks' shapes, without torch: the supported image sizes and their layouts,
the norm choices, and :class:`NetworkConfig`, which every checkpoint stores.

Kept apart from :mod:`facegan.models` so that reading and validating a config (``facegan
train --set model.image_size=...``) needs no torch import: a bad value fails in a fraction of
a second instead of after torch has loaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from facegan.errors import FaceganError

# (base, doublings) for every supported image size.
_LAYOUTS = {b * 2**n: (b, n) for b in (4, 5) for n in (3, 4, 5)}
SUPPORTED_IMAGE_SIZES = tuple(sorted(_LAYOUTS))
GENERATOR_NORMS = ("batch", "none")
DISCRIMINATOR_NORMS = ("batch", "instance", "none")


def layout(image_size: int) -> tuple[int, int]:
    """``(base, doublings)`` of the networks for ``image_size``, e.g. 80 -> (5, 4)."""
    if image_size not in _LAYOUTS:
        sizes = ", ".join(str(s) for s in SUPPORTED_IMAGE_SIZES)
        raise FaceganError(f"unsupported image size {image_size}; supported sizes: {sizes}")
    return _LAYOUTS[image_size]


@dataclass(frozen=True)
class NetworkConfig:
    """Everything needed to rebuild both networks; stored in every checkpoint."""

    image_size: int = 80
    latent_dim: int = 128
    g_width: int = 64
    d_width: int = 64
    g_norm: str = "batch"
    d_norm: str = "batch"

    def validate(self) -> "NetworkConfig":
        layout(self.image_size)
        for name in ("latent_dim", "g_width", "d_width"):
            if getattr(self, name) < 1:
                raise FaceganError(f"model.{name} must be a positive integer, got {getattr(self, name)}")
        if self.g_norm not in GENERATOR_NORMS:
            raise FaceganError(f"model.g_norm must be one of {', '.join(GENERATOR_NORMS)}; got {self.g_norm!r}")
        if self.d_norm not in DISCRIMINATOR_NORMS:
            raise FaceganError(
                f"model.d_norm must be one of {', '.join(DISCRIMINATOR_NORMS)}; got {self.d_norm!r}"
            )
        return self

    def to_dict(self) -> dict:
        return asdict(self)
