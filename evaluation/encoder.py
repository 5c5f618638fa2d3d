"""A feature space learned from the real images themselves, with no download: a small CNN
trained self-supervised (SimCLR, Chen et al. 2020) on the training images.

Why: a random CNN sees colour and layout but barely sees what makes two faces different kinds of
face once position, scale and background vary. Contrastive training on two random views of each
real image makes the features invariant to those nuisances and keeps the rest. Two choices
decide whether it sees modes (``experiments/probe_features.py`` measures how often a held-out
image's nearest real neighbour shares its attribute or digit):

- the views jitter contrast, brightness and each channel's gain a little: with colours
  untouched, an image's background and ink colours alone tell it from the others, and the
  network learned colour statistics instead of shape (faces: a neighbour shared all four
  attributes 21% of the time, less than a random CNN's 33%). The jitter is smaller than the
  gaps between skin tones and between hair colours, which stay visible;
- the features are the last layer's means over a 2 x 2 grid, not one global mean, so where
  things are (mouth, glasses, each stroke of a digit) survives pooling, as in the random CNN's
  quadrant means.

The trained encoder is saved as a torch.export program and used like any other network:
``facegan encoder --data synthetic --out enc.pt2`` then ``facegan evaluate --features
export:enc.pt2`` (a ``.pt`` name writes TorchScript instead, for ``torchscript:enc.pt``). Train it
once per dataset and keep the file: scores from different encoders are not comparable.

Example:
    >>> from facegan.synthetic import synthetic_faces
    >>> faces = synthetic_faces(64, 32, seed=0).images
    >>> encoder = train_encoder(faces, EncoderSettings(epochs=1, batch_size=32), progress=False)
    >>> encoder(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 1024])
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from facegan.common import atomic_write
from facegan.errors import FaceganError

INPUT_SIZE = 32  # what the encoder sees; every extractor resizes to its input size
POOL_GRID = 2  # features: the last layer's means over a POOL_GRID x POOL_GRID grid of cells
# View jitter, each drawn uniformly in +-: contrast around the image mean, brightness (on 0..1),
# gain of each colour channel. Small enough that skin tones and hair colours stay apart.
JITTER_CONTRAST, JITTER_BRIGHTNESS, JITTER_GAIN = 0.3, 0.2, 0.3


@dataclass(frozen=True)
class EncoderSettings:
    """SimCLR settings; the defaults train in about 4 minutes on 2 CPU cores for 2000 images."""

    # 60, not 30: the longer-trained encoder sees the ground truth's face attributes better (linear
    # probe on the whole mode 0.69 vs 0.53, experiments/probe_features.py) and the collapse
    # benchmark's lowest-FID checkpoint in its space keeps more modes (README, "Collapse benchmark").
    epochs: int = 60
    batch_size: int = 64
    lr: float = 2e-3
    temperature: float = 0.2
    width: int = 32
    seed: int = 0

    def validate(self) -> "EncoderSettings":
        for name in ("epochs", "batch_size", "width"):
            if getattr(self, name) < 1:
                raise FaceganError(f"encoder {name} must be at least 1, got {getattr(self, name)}")
        if not (self.lr > 0 and self.temperature > 0):
            raise FaceganError("encoder lr and temperature must be positive")
        return self


class Encoder(nn.Module):
    """Images in [0, 1] (N x 3 x 32 x 32) -> L2-normalised 4 · 8·width features.

    Four 3x3 conv blocks (BatchNorm, ReLU; stride 2 after the first), then average pooling over
    a 2 x 2 grid of the 4 x 4 map (one mean per channel and quadrant).
    ``input_size`` tells :mod:`evaluation.features` what to resize to (TorchScript keeps the
    attribute; :func:`save_encoder` writes it into a torch.export program's extra files).
    """

    def __init__(self, width: int = 32):
        super().__init__()
        self.input_size = INPUT_SIZE
        self.pool_grid = POOL_GRID  # an attribute, as TorchScript cannot read module globals
        layers, c_in = [], 3
        for i, c_out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.dim = c_in * self.pool_grid * self.pool_grid

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.input_size or images.shape[-2] != self.input_size:
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        return F.normalize(self.pooled(images), dim=1)

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """Un-normalised pooled features of 32 x 32 images in [0, 1] (what SimCLR's head sees)."""
        return F.adaptive_avg_pool2d(self.body(images * 2 - 1), self.pool_grid).flatten(1)


def random_views(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random view per image: zoom 1-1.4x, shift up to 12%, mirror half of them, then jitter
    contrast, brightness and each channel's gain (see the module docstring for why).

    The geometry is one affine grid for the whole batch (a different transform per image); the
    result stays in [0, 1].
    """
    n = images.shape[0]
    u = torch.rand(n, 4, generator=generator)
    scale = 1 / (1 + 0.4 * u[:, 0])  # < 1: the sampling grid covers part of the image (zoom in)
    flip = torch.where(u[:, 1] < 0.5, -1.0, 1.0)
    shift = (u[:, 2:] * 2 - 1) * 0.12 * 2  # grid coordinates span 2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale * flip
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    views = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    j = (torch.rand(n, 5, generator=generator) * 2 - 1)[:, :, None, None]  # N x 5 x 1 x 1
    mean = views.mean(dim=(1, 2, 3), keepdim=True)
    views = (views - mean) * (1 + JITTER_CONTRAST * j[:, :1]) + mean
    views = views * (1 + JITTER_GAIN * j[:, 2:]) + JITTER_BRIGHTNESS * j[:, 1:2]
    return views.clamp(0, 1)


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each view must pick its partner among the 2N - 1 other views."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    n = a.shape[0]
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(logits, targets)


def train_encoder(images: torch.Tensor, settings: EncoderSettings = EncoderSettings(), *,
                  progress: bool = True) -> Encoder:
    """Train an :class:`Encoder` on uint8 real images (N x 3 x H x W); returns it in eval mode."""
    settings.validate()
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise FaceganError("the encoder trains on uint8 N x 3 x H x W images")
    if images.shape[0] < 2:
        raise FaceganError("the encoder needs at least 2 real images")
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    data = F.interpolate(images.float() / 255, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                         align_corners=False, antialias=True)
    encoder = Encoder(settings.width)
    head = nn.Sequential(nn.Linear(encoder.dim, encoder.dim), nn.ReLU(inplace=True), nn.Linear(encoder.dim, 128))
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=1e-4)
    batch_size = min(settings.batch_size, data.shape[0])
    steps_per_epoch = max(1, data.shape[0] // batch_size)
    total = settings.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    encoder.train()
    bar = tqdm(total=settings.epochs, desc="encoder", unit="epoch", disable=not progress, file=sys.stderr)
    for _ in range(settings.epochs):
        order = torch.randperm(data.shape[0], generator=generator)
        for step in range(steps_per_epoch):
            batch = data[order[step * batch_size:(step + 1) * batch_size]]
            a, b = random_views(batch, generator), random_views(batch, generator)
            # As in SimCLR, the loss sits on a projection head over the pooled features; the
            # features kept for scoring are the pooled ones (normalised in Encoder.forward).
            loss = nt_xent(head(encoder.pooled(a)), head(encoder.pooled(b)), settings.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return encoder.eval()


def export_encoder(encoder: Encoder) -> torch.export.ExportedProgram:
    """The encoder in eval mode as a torch.export program: N x 3 x 32 x 32 in (any N >= 1)."""
    example = torch.zeros(2, 3, encoder.input_size, encoder.input_size)  # 2: a batch of 1 would be fixed
    batch = torch.export.Dim("batch", min=1)
    return torch.export.export(encoder.eval(), (example,), dynamic_shapes=({0: batch},))


def encoder_format(path: str | Path) -> str:
    """The feature-space kind a file written by :func:`save_encoder` is read with: ``torchscript``
    for a ``.pt`` name, ``export`` (a torch.export program; ``.pt2`` recommended) for any other."""
    return "torchscript" if Path(path).suffix == ".pt" else "export"


def save_encoder(encoder: Encoder, path: str | Path) -> Path:
    """Write the encoder atomically, for ``--features KIND:PATH`` with KIND :func:`encoder_format`.

    A torch.export program (``torch.export.save``; the input size also in its extra file
    ``input_size``) unless the name ends in ``.pt``: TorchScript, deprecated by PyTorch (whose
    warnings are shown), kept for encoders made before.
    """
    encoder = encoder.eval()
    if encoder_format(path) == "torchscript":
        scripted = torch.jit.script(encoder)
        return atomic_write(path, lambda f: torch.jit.save(scripted, f))
    program = export_encoder(encoder)
    extra = {"input_size": str(encoder.input_size)}
    return atomic_write(path, lambda f: torch.export.save(program, f, extra_files=extra))
