"""What the trainer (``facegan``) and the scorer (``evaluation``) both need, in one small place.

Device choice, the one conversion from generator output to image bytes, sample grids (and their
enlargement for small faces), what a torch file holds, the one-line text of an error, atomic
file writes and file digests. Nothing here knows about configs, datasets, MLflow or the loop,
so ``evaluation`` can use it without reaching into the trainer.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from facegan.errors import FaceganError


def select_device(name: str | torch.device) -> torch.device:
    """The one device choice: ``auto`` (CUDA when present), ``cpu``, ``cuda`` (or any name or
    :class:`torch.device` torch knows, e.g. ``cuda:1``); a clear error when CUDA is asked for and
    absent, or the name is no device."""
    if isinstance(name, str) and name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise FaceganError(f"invalid device {str(name)!r}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FaceganError(f"--device {name} was asked for, but CUDA is not available: PyTorch sees no CUDA device; "
                           "use --device cpu or auto")
    return device


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] (N x 3 x H x W, any float dtype) to uint8 0..255, same layout.

    The one rounding rule for every consumer (scoring, PNG files, the editor), so the same
    latents give the same bytes everywhere.
    """
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def images_to_grid(images: torch.Tensor, nrow: int | None = None) -> np.ndarray:
    """Images (N x 3 x H x W: generator output in [-1, 1], or uint8 from :func:`to_uint8`) to one
    H x W x 3 uint8 grid, about square, 2 black pixels between the images."""
    from torchvision.utils import make_grid

    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    pixels = images if images.dtype == torch.uint8 else to_uint8(images)
    return make_grid(pixels.cpu(), nrow=nrow, padding=2).permute(1, 2, 0).numpy()


MIN_GRID_SIDE = 512  # pixels: a grid narrower than this is enlarged (:func:`enlarge_grid`)


def enlarge_grid(grid: np.ndarray, min_side: int = MIN_GRID_SIDE) -> np.ndarray:
    """A grid (H x W x 3 uint8, from :func:`images_to_grid`) enlarged by the smallest whole factor
    that makes it at least ``min_side`` pixels wide, each pixel repeated (nearest neighbour, so
    no new colours), or returned as it is when wide enough.

    Image viewers, and MLflow's UI, show a PNG at its own size: 16 faces of 32 px make a grid
    138 px wide, too small to see; whole-pixel enlargement shows them as they are.

    Example:
        >>> grid = np.zeros((138, 138, 3), dtype=np.uint8)
        >>> enlarge_grid(grid).shape
        (552, 552, 3)
    """
    scale = math.ceil(min_side / grid.shape[1])
    if scale <= 1:
        return grid
    return grid.repeat(scale, axis=0).repeat(scale, axis=1)


def error_text(exc: BaseException, *, with_type: bool = False) -> str:
    """The first line of an exception's message, or its type name when it has none.

    ``with_type``: prefixed by the type name (``UnidentifiedImageError: cannot identify ...``), for
    messages where the type says what went wrong (a file that could not be decoded).
    """
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    if with_type:
        return f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return line or type(exc).__name__


# What a network file is, told by its content: both formats are zip archives under one root folder.
EXPORT_PROGRAM, TORCHSCRIPT_PROGRAM = "export", "torchscript"
_PROGRAM_WORDS = {
    EXPORT_PROGRAM: "a torch.export program (a network saved with torch.export.save, such as a feature network "
                    "for `--features export:PATH` or another code's generator for `evaluate --checkpoints`)",
    TORCHSCRIPT_PROGRAM: "a TorchScript program (a network saved with torch.jit.save, such as a feature network "
                         "for `--features torchscript:PATH`)",
}


def network_file_format(path: str | Path) -> str | None:
    """:data:`EXPORT_PROGRAM` for a torch.export archive (``torch.export.save``:
    ``<root>/archive_format`` holds ``pt2``), :data:`TORCHSCRIPT_PROGRAM` for ``torch.jit.save``'s
    layout (``<root>/constants.pkl`` and ``<root>/code/``), None for anything else (a file of
    ``torch.save``, a truncated zip, no zip at all)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            top = [name.split("/", 1)[1] for name in names if name.count("/") >= 1]
            marker = next((name for name in names if name.count("/") == 1 and name.endswith("/archive_format")), None)
            if marker is not None and archive.read(marker).strip() == b"pt2":
                return EXPORT_PROGRAM
            if "constants.pkl" in top and any(name.startswith("code/") for name in top):
                return TORCHSCRIPT_PROGRAM
    except Exception:  # BadZipFile, zlib, CRC, OS errors: whatever it is, it is neither format
        return None
    return None


def saved_program(path: str | Path) -> str | None:
    """What a file holding a whole network is, in words (``a torch.export program (...)``), or
    None when it holds no program: for messages that say what a file is instead of "damaged"."""
    kind = network_file_format(path)
    return None if kind is None else _PROGRAM_WORDS[kind]


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
    program = saved_program(path)
    if program is not None:
        return f"it is {program}, not data saved with torch.save"
    refused = isinstance(exc, pickle.UnpicklingError) and "weights_only" in str(exc)
    if refused and (start.startswith(b"\x80") or start.startswith(b"PK")):  # a pickle, bare or zipped by torch
        return "it holds Python objects besides tensors and plain data, which are refused (loading them could run code)"
    if start != b"PK\x03\x04":  # torch.save writes a zip archive
        return "it is not a PyTorch file"
    if not zipfile.is_zipfile(path):
        return "it is truncated (a PyTorch file cut short)"
    return f"it is damaged ({error_text(exc)})"


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """``write(file)`` into a temporary file beside ``path``, fsync, then rename over ``path``:
    a crash leaves the old file or none, never a truncated one. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def file_sha256(path: str | Path) -> str:
    """The sha256 hex digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
