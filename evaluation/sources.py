"""Checkpoint sources for the engine that need no tracking store: generators or images in memory, folders.

All yield :class:`evaluation.engine.Checkpoint` objects. The third source, a training run in
MLflow, lives beside the tracker (:class:`facegan.tracking.MlflowRunSource`): only that module
talks to MLflow.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from evaluation.engine import GENERATION_BATCH, LATENT_SEED, generator_batches
from facegan.errors import FaceganError
from facegan.folders import prepare_folder

# Sample folders are read as they are: every image, no per-person limit, no crop.
_ALL = 10**9


@dataclass
class GeneratorCheckpoint:
    """A generator in memory (while training runs, in benchmarks and tests).

    Its samples come from the engine's fixed latents (``seed`` for others), exactly as a
    checkpoint file of the same weights would give them.
    """

    epoch: int
    generator: torch.nn.Module
    label: str = ""
    model_id: str | None = None
    seed: int = LATENT_SEED

    def __post_init__(self):
        self.label = self.label or f"epoch {self.epoch}"

    def samples(self, num_samples: int, device: torch.device) -> Iterator[torch.Tensor]:
        return generator_batches(self.generator, num_samples, device, seed=self.seed)


@dataclass
class ImagesCheckpoint:
    """Sample images already in memory (uint8 N x 3 x H x W), e.g. a draw that was also classified."""

    epoch: int
    images: torch.Tensor
    label: str = ""
    model_id: str | None = None

    def __post_init__(self):
        self.label = self.label or f"epoch {self.epoch}"

    def samples(self, num_samples: int, device: torch.device) -> Iterator[torch.Tensor]:
        yield from self.images[:num_samples].split(GENERATION_BATCH)


@dataclass
class FolderCheckpoint:
    """One folder of sample images, ``DIR/<epoch>/*.png`` (the tutorial's layout), read at ``image_size``."""

    epoch: int
    folder: Path
    image_size: int
    model_id: str | None = None

    @property
    def label(self) -> str:
        return str(self.folder)

    def samples(self, num_samples: int, device: torch.device) -> Iterator[torch.Tensor]:
        yield prepare_folder(self.folder, image_size=self.image_size, per_identity=_ALL, limit=num_samples,
                             crop=1.0, progress=False).images


def sample_folders(root: str | Path, image_size: int | None = None) -> list[FolderCheckpoint]:
    """A checkpoint per numeric sub-folder of ``root``, in epoch order; other folders are named and ignored.

    Args:
        root: the folder of sample folders.
        image_size: side the samples are read at; default: the smaller side of the first image.

    Raises:
        FaceganError: no such folder, or no numeric sub-folders in it.
    """
    root = Path(root)
    if not root.is_dir():
        raise FaceganError(f"--samples {root}: no such folder")
    numeric = []
    for child in sorted(root.iterdir()):
        if not child.is_dir():
            continue
        if child.name.isdigit():
            numeric.append((int(child.name), child))
        else:
            print(f"warning: ignoring {child}: not an epoch number", file=sys.stderr)
    if not numeric:
        raise FaceganError(f"--samples {root} has no numeric sub-folders (expected {root}/<epoch>/*.png)")
    numeric.sort()
    if image_size is None:
        first = next((p for _, f in numeric for p in sorted(f.rglob("*")) if p.is_file()), None)
        image_size = image_side(first)
    return [FolderCheckpoint(epoch, folder, image_size) for epoch, folder in numeric]


def image_side(path: Path | None, default: int = 80) -> int:
    """The smaller side of an image file (to read real and sample folders at the samples' size)."""
    if path is None:
        return default
    try:
        with Image.open(path) as image:
            return max(8, min(image.size))
    except Exception:  # unreadable: the folder scan will report it
        return default
