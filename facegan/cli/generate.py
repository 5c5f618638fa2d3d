"""``facegan generate``: write faces from a model as PNGs."""

from __future__ import annotations

import click

from facegan.cli.common import MODEL_HELP, SEED, TRACKING_URI_HELP, friendly_errors, positive_number
from facegan.config import DEFAULT_MODEL_URI


@click.command()
@click.option("--model", "model_spec", default=DEFAULT_MODEL_URI, metavar="URI|FILE", help=MODEL_HELP)
@click.option("-n", "num_images", type=click.IntRange(min=1), default=64, show_default=True, help="Number of faces.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write the PNGs into.")
@click.option("--seed", type=SEED, help="Latent seed: the same seed and model give the same images [default: random, printed].")
@click.option("--truncation", type=float, callback=positive_number, metavar="T",
              help="Redraw latent values beyond ±T (truncation trick): typical faces, less variety; e.g. 1.5.")
@click.option("--force", is_flag=True, help="Write into a non-empty --out; replaces the numbered PNGs and grid there.")
@click.option("--tracking-uri", help=TRACKING_URI_HELP)
@friendly_errors
def generate(model_spec, num_images, out, seed, truncation, force, tracking_uri):
    """Write N generated faces as 000000.png, 000001.png, ... and grid.png (the first 256) into --out.

    --out must be a new or empty folder, unless --force.
    """
    import secrets

    from facegan import generate as generating

    model = generating.load_model(model_spec, tracking_uri)
    if seed is None:
        seed = secrets.randbelow(2**31)
    paths = generating.generate(model, num_images, out, seed=seed, truncation=truncation, force=force)
    click.echo(f"wrote {len(paths)} faces and {generating.GRID_FILE} to {out} from {model.description}; "
               f"seed {seed}" + (f", truncation {truncation:g}" if truncation is not None else ""))
