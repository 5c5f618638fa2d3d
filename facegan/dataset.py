"""The dataset container: a whole image set as one uint8 tensor, its manifest and its digest.

A :class:`Dataset` is the whole training set as one uint8 tensor (N x 3 x S x S) plus a JSON-able
manifest saying where it came from. Training loads it once and converts it in one go
(:meth:`Dataset.as_float`); nothing is re-read per batch. It is made by
:mod:`facegan.folders` (photos) or :mod:`facegan.synthetic` (the built-in faces), written and
read by :mod:`facegan.data`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from facegan import __version__
from facegan.errors import FaceganError

# The tutorial's image size, shared by the folder preparation and the synthetic faces.
DEFAULT_IMAGE_SIZE = 80


@dataclass(eq=False)  # compared by identity: comparing tensors field by field is ambiguous
class Dataset:
    """A whole image dataset in memory.

    Attributes:
        images: uint8 tensor N x 3 x S x S, contiguous, on the CPU.
        manifest: JSON-able description: ``source``, ``parameters``, ``source_files``,
            ``skipped_files``, ``num_images``, ``image_size``, ``digest`` and more.
        labels: for synthetic faces, attribute name -> int array of shape (N,) indexing
            ``SYNTHETIC_ATTRIBUTES[name]``; ``None`` for photos.
        holdout: real images of the same data kept out of training (``facegan prepare --holdout``),
            uint8 M x 3 x S x S, or ``None``. Evaluation uses them as the chance level of copying;
            training never sees them, and they are not part of the digest.
    """

    images: torch.Tensor
    manifest: dict
    labels: dict[str, np.ndarray] | None = None
    holdout: torch.Tensor | None = None

    def __post_init__(self):
        images = self.images
        if not (
            isinstance(images, torch.Tensor)
            and images.dtype == torch.uint8
            and images.ndim == 4
            and images.shape[0] >= 1
            and images.shape[1] == 3
            and images.shape[2] == images.shape[3]
        ):
            found = (
                f"{images.dtype} {tuple(images.shape)}"
                if isinstance(images, torch.Tensor)
                else type(images).__name__
            )
            raise ValueError(f"images must be a uint8 tensor N x 3 x S x S, got {found}")
        if not isinstance(self.manifest, dict):
            raise ValueError(f"the manifest must be a dict, got {type(self.manifest).__name__}")
        self.images = images.cpu().contiguous()
        if self.labels is not None:
            for name, values in self.labels.items():
                if np.shape(values) != (images.shape[0],):
                    raise ValueError(f"labels {name!r} must have shape ({images.shape[0]},)")
        if self.holdout is not None:
            held = self.holdout
            if not (isinstance(held, torch.Tensor) and held.dtype == torch.uint8 and held.ndim == 4
                    and held.shape[1:] == images.shape[1:]):
                raise ValueError(f"held-out images must be uint8 M x {' x '.join(map(str, images.shape[1:]))}")
            self.holdout = held.cpu().contiguous()

    @property
    def digest(self) -> str:
        """SHA-256 of the whole image tensor, shape included; equals ``manifest["digest"]``."""
        return tensor_digest(self.images)

    def __len__(self) -> int:
        return self.images.shape[0]

    def as_float(self, device: torch.device | str | None = None) -> torch.Tensor:
        """All images as one float32 tensor in [-1, 1], on ``device`` (default: the CPU).

        The uint8 tensor is moved first, so a GPU receives a quarter of the bytes.
        """
        images = self.images.to(device) if device is not None else self.images
        return images.to(torch.float32).div_(127.5).sub_(1.0)


def tensor_digest(images: torch.Tensor) -> str:
    """SHA-256 hex digest of a tensor's shape, dtype and every byte of its data.

    MLflow's own dataset digest samples only part of the data; this one covers all of it.
    """
    array = images.detach().cpu().contiguous().numpy()
    sha = hashlib.sha256(f"{array.dtype.str}{tuple(array.shape)}".encode())
    sha.update(memoryview(array).cast("B"))
    return sha.hexdigest()


def make_manifest(images: torch.Tensor, source: str, parameters: dict, **extra) -> dict:
    return {
        "facegan_version": __version__,
        "source": source,
        "parameters": parameters,
        "num_images": int(images.shape[0]),
        "image_size": int(images.shape[-1]),
        "digest": tensor_digest(images),
        **extra,
    }


def check_int(name: str, value, minimum: int) -> int:
    # bool is an int in Python; `--size True` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise FaceganError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


