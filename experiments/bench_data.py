"""Benchmark the data layer: folder preparation, synthetic faces, dataset file I/O.

Run: ``python -m experiments.bench_data [--identities 300] [--repeats 3]``

Preparation is timed on a temporary LFW-like folder: ``--identities`` person folders of 250x250
JPEGs (synthetic faces at that size), two to four per folder, so that the tutorial's policy keeps two
per person. A second folder of 1000x1000 JPEGs shows what decoding at reduced scale
(``Image.draft``) buys on large photos. Each figure is the best of ``--repeats`` runs, since
these machines are shared and only slow down.

Prints a table, then, as its last line, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from PIL import Image

import facegan.data as data
import facegan.folders as folders
import facegan.synthetic as synthetic

from experiments import provenance


def best_rate(count: int, run, repeats: int) -> float:
    """Items per second of the fastest of ``repeats`` calls of ``run``."""
    fastest = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        fastest = min(fastest, time.perf_counter() - start)
    return count / fastest


def write_lfw_like(root: Path, identities: int, size: int) -> int:
    """Person folders of ``size`` x ``size`` JPEGs, 2 to 4 each; returns how many files."""
    per_folder = [2 + person % 3 for person in range(identities)]
    # Faces are drawn at LFW's size at most and enlarged beyond: drawing 1000 px is slow.
    drawn = min(size, 250)
    faces = synthetic.synthetic_faces(sum(per_folder), image_size=drawn, seed=123).images
    pictures = iter(faces.permute(0, 2, 3, 1).numpy())
    for person, count in enumerate(per_folder):
        folder = root / f"Person_{person:04d}"
        folder.mkdir(parents=True)
        for index in range(count):
            picture = Image.fromarray(next(pictures)).resize((size, size), Image.Resampling.BICUBIC)
            picture.save(folder / f"Person_{person:04d}_{index + 1:04d}.jpg", quality=90)
    return sum(per_folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    provenance.announce(__spec__.name)
    results = {"cpu_count": os.cpu_count(), "decode_threads": folders._DECODE_THREADS}
    rows = []

    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        files = write_lfw_like(root / "lfw", args.identities, 250)
        kept = 2 * args.identities

        def prepare(folder: Path):
            return lambda: folders.prepare_folder(folder, progress=False)

        rate = best_rate(kept, prepare(root / "lfw"), args.repeats)
        results["prepare_images_per_s"] = round(rate, 1)
        rows.append((f"prepare 250px JPEG, {kept} of {files} files", rate, "images/s"))

        # One decoding thread: what the thread pool adds on this machine.
        threads, folders._DECODE_THREADS = folders._DECODE_THREADS, 1
        try:
            rate = best_rate(kept, prepare(root / "lfw"), args.repeats)
        finally:
            folders._DECODE_THREADS = threads
        results["prepare_images_per_s_1_thread"] = round(rate, 1)
        rows.append(("  the same, one decoding thread", rate, "images/s"))

        large = 50
        write_lfw_like(root / "large", large // 2, 1000)
        rate = best_rate(large, prepare(root / "large"), args.repeats)
        results["prepare_images_per_s_1000px"] = round(rate, 1)
        rows.append((f"prepare 1000px JPEG, {large} files", rate, "images/s"))

        for size, count in ((80, 2000), (32, 2000), (128, 500)):
            rate = best_rate(count, lambda: synthetic.synthetic_faces(count, size, seed=1), args.repeats)
            results[f"synthetic_images_per_s_{size}"] = round(rate, 1)
            rows.append((f"synthetic faces {size}x{size}", rate, "images/s"))

        faces = synthetic.synthetic_faces(2000, 80, seed=1)
        path = root / "faces.pt"
        seconds = 1 / best_rate(1, lambda: data.save_dataset(faces, path), args.repeats)
        results["save_2000x80_s"] = round(seconds, 3)
        rows.append(("save 2000 x 80x80 (atomic, fsync)", seconds, "s"))
        seconds = 1 / best_rate(1, lambda: data.load_dataset(path), args.repeats)
        results["load_2000x80_s"] = round(seconds, 3)
        rows.append(("load 2000 x 80x80 (digest checked)", seconds, "s"))
        seconds = 1 / best_rate(1, faces.as_float, args.repeats)
        results["as_float_2000x80_s"] = round(seconds, 3)
        rows.append(("as_float 2000 x 80x80", seconds, "s"))

    width = max(len(name) for name, _, _ in rows)
    print(f"{'measure':<{width}}  {'value':>10}  unit")
    for name, value, unit in rows:
        digits = 3 if unit == "s" else 1
        print(f"{name:<{width}}  {value:>10.{digits}f}  {unit}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
