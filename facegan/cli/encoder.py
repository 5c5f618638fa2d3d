"""``facegan encoder``: learn a feature space from the real images, offline."""

from __future__ import annotations

import click

from facegan.cli.common import MIN_PREPARE_SIZE, SEED, check_synthetic_size, echo, friendly_errors


@click.command()
@click.option("--data", default="synthetic", show_default=True,
              help="Real images: `synthetic`, a file from `facegan prepare`, or an image folder.")
@click.option("--num-images", type=click.IntRange(min=2), default=2000, show_default=True,
              help="Images used (as `facegan train --num-images`).")
@click.option("--image-size", type=click.IntRange(min=MIN_PREPARE_SIZE), default=80, show_default=True,
              help="Size the data is loaded at, as the run's; the encoder itself sees 32 x 32.")
@click.option("--data-seed", type=SEED, default=0, show_default=True, help="Seed of the built-in synthetic faces.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="File to write, e.g. encoder.pt2: a torch.export program (with its input size as the extra file "
                   "input_size), for --features export:OUT; a name ending in .pt writes TorchScript (deprecated by "
                   "PyTorch) for --features torchscript:OUT.")
# 60 is EncoderSettings.epochs (tests check they agree); not imported here, to keep torch out of --help.
@click.option("--epochs", type=click.IntRange(min=1), default=60, show_default=True, help="Training epochs.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the encoder's training.")
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@friendly_errors
def encoder(data, num_images, image_size, data_seed, out, epochs, seed, force, quiet):
    """Learn a feature space from real images, offline, for `facegan evaluate`.

    Trains a small CNN self-supervised (SimCLR: two random views of each image, cropped,
    shifted, mirrored and slightly colour-jittered, must match) on the real images and writes
    it as a torch.export program. It needs no download and, unlike `random`, learns what tells
    these faces apart. Use it with `facegan evaluate --features export:OUT` (`torchscript:OUT`
    for a .pt file); train it once per dataset and keep the file, since scores from two encoders
    are not comparable. About 4 minutes for 2000 images on 2 CPU cores.
    """
    check_synthetic_size(data, image_size, "--image-size")
    import time
    from pathlib import Path

    from evaluation.encoder import EncoderSettings, encoder_format, save_encoder, train_encoder
    from facegan.data import load_data
    from facegan.errors import FaceganError

    if Path(out).exists() and not force:
        raise FaceganError(f"{out} exists; pass --force to replace it")
    dataset = load_data(data, num_images=num_images, image_size=image_size, seed=data_seed, progress=not quiet)
    started = time.perf_counter()
    model = train_encoder(dataset.images, EncoderSettings(epochs=epochs, seed=seed), progress=not quiet)
    save_encoder(model, out)
    echo(f"trained on {dataset.images.shape[0]} images in {time.perf_counter() - started:.0f} s; "
         f"use: facegan evaluate --features {encoder_format(out)}:{out}")
    click.echo(f"encoder: {out}")
