"""Training data: image-folder preparation, the built-in synthetic faces, dataset file I/O.

A :class:`Dataset` is the whole training set as one uint8 tensor (N x 3 x S x S) plus a JSON-able
manifest saying where it came from. Training loads it once and converts it in one go
(:meth:`Dataset.as_float`); nothing is re-read per batch.

Two sources make a dataset:

* :func:`prepare_folder` applies the seed's policy to a folder of photos (LFW layout: one folder
  per person): at most ``per_identity`` images per folder, shuffled with ``seed``, the first
  ``limit`` kept, a centre crop keeping the middle ``crop`` fraction, resized to ``image_size``.
* :func:`synthetic_faces` draws cartoon faces from discrete attributes (skin, hair, mouth,
  glasses) with continuous variation, so everything works offline; each image's attributes are
  kept as labels, the ground truth for counting modes.

:func:`save_dataset` / :func:`load_dataset` write and read one file, and :func:`load_data` is what
training calls with whatever ``--data`` named.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from facegan import __version__
from facegan.checkpoint import atomic_torch_save
from facegan.errors import FaceganError

FORMAT = "facegan-dataset"
FORMAT_VERSION = 1

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# The seed's policy for LFW, and the size of the synthetic set that stands in for it.
DEFAULT_IMAGE_SIZE = 80
DEFAULT_PER_IDENTITY = 2
DEFAULT_LIMIT = 2000
DEFAULT_CROP = 0.5
DEFAULT_SYNTHETIC_IMAGES = 2000

MIN_PREPARE_SIZE = 8
MIN_SYNTHETIC_SIZE = 16


@dataclass(eq=False)  # compared by identity: comparing tensors field by field is ambiguous
class Dataset:
    """A whole image dataset in memory.

    Attributes:
        images: uint8 tensor N x 3 x S x S, contiguous, on the CPU.
        manifest: JSON-able description: ``source``, ``parameters``, ``source_files``,
            ``skipped_files``, ``num_images``, ``image_size``, ``digest`` and more.
        labels: for synthetic faces, attribute name -> int array of shape (N,) indexing
            ``SYNTHETIC_ATTRIBUTES[name]``; ``None`` for photos.
    """

    images: torch.Tensor
    manifest: dict
    labels: dict[str, np.ndarray] | None = None

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


def _make_manifest(images: torch.Tensor, source: str, parameters: dict, **extra) -> dict:
    return {
        "facegan_version": __version__,
        "source": source,
        "parameters": parameters,
        "num_images": int(images.shape[0]),
        "image_size": int(images.shape[-1]),
        "digest": tensor_digest(images),
        **extra,
    }


def _check_int(name: str, value, minimum: int) -> int:
    # bool is an int in Python; `--size True` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise FaceganError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# Synthetic faces
# --------------------------------------------------------------------------------------------

# Discrete attributes; every combination is a mode. Colours were chosen so that every hair
# colour stands out against every skin tone (the fringe and eyebrows sit on skin), which keeps
# each attribute recognisable at 32 x 32.
SYNTHETIC_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "skin": ("light", "tan", "brown", "dark"),
    "hair": ("black", "blonde", "red", "white"),
    "mouth": ("smile", "neutral", "open"),
    "glasses": ("none", "glasses"),
}

_SKIN_RGB = np.array([(246, 212, 180), (216, 162, 112), (158, 104, 64), (96, 60, 40)], np.float32)
_HAIR_RGB = np.array([(34, 30, 34), (236, 198, 88), (196, 70, 26), (236, 236, 240)], np.float32)
_OUTLINE_RGB = np.array((45, 30, 28), np.float32)
_EYE_WHITE_RGB = np.array((250, 250, 250), np.float32)
_PUPIL_RGB = np.array((35, 28, 30), np.float32)
_LIP_RGB = np.array((120, 28, 40), np.float32)
_MOUTH_OPEN_RGB = np.array((80, 14, 24), np.float32)
_TEETH_RGB = np.array((245, 245, 240), np.float32)
_FRAME_RGB = np.array((22, 22, 28), np.float32)
_LENS_RGB = np.array((90, 120, 150), np.float32)

# Face geometry in face units: the face ellipse has half-width _FACE_A and half-height _FACE_B;
# v grows downwards, like image rows.
_FACE_A, _FACE_B = 0.74, 0.94
_EYE_U, _EYE_V = 0.30, -0.06
_LENS_RADIUS = 0.19
_MOUTH_V = 0.50

# Pixels per vectorised step (16 images at 80 x 80): keeps the float32 work arrays in cache,
# which measured faster than whole-batch arrays.
_RENDER_PIXELS = 16 * 80 * 80


def attribute_combination_index(labels: dict[str, np.ndarray]) -> np.ndarray:
    """Mode id of each image: its attribute combination as one int in [0, number of combinations).

    Mixed-radix number over ``SYNTHETIC_ATTRIBUTES`` in its order (the first attribute is the
    most significant digit).
    """
    missing = [name for name in SYNTHETIC_ATTRIBUTES if name not in labels]
    if missing:
        raise FaceganError(f"labels lack the attribute(s) {', '.join(missing)}")
    digits = [np.asarray(labels[name], dtype=np.int64) for name in SYNTHETIC_ATTRIBUTES]
    if len({digit.shape for digit in digits}) != 1 or digits[0].ndim != 1:
        raise FaceganError("every attribute needs a 1-D array of labels, all of the same length")
    index = np.zeros_like(digits[0])
    for digit, (name, values) in zip(digits, SYNTHETIC_ATTRIBUTES.items()):
        if digit.size and (digit.min() < 0 or digit.max() >= len(values)):
            raise FaceganError(f"attribute {name!r} labels must lie in [0, {len(values)})")
        index = index * len(values) + digit
    return index


def num_attribute_combinations() -> int:
    """How many distinct attribute combinations (modes) the synthetic faces have."""
    return math.prod(len(values) for values in SYNTHETIC_ATTRIBUTES.values())


def synthetic_faces(
    num_images: int, image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0
) -> Dataset:
    """Render ``num_images`` cartoon faces with uniformly drawn attributes, determined by ``seed``.

    Args:
        num_images: how many faces.
        image_size: side in pixels, at least 16.
        seed: the same seed gives the same bytes.

    Returns:
        A :class:`Dataset` whose ``labels`` hold each image's attributes.

    Example:
        >>> data = synthetic_faces(8, image_size=32, seed=1)
        >>> data.images.shape, data.labels["glasses"].shape
        (torch.Size([8, 3, 32, 32]), (8,))
    """
    num_images = _check_int("number of images", num_images, 1)
    image_size = _check_int("synthetic image size", image_size, MIN_SYNTHETIC_SIZE)
    seed = _check_int("seed", seed, 0)
    rng = np.random.default_rng(seed)
    labels = {
        name: rng.integers(0, len(values), size=num_images)
        for name, values in SYNTHETIC_ATTRIBUTES.items()
    }
    images = torch.from_numpy(render_faces(labels, image_size, rng))
    manifest = _make_manifest(
        images,
        source="synthetic",
        parameters={"num_images": num_images, "image_size": image_size, "seed": seed},
        attributes={name: list(values) for name, values in SYNTHETIC_ATTRIBUTES.items()},
        source_files=[],
        skipped_files=[],
    )
    return Dataset(images=images, manifest=manifest, labels=labels)


def render_faces(
    attributes: dict[str, np.ndarray], image_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Render one face per row of ``attributes``, with continuous variation drawn from ``rng``.

    Args:
        attributes: attribute name -> int array (N,) of indices into ``SYNTHETIC_ATTRIBUTES``;
            every attribute must be given.
        image_size: side in pixels, at least 16.
        rng: source of the continuous variation (position, scale, tilt, background, hair
            length, clothes, gaze, small colour jitter).

    Returns:
        uint8 array N x 3 x S x S.
    """
    image_size = _check_int("synthetic image size", image_size, MIN_SYNTHETIC_SIZE)
    attribute_combination_index(attributes)  # validates names, shapes and ranges
    attributes = {name: np.asarray(attributes[name], np.int64) for name in SYNTHETIC_ATTRIBUTES}
    num_images = len(next(iter(attributes.values())))
    # All random draws happen here, for the whole batch, so the result does not depend on the
    # chunk size used below.
    style = _draw_style(attributes, num_images, rng)
    out = np.empty((num_images, 3, image_size, image_size), dtype=np.uint8)
    chunk = max(1, _RENDER_PIXELS // image_size**2)
    for start in range(0, num_images, chunk):
        part = slice(start, start + chunk)
        canvas = _paint_faces({key: value[part] for key, value in style.items()}, image_size)
        np.clip(canvas, 0.0, 255.0, out=canvas)
        out[part] = np.rint(canvas)
    return out


def _draw_style(attributes: dict[str, np.ndarray], n: int, rng: np.random.Generator) -> dict:
    """Per-image parameters: the discrete attributes plus every continuous variation."""

    def jitter(base: np.ndarray, amount: float) -> np.ndarray:
        return (base + rng.uniform(-amount, amount, size=base.shape)).astype(np.float32)

    def uniform(low: float, high: float, shape=()) -> np.ndarray:
        return rng.uniform(low, high, size=(n, *shape)).astype(np.float32)

    # Backgrounds: a linear gradient in a random direction between two greyish colours with a
    # moderate tint, so that they never outshine the face.
    grey = uniform(50, 210, (1,))
    background = np.clip(grey + uniform(-45, 45, (3,)), 0, 255)
    angle = uniform(0, 2 * np.pi)
    return {
        "mouth": attributes["mouth"],
        "glasses": attributes["glasses"].astype(bool),
        # small colour jitter only: skin tones must stay apart from each other
        "skin": jitter(_SKIN_RGB[attributes["skin"]], 6),
        "hair": jitter(_HAIR_RGB[attributes["hair"]], 8),
        "background_a": background,
        "background_b": np.clip(background + uniform(-50, 50, (3,)), 0, 255),
        "background_dir": np.stack([np.cos(angle), np.sin(angle)], axis=1),
        "shirt": uniform(20, 235, (3,)),
        "centre": np.stack([uniform(0.44, 0.56), uniform(0.5, 0.58)], axis=1),
        "scale": uniform(0.32, 0.37),  # face half-height per image width
        "tilt": uniform(-0.25, 0.25),  # radians, about +-14 degrees
        "hair_length": uniform(-0.1, 0.8),  # how far down the sides the hair falls (face units)
        "fringe": uniform(-0.5, -0.3),  # hairline height at the centre of the forehead
        "parting": uniform(-0.25, 0.25),  # slope of the hairline: a side parting
        "gaze": uniform(-0.035, 0.035, (2,)),
        "brow_raise": uniform(-0.03, 0.05),
    }


def _coverage(distance: np.ndarray, pixel: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a shape from its signed distance (negative inside).

    A pixel whose centre lies on the edge is half covered; the ramp is one pixel wide. In place:
    ``distance`` is consumed.
    """
    distance /= pixel
    np.subtract(0.5, distance, out=distance)
    return np.clip(distance, 0.0, 1.0, out=distance)


def _paint(canvas: np.ndarray, coverage: np.ndarray, colour: np.ndarray, opacity: float = 1.0):
    """Blend ``colour`` (3,) or (n, 3) over ``canvas`` (n, 3, H, W) where ``coverage`` (n, H, W)."""
    colour = np.asarray(colour, dtype=np.float32)
    colour = colour[..., None, None] if colour.ndim == 2 else colour[None, :, None, None]
    if opacity != 1.0:
        coverage *= np.float32(opacity)
    # canvas += coverage * (colour - canvas), without allocating a canvas-sized temporary twice
    step = np.subtract(colour, canvas)
    step *= coverage[:, None]
    canvas += step


def _ellipse(u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse with half-axes ``a``, ``b``."""
    return (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1.0) * min(a, b)


def _segment(u: np.ndarray, v: np.ndarray, half_length: float, radius: float) -> np.ndarray:
    """Signed distance to a horizontal capsule centred at the origin."""
    along = np.maximum(np.abs(u) - half_length, 0.0)
    return np.sqrt(along**2 + v**2) - radius


def _paint_faces(style: dict, size: int) -> np.ndarray:
    """Paint a chunk of faces back to front; returns float32 n x 3 x S x S in [0, 255]."""
    n = style["scale"].shape[0]
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size  # pixel centres in [0, 1]
    x, y = grid[None, None, :], grid[None, :, None]

    def per_image(values: np.ndarray) -> np.ndarray:
        return values.reshape(n, 1, 1)

    # Background gradient along a random direction.
    direction = style["background_dir"]
    t = (x - 0.5) * per_image(direction[:, 0]) + (y - 0.5) * per_image(direction[:, 1]) + 0.5
    t = np.clip(t, 0.0, 1.0)[:, None]
    a = style["background_a"][:, :, None, None]
    canvas = a + t * (style["background_b"][:, :, None, None] - a)

    # Face coordinates (u right, v down, 1 unit = face half-height), rotated by the tilt.
    scale, tilt = style["scale"], style["tilt"]
    dx = (x - per_image(style["centre"][:, 0])) / per_image(scale)
    dy = (y - per_image(style["centre"][:, 1])) / per_image(scale)
    cos, sin = per_image(np.cos(tilt)), per_image(np.sin(tilt))
    u = cos * dx + sin * dy
    v = cos * dy - sin * dx
    au = np.abs(u)  # eyes, ears, brows and lenses are mirror images: one shape for both sides
    pixel = per_image(1.0 / (size * scale))  # one pixel in face units
    skin, hair = style["skin"], style["hair"]

    def paint(distance, colour):
        _paint(canvas, _coverage(distance, pixel), colour)

    # Hair behind the head, falling to a random length down the sides.
    hair_back = _ellipse(u, v + 0.1, _FACE_A + 0.16, _FACE_B + 0.1)
    paint(np.maximum(hair_back, v - per_image(style["hair_length"])), hair)

    # Shoulders in a random shirt colour, then the neck.
    paint(_ellipse(u, v - 1.85, 1.35, 0.75), style["shirt"])
    paint(np.maximum(au - 0.3, 0.6 - v), skin * 0.82)

    # Ears, the face outline, the face.
    paint(_ellipse(au - _FACE_A + 0.02, v - 0.02, 0.12, 0.2), skin * 0.9)
    face = _ellipse(u, v, _FACE_A, _FACE_B)
    paint(face - 0.05, _OUTLINE_RGB)
    paint(face, skin)

    # Fringe: the top of a slightly larger head ellipse, above a curved, possibly slanted
    # hairline; with the eyebrows it puts the hair colour on the skin.
    hairline = per_image(style["fringe"]) + 0.22 * u**2 + per_image(style["parting"]) * u
    paint(np.maximum(_ellipse(u, v + 0.04, _FACE_A + 0.05, _FACE_B + 0.07), v - hairline), hair)
    brow_v = v - (_EYE_V - 0.2) + per_image(style["brow_raise"])
    paint(_segment(au - _EYE_U, brow_v + 0.06 * (au - _EYE_U), 0.1, 0.04), hair)

    # Eyes: whites, then pupils looking the same way.
    eye_u, eye_v = au - _EYE_U, v - _EYE_V
    paint(_ellipse(eye_u, eye_v, 0.14, 0.095), _EYE_WHITE_RGB)
    gaze = style["gaze"]
    pupil_u = u - np.sign(u) * _EYE_U - per_image(gaze[:, 0])
    paint(np.sqrt(pupil_u**2 + (eye_v - per_image(gaze[:, 1])) ** 2) - 0.065, _PUPIL_RGB)

    # Nose: a small shadow.
    paint(_ellipse(u, v - 0.2, 0.07, 0.05), skin * 0.78)

    _paint_mouths(canvas, style["mouth"], u, v, pixel)
    _paint_glasses(canvas, style["glasses"], au, eye_u, eye_v, pixel)
    return canvas


def _paint_mouths(canvas, mouth, u, v, pixel):
    """Paint each mouth kind only on the images that have it."""
    kinds = SYNTHETIC_ATTRIBUTES["mouth"]
    for kind_index, kind in enumerate(kinds):
        rows = np.flatnonzero(mouth == kind_index)
        if rows.size == 0:
            continue
        mu, mv, px = u[rows], v[rows] - _MOUTH_V, pixel[rows]
        part = canvas[rows]
        if kind == "smile":
            # A wide grin: the lower half of an ellipse, teeth along its flat top.
            grin = np.maximum(_ellipse(mu, mv + 0.06, 0.33, 0.24), -0.06 - mv)
            _paint(part, _coverage(grin, px), _MOUTH_OPEN_RGB)
            teeth = np.maximum(_ellipse(mu, mv + 0.06, 0.27, 0.2), -0.06 - mv)
            _paint(part, _coverage(np.maximum(teeth, mv - 0.02), px), _TEETH_RGB)
        elif kind == "neutral":
            _paint(part, _coverage(_segment(mu, mv, 0.15, 0.045), px), _LIP_RGB)
        elif kind == "open":
            # Surprise: a tall, narrow O.
            _paint(part, _coverage(_ellipse(mu, mv, 0.12, 0.17), px), _MOUTH_OPEN_RGB)
        else:  # a kind added to SYNTHETIC_ATTRIBUTES must not silently lack a drawing
            raise AssertionError(f"no drawing for mouth {kind!r}")
        canvas[rows] = part


def _paint_glasses(canvas, glasses, au, eye_u, eye_v, pixel):
    """Tinted lenses, round frames, a bridge and the temples, on the images with glasses."""
    rows = np.flatnonzero(glasses)
    if rows.size == 0:
        return
    au, eye_v, px, part = au[rows], eye_v[rows], pixel[rows], canvas[rows]
    lens = np.sqrt(eye_u[rows] ** 2 + eye_v**2) - _LENS_RADIUS
    _paint(part, _coverage(lens.copy(), px), _LENS_RGB, opacity=0.35)
    bridge = _segment(au, eye_v, _EYE_U - _LENS_RADIUS + 0.01, 0.03)
    # the temples run from the outer rims to the edge of the face
    rim = _EYE_U + _LENS_RADIUS
    temple = _segment(au - (rim + _FACE_A) / 2, eye_v, (_FACE_A - rim) / 2, 0.025)
    frame = np.minimum(np.minimum(np.abs(lens) - 0.04, bridge), temple)
    _paint(part, _coverage(frame, px), _FRAME_RGB)
    canvas[rows] = part


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------

# Pillow releases the GIL while decoding and resizing, so threads decode in parallel without
# the start-up and pickling costs of processes.
_DECODE_THREADS = min(4, os.cpu_count() or 1)


def prepare_folder(
    source: str | Path,
    *,
    image_size: int = DEFAULT_IMAGE_SIZE,
    per_identity: int = DEFAULT_PER_IDENTITY,
    limit: int = DEFAULT_LIMIT,
    crop: float = DEFAULT_CROP,
    seed: int = 0,
    progress: bool = True,
) -> Dataset:
    """Make a dataset from a folder of photos with the seed's policy.

    1. Find every image at any depth (``IMAGE_EXTENSIONS``, any case), in sorted path order.
    2. A person is an image's parent folder (LFW layout); keep the first ``per_identity`` images
       of each folder. Images lying directly in ``source`` count as one person too.
    3. Shuffle those with ``seed``; decode in that order until ``limit`` images are kept. A file
       that cannot be read is skipped, listed in the manifest, and the next one takes its place.
    4. Keep the middle ``crop`` fraction of width and height (0.5: from 25% to 75%), resize to
       ``image_size`` x ``image_size`` (stretching non-square crops, as the seed does), after
       applying the EXIF orientation and converting any mode to RGB (transparency over white).

    Args:
        source: the folder.
        image_size: output side in pixels, at least 8.
        per_identity: most images per person folder, at least 1.
        limit: most images in total, at least 1.
        crop: kept fraction of width and height, in (0, 1].
        seed: shuffling seed; the same folder and arguments give the same bytes.
        progress: show a progress bar and a summary line on stderr.

    Raises:
        FaceganError: bad arguments, a missing folder, or no readable image in it.
    """
    folder = Path(source)
    image_size = _check_int("image size", image_size, MIN_PREPARE_SIZE)
    per_identity = _check_int("images per identity", per_identity, 1)
    limit = _check_int("image limit", limit, 1)
    seed = _check_int("seed", seed, 0)
    if isinstance(crop, bool) or not isinstance(crop, numbers.Real) or not 0 < crop <= 1:
        raise FaceganError(f"crop must be a fraction in (0, 1], got {crop!r}")
    if not folder.exists():
        raise FaceganError(f"image folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise FaceganError(f"{str(folder)!r} is not a folder of images")

    found = _find_images(folder)
    if not found:
        raise FaceganError(
            f"no images found under {str(folder)!r} (looked for {', '.join(IMAGE_EXTENSIONS)}, "
            "any case, at any depth)"
        )
    by_identity: dict[str, list[str]] = defaultdict(list)
    for relative in found:
        by_identity[relative.rpartition("/")[0]].append(relative)
    picked = [path for paths in by_identity.values() for path in paths[:per_identity]]
    candidates = [picked[i] for i in np.random.default_rng(seed).permutation(len(picked))]
    if progress:
        print(
            f"{len(found)} images in {len(by_identity)} folders under {folder}; "
            f"{len(picked)} with at most {per_identity} per folder; keeping up to {limit}",
            file=sys.stderr,
        )

    arrays, used, skipped = _decode_until(folder, candidates, limit, image_size, crop, progress)
    if skipped:
        print(
            f"warning: skipped {len(skipped)} unreadable image file(s) under {folder}, e.g. "
            f"{skipped[0]['path']}: {skipped[0]['error']} (all are listed in the manifest)",
            file=sys.stderr,
        )
    if not arrays:
        raise FaceganError(
            f"none of the {len(skipped)} image files tried under {str(folder)!r} could be read, "
            f"e.g. {skipped[0]['path']}: {skipped[0]['error']}"
        )
    images = torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).copy())
    manifest = _make_manifest(
        images,
        source=str(folder.resolve()),
        parameters={
            "image_size": image_size,
            "per_identity": per_identity,
            "limit": limit,
            "crop": float(crop),
            "seed": seed,
        },
        resample="lanczos",
        num_found=len(found),
        num_identities=len(by_identity),
        num_candidates=len(picked),
        num_skipped=len(skipped),
        source_files=used,
        skipped_files=skipped,
    )
    return Dataset(images=images, manifest=manifest)


def _find_images(folder: Path) -> list[str]:
    """Relative POSIX paths of every image file below ``folder``, sorted, so order is stable."""
    found = []
    for directory, _, files in os.walk(folder):
        relative_dir = Path(directory).relative_to(folder)
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append((relative_dir / name).as_posix())
    return sorted(found)


def _decode_until(
    folder: Path, candidates: list[str], limit: int, image_size: int, crop: float, progress: bool
) -> tuple[list[np.ndarray], list[str], list[dict]]:
    """Decode candidates in order until ``limit`` images are kept or candidates run out.

    Returns the kept H x W x 3 arrays, their relative paths, and ``{"path", "error"}`` for each
    file that could not be read. Only files whose turn comes are opened.
    """
    arrays, used, skipped = [], [], []
    cursor = 0
    with (
        ThreadPoolExecutor(_DECODE_THREADS) as pool,
        tqdm(
            total=min(limit, len(candidates)),
            unit="img",
            desc="preparing",
            file=sys.stderr,
            disable=not progress,
        ) as bar,
    ):
        while len(arrays) < limit and cursor < len(candidates):
            # Exactly as many as still missing, so no file past the limit is decoded unless an
            # earlier one failed.
            batch = candidates[cursor : cursor + limit - len(arrays)]
            cursor += len(batch)
            tasks = [folder / relative for relative in batch]
            for relative, result in zip(
                batch, pool.map(lambda path: _read_image(path, image_size, crop), tasks)
            ):
                if isinstance(result, str):
                    skipped.append({"path": relative, "error": result})
                else:
                    arrays.append(result)
                    used.append(relative)
                    bar.update()
    return arrays, used, skipped


def _read_image(path: Path, image_size: int, crop: float) -> np.ndarray | str:
    """One image cropped and resized to S x S x 3 uint8, or why it could not be read."""
    try:
        with Image.open(path) as image:
            # JPEG can decode at 1/2, 1/4 or 1/8 scale almost for free; ask for no smaller than
            # the crop still needs to give image_size pixels.
            needed = math.ceil(image_size / crop)
            image.draft(None, (needed, needed))
            image = _to_rgb(ImageOps.exif_transpose(image))
            width, height = image.size
            # Crop before resizing (not resize's box=), so that no pixel outside the kept middle
            # reaches the result through the filter's support; keep at least one pixel.
            left = min(round(width * (1 - crop) / 2), (width - 1) // 2)
            top = min(round(height * (1 - crop) / 2), (height - 1) // 2)
            image = image.crop((left, top, width - left, height - top)).resize(
                (image_size, image_size), Image.Resampling.LANCZOS, reducing_gap=3.0
            )
            return np.asarray(image)
    except Exception as error:  # noqa: BLE001 - Pillow raises many types for damaged files
        return f"{type(error).__name__}: {error}".splitlines()[0]


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as RGB: 16-bit grey scaled to 8 bits, transparency composited on white."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float32)
        # convert("L") would clip 16-bit values to white; "I" and "F" above 255 hold 16-bit data
        if image.mode.startswith("I;16") or values.max() > 255:
            values = values / 257.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    if image.has_transparency_data:
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        background.alpha_composite(image.convert("RGBA"))
        image = background
    return image if image.mode == "RGB" else image.convert("RGB")


# --------------------------------------------------------------------------------------------
# Dataset files
# --------------------------------------------------------------------------------------------


def save_dataset(dataset: Dataset, path: str | Path) -> None:
    """Write ``dataset`` to one file atomically (a temporary file, then a rename).

    The file holds only tensors, dicts, lists, strings and numbers, so :func:`load_dataset` reads
    it with ``torch.load(weights_only=True)``.

    Raises:
        FaceganError: the file cannot be written.
    """
    path = Path(path)
    images = dataset.images
    if dataset.manifest.get("digest") != dataset.digest:
        raise ValueError("the manifest's digest does not match the images")
    # torch.save writes a tensor's whole storage: a slice of a larger tensor would drag it along.
    if images.untyped_storage().nbytes() != images.nbytes:
        images = images.clone()
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "images": images,
        "manifest": dataset.manifest,
        "labels": None
        if dataset.labels is None
        else {
            name: torch.as_tensor(np.asarray(values, dtype=np.int64))
            for name, values in dataset.labels.items()
        },
    }
    try:
        atomic_torch_save(payload, path)
    except OSError as error:
        raise FaceganError(f"cannot write the dataset to {str(path)!r}: {error}") from error


def load_dataset(path: str | Path) -> Dataset:
    """Read a file written by :func:`save_dataset`, safely (``weights_only=True``) and checked.

    Raises:
        FaceganError: the file is missing, damaged, not a facegan dataset, or of a newer format.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a dataset file" if path.is_dir() else "does not exist"
        raise FaceganError(f"dataset file {str(path)!r} {what}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for damaged files
        raise FaceganError(
            f"cannot read {str(path)!r} as a facegan dataset: the file is damaged or of another "
            f"kind ({type(error).__name__})"
        ) from error
    found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
    if found != FORMAT:
        raise FaceganError(
            f"{str(path)!r} is not a facegan dataset file (it holds {found!r}); "
            "make one with `facegan prepare`"
        )
    if payload.get("version") != FORMAT_VERSION:
        raise FaceganError(
            f"{str(path)!r} is a facegan dataset of format version {payload.get('version')!r}; "
            f"this facegan reads version {FORMAT_VERSION}"
        )
    labels = payload.get("labels")
    try:
        if labels is not None:
            labels = {name: values.numpy() for name, values in labels.items()}
        dataset = Dataset(payload.get("images"), payload.get("manifest"), labels)
    except (AttributeError, TypeError, ValueError) as error:
        raise FaceganError(f"{str(path)!r} is a damaged facegan dataset: {error}") from error
    if dataset.manifest.get("digest") != dataset.digest:
        raise FaceganError(
            f"{str(path)!r} is damaged: its images do not match the digest in its manifest"
        )
    return dataset


def load_data(
    source: str,
    *,
    num_images: int | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = 0,
    progress: bool = True,
) -> Dataset:
    """The dataset named by ``--data``: ``synthetic``, a dataset file, or an image folder.

    Args:
        source: ``"synthetic"`` (``num_images`` faces, default 2000, drawn with ``seed``); a file
            from ``facegan prepare`` (its first ``num_images`` images when given; its image size
            must equal ``image_size``); or an image folder (prepared on the fly with the seed's
            policy, ``num_images`` as the limit, ``seed`` for the shuffle).
        num_images: how many images; ``None`` for the source's default or all of a file.
        image_size: side in pixels the caller needs.
        seed: seed for synthetic faces or a folder's shuffle.
        progress: show progress while preparing a folder.

    Raises:
        FaceganError: a missing source, a file of another image size or with too few images.
    """
    if num_images is not None:
        num_images = _check_int("number of images", num_images, 1)
    if source == "synthetic":
        return synthetic_faces(num_images or DEFAULT_SYNTHETIC_IMAGES, image_size, seed)
    path = Path(source)
    if path.is_dir():
        return prepare_folder(
            path,
            image_size=image_size,
            limit=num_images or DEFAULT_LIMIT,
            seed=seed,
            progress=progress,
        )
    if not path.is_file():
        raise FaceganError(
            f"data source {source!r} does not exist; give 'synthetic', a file made by "
            "`facegan prepare`, or an image folder"
        )
    dataset = load_dataset(path)
    stored_size = dataset.images.shape[-1]
    if stored_size != image_size:
        raise FaceganError(
            f"{source!r} holds {stored_size}x{stored_size} images but {image_size}x{image_size} "
            f"are needed; prepare it again with --size {image_size} or use image size {stored_size}"
        )
    if num_images is None or num_images == len(dataset):
        return dataset
    if num_images > len(dataset):
        raise FaceganError(
            f"{source!r} holds {len(dataset)} images, fewer than the {num_images} asked for"
        )
    return _first_images(dataset, num_images)


def _first_images(dataset: Dataset, count: int) -> Dataset:
    """The first ``count`` images of ``dataset``, with a manifest that says so."""
    images = dataset.images[:count].clone()  # not a view: the rest can be freed
    labels = None
    if dataset.labels is not None:
        labels = {name: values[:count].copy() for name, values in dataset.labels.items()}
    original = dataset.manifest
    manifest = {
        **original,
        "num_images": count,
        "digest": tensor_digest(images),
        "source_files": original.get("source_files", [])[:count],
        "subset_of": {"digest": original.get("digest"), "num_images": len(dataset)},
    }
    return Dataset(images=images, manifest=manifest, labels=labels)
