"""Dataset files and ``--data``: write and read one file, and load whatever ``--data`` names.

:func:`save_dataset` / :func:`load_dataset` write and read one file (the dataset container is
:class:`facegan.dataset.Dataset`), and :func:`load_data` is what training calls with whatever
``--data`` named: ``synthetic`` (:mod:`facegan.synthetic`), a file, or an image folder
(:mod:`facegan.folders`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from facegan.checkpoint import atomic_torch_save
from facegan.common import torch_load_failure
from facegan.dataset import DEFAULT_IMAGE_SIZE, Dataset, check_int, tensor_digest
from facegan.errors import FaceganError
from facegan.folders import DEFAULT_LIMIT, prepare_folder
from facegan.synthetic import DEFAULT_SYNTHETIC_IMAGES, synthetic_faces, synthetic_holdout

FORMAT = "facegan-dataset"
FORMAT_VERSION = 1


def prepare_dataset(source: str, *, image_size: int, per_identity: int, limit: int, crop: float, seed: int,
                    holdout: int = 0, progress: bool = True) -> Dataset:
    """What ``facegan prepare SOURCE`` makes: an image folder with the tutorial's policy
    (:func:`facegan.folders.prepare_folder`), or ``synthetic``: ``limit`` built-in faces drawn with
    ``seed``, with ``holdout`` fresh renders of the same kind as its held-out images."""
    if source != "synthetic":
        return prepare_folder(source, image_size=image_size, per_identity=per_identity, limit=limit, crop=crop,
                              seed=seed, progress=progress, holdout=holdout)
    dataset = synthetic_faces(limit, image_size, seed)
    if not holdout:
        return dataset
    return Dataset(dataset.images, {**dataset.manifest, "holdout": {"num_images": holdout}}, dataset.labels,
                   synthetic_holdout(holdout, image_size, seed))


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
        "holdout": dataset.holdout,
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
            f"cannot read {str(path)!r} as a facegan dataset: {torch_load_failure(path, error)}"
        ) from None
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
        dataset = Dataset(payload.get("images"), payload.get("manifest"), labels, payload.get("holdout"))
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
            must equal ``image_size``); or an image folder (prepared on the fly with the tutorial's
            policy, ``num_images`` as the limit, ``seed`` for the shuffle).
        num_images: how many images; ``None`` for the source's default or all of a file.
        image_size: side in pixels the caller needs.
        seed: seed for synthetic faces or a folder's shuffle.
        progress: show progress while preparing a folder.

    Raises:
        FaceganError: a missing source, a file of another image size or with too few images.
    """
    if num_images is not None:
        num_images = check_int("number of images", num_images, 1)
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
    return Dataset(images=images, manifest=manifest, labels=labels, holdout=dataset.holdout)
