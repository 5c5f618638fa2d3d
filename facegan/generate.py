"""Load a generator from a file or the MLflow registry, draw latents, and write faces as PNGs.

``facegan generate`` and ``facegan serve`` share :func:`load_model` and :func:`sample_latents`;
the latents are standard normal, as in training, optionally truncated by resampling: every entry
with ``|z| > T`` is drawn again from the normal distribution restricted to ``[-T, T]`` (the
"truncation trick"; faces from latents the generator rarely saw in training come out deformed).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facegan.checkpoint import GENERATOR_FILE, load_generator
from facegan.common import file_sha256, saved_program, to_uint8
from facegan.config import DEFAULT_MODEL_URI
from facegan.errors import FaceganError
from facegan.models import Generator

GRID_FILE = "grid.png"
GRID_MAX_IMAGES = 256  # a grid of every image of a large -n would be hundreds of megapixels
_OUR_FILE = re.compile(r"\d{6}\.png|grid\.png")
_RENDER_BATCH = 256
MODEL_TAKES = ("--model takes a generator checkpoint (a run's generator.pt, or the model folder holding it), "
               "models:/NAME@ALIAS, models:/m-<id>, or runs:/RUN_ID[/EPOCH]")


@dataclass
class LoadedModel:
    """A generator ready for inference, with where it came from.

    Attributes:
        generator: the network, in eval mode on the CPU.
        payload: the checkpoint's contents (``epoch``, ``network``, ``config``, ...).
        source: the ``--model`` value it was loaded from.
        digest: sha256 of the checkpoint file, which identifies the weights (cache key).
    """

    generator: Generator
    payload: dict
    source: str
    digest: str

    @property
    def description(self) -> str:
        """One line for people: source, epoch, size, latent size and loss."""
        g = self.generator
        loss = (self.payload.get("config") or {}).get("train", {}).get("loss")
        parts = [f"epoch {self.payload.get('epoch', '?')}", f"{g.image_size}x{g.image_size} px",
                 f"{g.latent_dim}-d latent"] + ([loss] if loss else [])
        return f"{self.source} ({', '.join(parts)})"


def _is_tracking_uri(spec: str) -> bool:
    return spec.startswith(("models:/", "runs:/")) or "://" in spec


def load_model(spec: str = DEFAULT_MODEL_URI, tracking_uri: str | None = None) -> LoadedModel:
    """Load the generator named by ``spec``: a checkpoint file, a LoggedModel folder, or an MLflow
    URI (``models:/NAME@ALIAS``, ``models:/m-<id>``, ``runs:/<run_id>[/<epoch>]``).

    Raises:
        FaceganError: the model does not exist, cannot be downloaded, or is not a facegan
            generator checkpoint. For the default registry name the message says how to make one.
    """
    if not _is_tracking_uri(spec):
        # Local files skip facegan.tracking: importing mlflow alone takes seconds.
        path = Path(spec)
        path = path / GENERATOR_FILE if path.is_dir() else path
        program = saved_program(path)
        if program is not None:
            raise FaceganError(f"{spec} is {program}, not a generator checkpoint; {MODEL_TAKES}")
        generator, payload = load_generator(path)
        return LoadedModel(generator, payload, spec, file_sha256(path))

    from facegan import tracking

    uri = tracking.resolve_tracking_uri(tracking_uri)
    hint = ("run `facegan evaluate` to score a training run and register its best checkpoint, "
            "or pass --model with a checkpoint file or another URI")
    sqlite_file = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else None
    if sqlite_file and not Path(sqlite_file).exists():
        # Connecting would create an empty store here as a side effect.
        raise FaceganError(f"cannot load {spec}: there is no MLflow store at {uri}; {hint}")
    with tempfile.TemporaryDirectory(prefix="facegan-model-") as tmp:
        try:
            path = tracking.resolve_model(spec, tracking_uri, tmp)
        except FaceganError as exc:
            if spec == DEFAULT_MODEL_URI:
                raise FaceganError(f"{exc}; {hint}") from None
            raise
        generator, payload = load_generator(path)
        return LoadedModel(generator, payload, spec, file_sha256(path))


def validate_truncation(truncation: float | None) -> None:
    """A truncation threshold must be a positive, finite number (or None for no truncation)."""
    if truncation is not None and not (np.isfinite(truncation) and truncation > 0):
        raise FaceganError(f"truncation must be a positive number, got {truncation}")


def sample_latents(n: int, latent_dim: int, *, seed: int, truncation: float | None = None) -> torch.Tensor:
    """``n`` standard-normal latents (n x latent_dim) from ``seed``, truncated by resampling.

    The same arguments give the same latents on every machine (torch's CPU generator).

    Example:
        >>> z = sample_latents(4, 128, seed=0, truncation=1.0)
        >>> bool(z.abs().max() <= 1.0)
        True
    """
    validate_truncation(truncation)
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(n, latent_dim, generator=rng)
    if truncation is not None:
        outside = z.abs() > truncation
        # Redrawn from the normal distribution restricted to [-T, T] by inverting its CDF: the
        # same distribution as drawing again until a value lands within T, but in one pass,
        # where redrawing would loop for ages at a tiny T.
        low = torch.special.ndtr(torch.tensor(-truncation, dtype=torch.float64))
        uniform = torch.rand(int(outside.sum()), generator=rng, dtype=torch.float64)
        redrawn = torch.special.ndtri(low + uniform * (1 - 2 * low))
        z[outside] = redrawn.clamp(-truncation, truncation).float()
    return z


@torch.inference_mode()
def render(generator: Generator, z: torch.Tensor) -> np.ndarray:
    """Images for latents ``z`` (N x latent_dim) as uint8 N x H x W x 3, in one forward pass."""
    images = generator(z.float())
    return to_uint8(images).permute(0, 2, 3, 1).numpy()


def prepare_out_dir(out: str | Path, *, force: bool = False) -> Path:
    """Create ``out``, or check that it may be written.

    A folder holding anything is refused unless ``force``; with ``force`` the numbered PNGs and
    grid a previous run wrote are removed first (so a smaller ``-n`` leaves no stale images),
    and other files are left alone.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FaceganError(f"--out {out} is a file, not a folder")
    if out.is_dir():
        present = sorted(p.name for p in out.iterdir())
        if present and not force:
            shown = ", ".join(present[:3]) + (", ..." if len(present) > 3 else "")
            raise FaceganError(f"--out {out} is not empty ({shown}); choose a new folder, "
                               "or pass --force to replace the images facegan wrote there")
        for name in present:
            if _OUR_FILE.fullmatch(name) and (out / name).is_file():
                (out / name).unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FaceganError(f"cannot create --out {out}: {exc.strerror}") from None
    return out


def generate(model: LoadedModel, n: int, out: str | Path, *, seed: int, truncation: float | None = None,
             force: bool = False) -> list[Path]:
    """Render ``n`` faces from ``model`` into ``out``; returns the paths of the numbered PNGs.

    Writes ``000000.png``, ``000001.png``, ... and ``grid.png`` with the first 256 faces (small
    faces enlarged, :func:`facegan.common.enlarge_grid`, as training's sample grids). Faces are
    rendered and written in batches, so memory does not grow with ``n``.
    """
    from facegan.common import enlarge_grid, images_to_grid

    if n < 1:
        raise FaceganError(f"-n must be at least 1, got {n}")
    validate_truncation(truncation)
    out = prepare_out_dir(out, force=force)
    z = sample_latents(n, model.generator.latent_dim, seed=seed, truncation=truncation)
    paths, grid_images = [], []
    for start in range(0, n, _RENDER_BATCH):
        images = render(model.generator, z[start:start + _RENDER_BATCH])
        for i, image in enumerate(images, start):
            paths.append(out / f"{i:06d}.png")
            Image.fromarray(image).save(paths[-1])
        grid_images += list(images[:GRID_MAX_IMAGES - len(grid_images)])
    grid = torch.from_numpy(np.stack(grid_images)).permute(0, 3, 1, 2)  # the PNGs' own bytes
    Image.fromarray(enlarge_grid(images_to_grid(grid))).save(out / GRID_FILE)
    return paths
