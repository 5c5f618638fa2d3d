"""The built-in synthetic faces: cartoon faces from discrete attributes, offline.

:func:`synthetic_faces` draws faces from discrete attributes (skin, hair, mouth, glasses) with
continuous variation, so everything works offline; each image's attributes are kept as labels,
the ground truth for counting modes (the collapse benchmark's classifier learns from them).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from facegan.dataset import DEFAULT_IMAGE_SIZE, Dataset, check_int, make_manifest
from facegan.errors import FaceganError

DEFAULT_SYNTHETIC_IMAGES = 2000  # the size of the LFW set they stand in for
MIN_SYNTHETIC_SIZE = 16

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
    num_images = check_int("number of images", num_images, 1)
    image_size = check_int("synthetic image size", image_size, MIN_SYNTHETIC_SIZE)
    seed = check_int("seed", seed, 0)
    rng = np.random.default_rng(seed)
    labels = {
        name: rng.integers(0, len(values), size=num_images)
        for name, values in SYNTHETIC_ATTRIBUTES.items()
    }
    images = torch.from_numpy(render_faces(labels, image_size, rng))
    manifest = make_manifest(
        images,
        source="synthetic",
        parameters={"num_images": num_images, "image_size": image_size, "seed": seed},
        attributes={name: list(values) for name, values in SYNTHETIC_ATTRIBUTES.items()},
        source_files=[],
        skipped_files=[],
    )
    return Dataset(images=images, manifest=manifest, labels=labels)


# Held-out synthetic faces are drawn from seeds this far from the training draw's, so they are
# novel faces of the same distribution, never the training images themselves.
HOLDOUT_SEED_OFFSET = 1 << 20


def synthetic_holdout(num_images: int, image_size: int, seed: int) -> torch.Tensor:
    """Fresh faces of the same distribution as ``synthetic_faces(..., seed)``, for held-out comparisons."""
    return synthetic_faces(num_images, image_size, seed + HOLDOUT_SEED_OFFSET).images


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
    image_size = check_int("synthetic image size", image_size, MIN_SYNTHETIC_SIZE)
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
