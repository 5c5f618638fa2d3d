"""What defines the networks' shapes, without torch: the supported image sizes and their layouts,
the norm choices, and :class:`NetworkConfig`, which every checkpoint stores and which is also the
``[model]`` section of the training config (:class:`facegan.config.Config`).

Kept apart from :mod:`facegan.models` so that reading and validating a config (``facegan
train --set model.image_size=...``) needs no torch import: a bad value fails in a fraction of
a second instead of after torch has loaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from facegan.errors import FaceganError

# (base, doublings) for every supported image size.
_LAYOUTS = {b * 2**n: (b, n) for b in (4, 5) for n in (3, 4, 5)}
SUPPORTED_IMAGE_SIZES = tuple(sorted(_LAYOUTS))
GENERATOR_NORMS = ("batch", "none")
DISCRIMINATOR_NORMS = ("batch", "instance", "none")
# A config's d_norm before it is resolved for an objective: InstanceNorm for wgan-gp (as the tutorial),
# BatchNorm otherwise. Never stored in a checkpoint.
AUTO_NORM = "auto"


def layout(image_size: int) -> tuple[int, int]:
    """``(base, doublings)`` of the networks for ``image_size``, e.g. 80 -> (5, 4)."""
    if image_size not in _LAYOUTS:
        sizes = ", ".join(str(s) for s in SUPPORTED_IMAGE_SIZES)
        raise FaceganError(f"unsupported image size {image_size}; supported sizes: {sizes}")
    return _LAYOUTS[image_size]


@dataclass(frozen=True)
class NetworkConfig:
    """Everything needed to rebuild both networks; stored in every checkpoint.

    Also the training config's ``[model]`` section (``--set model.g_width=32``), where d_norm
    starts as ``"auto"`` until :meth:`resolve` picks the norm for the objective. All of its
    validation is :meth:`validate`.
    """

    image_size: int = 80
    latent_dim: int = 128
    g_width: int = 64
    d_width: int = 64
    g_norm: str = "batch"
    d_norm: str = "batch"

    def resolve(self, loss: str) -> "NetworkConfig":
        """The config for training with ``loss``: d_norm ``"auto"`` replaced by the tutorial's choice,
        then validated (:meth:`validate`)."""
        network = self
        if self.d_norm == AUTO_NORM:
            network = replace(self, d_norm="instance" if loss == "wgan-gp" else "batch")
        return network.validate(loss)

    def validate(self, loss: str | None = None) -> "NetworkConfig":
        """Check every value (and, given the objective ``loss``, that the critic's norm suits it);
        returns ``self``. Raises :class:`FaceganError` naming the ``model.`` key at fault."""
        if loss == "wgan-gp" and self.d_norm == "batch":
            # The penalty treats each sample on its own; BatchNorm mixes them (Gulrajani et al. 2017).
            raise FaceganError("model.d_norm = 'batch' is invalid with wgan-gp; use 'instance' or 'none'")
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

    def network(self) -> "NetworkConfig":
        """This config, validated: what the trainer builds and checkpoints (``cfg.model.network()``;
        call it on a resolved config, whose d_norm is no longer ``"auto"``)."""
        return self.validate()

    def to_dict(self) -> dict:
        return asdict(self)
