"""``facegan prepare``: an image folder (or the built-in faces) to one dataset file."""

from __future__ import annotations

import click

from facegan.cli.common import MIN_PREPARE_SIZE, SEED, check_synthetic_size, friendly_errors


@click.command()
@click.argument("source")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Dataset file to write (e.g. data/lfw80.pt).")
@click.option("--size", type=click.IntRange(min=MIN_PREPARE_SIZE), default=80, show_default=True, help="Output image size in pixels (square).")
@click.option("--per-identity", type=click.IntRange(min=1), default=2, show_default=True, help="At most this many images per person folder.")
@click.option("--limit", type=click.IntRange(min=1), default=2000, show_default=True, help="Keep the first N images after shuffling.")
@click.option("--crop", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True, help="Centre crop keeping this fraction of width and height.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Shuffle seed (and render seed for `synthetic`).")
@click.option("--holdout", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Also keep N held-out images (of people with no image in training), which `facegan evaluate` "
                   "uses to tell a generator that copies its training images from one that generates.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def prepare(source, out, size, per_identity, limit, crop, seed, holdout, quiet):
    """Turn an image folder (or `synthetic`) into one dataset file for training.

    SOURCE is a folder of images at any depth (LFW layout: one folder per person; jpg, jpeg,
    png, bmp, webp) or the word `synthetic` for the built-in procedural faces. Unreadable files
    are skipped and listed in the file's manifest.
    """
    check_synthetic_size(source, size, "--size")
    from facegan.data import prepare_dataset, save_dataset

    dataset = prepare_dataset(source, image_size=size, per_identity=per_identity, limit=limit, crop=crop, seed=seed,
                              holdout=holdout, progress=not quiet)
    save_dataset(dataset, out)
    skipped = len(dataset.manifest.get("skipped_files", []))
    held = 0 if dataset.holdout is None else dataset.holdout.shape[0]
    click.echo(f"wrote {out}: {dataset.images.shape[0]} images of {size}x{size}"
               + (f" and {held} held out" if held else "")
               + (f", {skipped} unreadable files skipped" if skipped else "")
               + f"; digest {dataset.digest[:12]}")
