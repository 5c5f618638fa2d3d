"""How large the evidence page is (issue 26: "small enough to email"), at the tutorial's 80 px too.

Builds the page of a planted run at each image size: 8 checkpoints of fresh built-in faces, one
that hands back training faces (half its samples), then a collapse to 4 faces repeated, so the
page shows every section (grids of the chosen, onset, copying-onset and last checkpoints, the
near-identical groups, the copies beside their training twins). Scores in the ``random`` space,
``--samples`` per checkpoint, against ``--real`` built-in training faces. Prints one line per size:
the page's bytes, its embedded images' bytes and count.

Usage (from the repository root)::

    python -m experiments.page_size [--sizes 32 64 80] [--samples 500] [--real 2000]
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile

import torch

from evaluation.engine import RealImages, Scorer, evaluate
from evaluation.features import get_extractor
from evaluation.report import evaluation_page
from evaluation.sources import ImagesCheckpoint
from facegan.synthetic import synthetic_faces

from experiments import provenance


def planted_page(size: int, samples: int, num_real: int) -> str:
    """The evidence page of the planted run at ``size`` px (module docstring)."""
    real = synthetic_faces(num_real, size, seed=0).images
    checkpoints = [ImagesCheckpoint(10 * e, synthetic_faces(samples, size, seed=100 + e).images) for e in range(1, 6)]
    half = samples // 2
    checkpoints.append(ImagesCheckpoint(60, torch.cat([real[:half], synthetic_faces(samples - half, size, seed=150).images])))
    few = synthetic_faces(4, size, seed=160).images
    checkpoints += [ImagesCheckpoint(e, few.repeat(samples // 4 + 1, 1, 1, 1)[:samples]) for e in (70, 80)]
    scorer = Scorer(get_extractor("random"), RealImages(real, f"page-size-{size}-{num_real}"), samples)
    return evaluation_page(evaluate(checkpoints, scorer), checkpoints, scorer, title=f"planted, {size} px")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 80])
    parser.add_argument("--samples", type=int, default=500, help="samples per checkpoint")
    parser.add_argument("--real", type=int, default=2000, help="built-in training faces")
    args = parser.parse_args(argv)
    provenance.announce(__spec__.name, argv)
    os.environ.setdefault("FACEGAN_CACHE_DIR", tempfile.mkdtemp(prefix="facegan-page-size-"))
    rows = []
    for size in args.sizes:
        text = planted_page(size, args.samples, args.real)
        images = re.findall(r'src="data:image/png;base64,([^"]*)"', text)
        row = {"size": size, "page_kb": round(len(text.encode()) / 1024), "images": len(images),
               "images_kb": round(sum(len(i) for i in images) / 1024)}
        rows.append(row)
        print(f"{size} px: page {row['page_kb']} KB, {row['images']} embedded PNGs ({row['images_kb']} KB of base64)",
              flush=True)
    return rows


if __name__ == "__main__":
    main()
