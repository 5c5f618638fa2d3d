"""Image folders to datasets, with the tutorial's policy (LFW layout: one folder per person).

:func:`prepare_folder` keeps at most ``per_identity`` images per folder, shuffles them with
``seed``, keeps the first ``limit``, crops the middle ``crop`` fraction and resizes to
``image_size``. Every image mode becomes RGB, EXIF orientation is honoured, and unreadable files
are skipped and listed. ``facegan evaluate --samples`` reads its sample folders with it too, with
no per-person limit and no crop.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from facegan.common import error_text
from facegan.dataset import DEFAULT_IMAGE_SIZE, Dataset, check_int, make_manifest
from facegan.errors import FaceganError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# The tutorial's policy for LFW.
DEFAULT_PER_IDENTITY = 2
DEFAULT_LIMIT = 2000
DEFAULT_CROP = 0.5
MIN_PREPARE_SIZE = 8

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
    holdout: int = 0,
) -> Dataset:
    """Make a dataset from a folder of photos with the tutorial's policy.

    1. Find every image at any depth (``IMAGE_EXTENSIONS``, any case), in sorted path order.
    2. A person is an image's parent folder (LFW layout); keep the first ``per_identity`` images
       of each folder. Images lying directly in ``source`` count as one person too.
    3. Shuffle those with ``seed``; decode in that order until ``limit`` images are kept. A file
       that cannot be read is skipped, listed in the manifest, and the next one takes its place.
    4. Keep the middle ``crop`` fraction of width and height (0.5: from 25% to 75%), resize to
       ``image_size`` x ``image_size`` (stretching non-square crops, as the tutorial does), after
       applying the EXIF orientation and converting any mode to RGB (transparency over white).
    5. With ``holdout``, keep that many more images as a held-out split, taken in the same
       shuffled order after the training images and only from people none of whose images are
       in training: novel faces, the chance level against which evaluation tells copying. The
       training images are the same with or without a held-out split.

    Args:
        source: the folder.
        image_size: output side in pixels, at least 8.
        per_identity: most images per person folder, at least 1.
        limit: most images in total, at least 1.
        crop: kept fraction of width and height, in (0, 1].
        seed: shuffling seed; the same folder and arguments give the same bytes.
        progress: show a progress bar and a summary line on stderr.
        holdout: how many held-out images to keep besides (0: none).

    Raises:
        FaceganError: bad arguments, a missing folder, or no readable image in it.
    """
    folder = Path(source)
    image_size = check_int("image size", image_size, MIN_PREPARE_SIZE)
    per_identity = check_int("images per identity", per_identity, 1)
    limit = check_int("image limit", limit, 1)
    seed = check_int("seed", seed, 0)
    holdout = check_int("held-out images", holdout, 0)
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
    held, held_used = None, []
    if holdout:
        tried = set(used) | {entry["path"] for entry in skipped}
        people = {relative.rpartition("/")[0] for relative in used}
        rest = [c for c in candidates if c not in tried and c.rpartition("/")[0] not in people]
        held_arrays, held_used, held_skipped = _decode_until(folder, rest, holdout, image_size, crop, False)
        skipped += held_skipped
        if len(held_arrays) < holdout:
            print(f"warning: only {len(held_arrays)} held-out images from people not in training "
                  f"(asked for {holdout})", file=sys.stderr)
        if held_arrays:
            held = torch.from_numpy(np.stack(held_arrays).transpose(0, 3, 1, 2).copy())
    manifest = make_manifest(
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
        **({"holdout": {"num_images": len(held_used), "source_files": held_used}} if holdout else {}),
    )
    return Dataset(images=images, manifest=manifest, holdout=held)


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
        return error_text(error, with_type=True)


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
