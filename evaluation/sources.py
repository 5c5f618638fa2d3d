"""Checkpoint sources for the engine that need no tracking store: generators or images in memory,
folders, generators loaded when they are scored (checkpoint files).

All yield :class:`evaluation.engine.Checkpoint` objects. The third source, a training run in
MLflow, lives beside the tracker (:class:`facegan.tracking.MlflowRunSource`): only that module
talks to MLflow.

:class:`AdaptedGenerator` makes any image-generating network look like facegan's own to the
engine (standard-normal latents N x ``latent_dim`` in, N x 3 x H x W images in [-1, 1] out): its
latent shape, its output range, the tutorial's transposed layout and grey outputs are stated once
and undone there. Reading checkpoint files (which formats, which architectures) is the trainer
side's business (:mod:`facegan.imported`): :class:`LoadingCheckpoint` only holds a callable that
returns the generator.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Sequence
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


class AdaptedGenerator(torch.nn.Module):
    """A generator network of any architecture as the engine uses facegan's own.

    The engine (:func:`evaluation.engine.generator_batches`) draws standard-normal latents
    N x ``latent_dim`` and wants N x 3 x H x W images in [-1, 1], upright. This wraps a network
    that takes another latent shape (e.g. DCGAN's N x 100 x 1 x 1), draws values in another range
    (e.g. [0, 1] after a sigmoid), draws grey images (one channel, repeated), or draws the
    tutorial's transposed C x W x H tensors (its ``image_to_tensor`` swaps the axes).

    Args:
        network: the generator; called with latents of shape N x ``*latent_shape``.
        latent_shape: one latent's shape, e.g. ``(128,)`` or ``(100, 1, 1)``; the latents are the
            engine's fixed standard-normal draws, reshaped.
        output_range: the values the network's outputs span, mapped linearly to [-1, 1].
        transposed: the outputs are the tutorial's C x W x H (swapped back to C x H x W).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.ConvTranspose2d(4, 3, 8), torch.nn.Sigmoid())
        >>> g = AdaptedGenerator(net, (4, 1, 1), output_range=(0.0, 1.0))
        >>> g.latent_dim, tuple(g(torch.randn(2, 4)).shape)
        (4, (2, 3, 8, 8))
    """

    def __init__(self, network: torch.nn.Module, latent_shape: Sequence[int], *,
                 output_range: tuple[float, float] = (-1.0, 1.0), transposed: bool = False):
        super().__init__()
        shape = tuple(int(n) for n in latent_shape)
        if not shape or any(n < 1 for n in shape):
            raise FaceganError(f"a latent shape must be positive sizes, e.g. 128 or 100x1x1; got {latent_shape!r}")
        low, high = (float(v) for v in output_range)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise FaceganError(f"an output range must be two numbers, low < high, e.g. -1,1 or 0,1; got {output_range!r}")
        self.network, self.latent_shape, self.output_range, self.transposed = network, shape, (low, high), transposed
        self.latent_dim = math.prod(shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        images = self.network(z.reshape(z.shape[0], *self.latent_shape))
        if not (isinstance(images, torch.Tensor) and images.ndim == 4 and images.shape[0] == z.shape[0]
                and images.shape[1] in (1, 3)):
            found = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise FaceganError(f"the generator drew {found} from {z.shape[0]} latents of shape "
                               f"{'x'.join(map(str, self.latent_shape))}; expected images N x 3 x H x W (or N x 1 x H x W)")
        low, high = self.output_range
        images = (images.float() - low) * (2.0 / (high - low)) - 1.0
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return images.transpose(-1, -2) if self.transposed else images

    def check(self, what: str) -> AdaptedGenerator:
        """Draw two images once (eval mode, no gradients) to find a wrong latent shape or output now,
        in one clear error naming ``what``, rather than in the middle of scoring; returns ``self``."""
        was_training = self.training
        try:
            self.eval()
            with torch.no_grad():
                self(torch.zeros(2, self.latent_dim, device=_device_of(self.network)))
        except FaceganError as exc:
            raise FaceganError(f"{what}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - whatever the user's network raises on a wrong input
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise FaceganError(f"{what}: the generator failed on latents of shape 2x"
                               f"{'x'.join(map(str, self.latent_shape))} ({type(exc).__name__}: {text}); "
                               "is the latent shape right (e.g. 100x1x1 for DCGAN's netG)?") from None
        finally:
            self.train(was_training)
        return self


def _device_of(network: torch.nn.Module) -> torch.device:
    tensor = next(iter(network.parameters()), None)
    if tensor is None:
        tensor = next(iter(network.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@dataclass
class LoadingCheckpoint:
    """A generator that is loaded only when it is scored (a checkpoint file), then dropped.

    ``load`` returns a module as :func:`evaluation.engine.generator_batches` takes it (with
    ``latent_dim``, drawing [-1, 1]; :class:`AdaptedGenerator` makes one of any network) and
    raises :class:`FaceganError` for a file it cannot read, which the engine reports and skips.
    """

    epoch: int
    label: str
    load: Callable[[], torch.nn.Module]
    model_id: str | None = None
    seed: int = LATENT_SEED

    def samples(self, num_samples: int, device: torch.device) -> Iterator[torch.Tensor]:
        return generator_batches(self.load(), num_samples, device, seed=self.seed)


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
