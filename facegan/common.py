"""What the trainer (``facegan``) and the scorer (``evaluation``) both need, in one small place.

Device choice, the one conversion from generator output to image bytes, sample grids and the
one-line text of an error. Nothing here knows about configs, datasets, MLflow or the loop, so
``evaluation`` can use it without reaching into the trainer.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from facegan.errors import FaceganError


def select_device(name: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``; a clear error when CUDA is asked for and absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FaceganError("--device cuda was asked for, but PyTorch sees no CUDA device; use --device cpu or auto")
    try:
        return torch.device(name)
    except (RuntimeError, TypeError):
        raise FaceganError(f"unknown device {name!r}; use auto, cpu or cuda") from None


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] (N x 3 x H x W, any float dtype) to uint8 0..255, same layout.

    The one rounding rule for every consumer (scoring, PNG files, the editor), so the same
    latents give the same bytes everywhere.
    """
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def images_to_grid(images: torch.Tensor, nrow: int | None = None) -> np.ndarray:
    """Images in [-1, 1] (N x 3 x H x W) to one H x W x 3 uint8 grid, about square."""
    from torchvision.utils import make_grid

    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    grid = make_grid(images.float().cpu(), nrow=nrow, padding=2, normalize=True, value_range=(-1, 1))
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def error_text(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def torch_load_failure(path: str | Path, exc: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in words a user can act on."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        size = None
    if size == 0:
        return "the file is empty"
    try:
        with path.open("rb") as handle:
            start = handle.read(4)
    except OSError as error:
        return f"it cannot be read ({error_text(error)})"
    refused = isinstance(exc, pickle.UnpicklingError) and "weights_only" in str(exc)
    if refused and (start.startswith(b"\x80") or start.startswith(b"PK")):  # a pickle, bare or zipped by torch
        return "it holds Python objects besides tensors and plain data, which are refused (loading them could run code)"
    if start != b"PK\x03\x04":  # torch.save writes a zip archive
        return "it is not a PyTorch file"
    if not zipfile.is_zipfile(path):
        return "it is truncated (a PyTorch file cut short)"
    return f"it is damaged ({error_text(exc)})"
