"""The one checkpoint format, for generator checkpoints and for resume states.

A checkpoint is a ``torch.save`` of plain data (dicts, lists, numbers, strings, tensors)::

    {"format": "facegan-checkpoint", "version": 1, "kind": "generator" | "resume",
     "epoch": int, "network": NetworkConfig as dict, "config": resolved Config as dict,
     "dataset": {"digest": ..., "source": ..., ...}, "generator": state_dict,
     # resume only: "discriminator", "optimizer_g", "optimizer_d", "rng", "schedule"}

It is written atomically (temp file, fsync, rename: a crash never leaves half a file under the
real name) and read with ``torch.load(weights_only=True)``, which refuses to run code hidden in
a pickle. The network config travels with the weights, so a generator rebuilds from the file
alone.
"""

from __future__ import annotations

from pathlib import Path

import torch

from facegan.common import atomic_write, error_text, saved_program, torch_load_failure
from facegan.errors import FaceganError
from facegan.models import Generator, NetworkConfig, build_generator

FORMAT = "facegan-checkpoint"
VERSION = 1
GENERATOR_FILE = "generator.pt"  # file name inside an MLflow LoggedModel's artifacts


def atomic_torch_save(obj, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``
    (:func:`facegan.common.atomic_write`)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def save_checkpoint(payload: dict, path: str | Path) -> Path:
    """Write ``payload`` (plus format and version) to ``path`` atomically."""
    return atomic_torch_save({"format": FORMAT, "version": VERSION, **payload}, path)


def load_checkpoint(path: str | Path, *, kind: str | None = None, name: str | None = None) -> dict:
    """Read a checkpoint safely; a missing, damaged or foreign file is a :class:`FaceganError`.

    ``name`` is what messages call the file (e.g. ``checkpoint generator-epoch-0030 of run 1a2b``),
    for files a user never saw under their own path (downloads into a scratch folder).
    """
    path = Path(path)
    if path.is_dir():
        path = path / GENERATOR_FILE
    name = name or str(path)
    if not path.is_file():
        raise FaceganError(f"checkpoint not found: {name}")
    program = saved_program(path)  # before torch.load, which warns about a TorchScript file, then fails
    if program is not None:
        raise FaceganError(f"{name} is not a facegan checkpoint: it is {program}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise FaceganError(f"{name} is not a readable facegan checkpoint: {torch_load_failure(path, exc)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise FaceganError(f"{name} is not a facegan checkpoint (no facegan format marker)")
    if payload.get("version") != VERSION:
        raise FaceganError(f"{name} has checkpoint version {payload.get('version')}; this facegan reads {VERSION}")
    if kind is not None and payload.get("kind") != kind:
        raise FaceganError(f"{name} is a {payload.get('kind')} checkpoint, expected a {kind} checkpoint")
    return payload


def generator_from_checkpoint(payload: dict, *, source: str = "checkpoint") -> Generator:
    """Rebuild the generator a checkpoint describes and load its weights (eval mode, CPU)."""
    try:
        network = NetworkConfig(**payload["network"]).validate()
        state = payload["generator"]
    except (KeyError, TypeError) as exc:
        raise FaceganError(f"{source} lacks the generator's network description ({exc})") from None
    generator = build_generator(network)
    try:
        generator.load_state_dict(state)
    except RuntimeError as exc:
        raise FaceganError(f"{source} does not match its declared architecture {network}: {error_text(exc)}") from None
    return generator.eval()


def load_generator(path: str | Path, *, name: str | None = None) -> tuple[Generator, dict]:
    """Load a generator (eval mode, CPU) from a checkpoint file or a LoggedModel artifact folder."""
    payload = load_checkpoint(path, name=name)
    return generator_from_checkpoint(payload, source=name or str(path)), payload
