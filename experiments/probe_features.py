"""Does a feature space see the modes? Nearest-neighbour agreement on data with known modes.

For each dataset of the collapse benchmark (synthetic faces: 96 attribute combinations; stacked
digits: a digit in each colour channel, 1000 triples) it embeds 2000 real images and 1000 fresh
held-out images, and reports how often a held-out image's nearest real neighbours (k = 1, and a
majority vote of k = 10) share each attribute and the whole mode. Chance is about one over the
number of values. FID, coverage and diversity can only tell modes apart as well as the feature
space does, so this is the first thing to check about a feature space.

Feature spaces: ``random`` (facegan's random CNN) and ``encoder`` (``evaluation.encoder`` with
its default settings, trained here on the 2000 real images, as ``facegan encoder`` would).

Usage: python -m experiments.probe_features [--domains faces digits] [--features random encoder]
       [--encoder-epochs N]
Needs the ``bench`` extra (scikit-learn's bundled digits). Prints a table and, as the last line,
one JSON object with every figure; about 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from evaluation.encoder import EncoderSettings, save_encoder, train_encoder
from evaluation.features import get_extractor
from facegan.synthetic import synthetic_faces

from experiments import provenance
from experiments.collapse import ground_truth as gt

NUM_REAL, NUM_HELD_OUT = 2000, 1000


def faces() -> tuple[torch.Tensor, dict, torch.Tensor, dict]:
    """(real images, their labels, held-out images, their labels); labels per attribute + mode."""
    real = synthetic_faces(NUM_REAL, gt.IMAGE_SIZE, seed=0)
    real_modes = gt.face_mode_ids({name: np.asarray(v) for name, v in real.labels.items()})
    held_modes = np.random.default_rng(7).integers(0, gt.num_face_modes(), NUM_HELD_OUT)
    held = torch.from_numpy(gt.render_face_modes(held_modes, seed=77))

    def labels(modes):
        return {**gt.face_attributes_of_modes(modes), "mode": modes}

    return real.images, labels(real_modes), held, labels(held_modes)


def digits() -> tuple[torch.Tensor, dict, torch.Tensor, dict]:
    real, real_modes = gt.stacked_digits(NUM_REAL, seed=0)
    held, held_modes = gt.stacked_digits(NUM_HELD_OUT, seed=99)

    def labels(modes):
        return {**{c: (modes // p) % 10 for c, p in zip(gt.DIGIT_CHANNELS, (100, 10, 1))}, "mode": modes}

    return torch.from_numpy(real), labels(real_modes), torch.from_numpy(held), labels(held_modes)


def neighbour_agreement(real: np.ndarray, real_labels: dict, held: np.ndarray, held_labels: dict,
                        k: int) -> dict[str, float]:
    """Share of held-out rows whose k nearest real rows (majority vote) carry their label."""
    distances = torch.cdist(torch.as_tensor(held, dtype=torch.float64), torch.as_tensor(real, dtype=torch.float64))
    nearest = distances.topk(k, largest=False).indices.numpy()
    agreement = {}
    for name, values in real_labels.items():
        votes = values[nearest]  # held x k
        predicted = np.array([np.bincount(row).argmax() for row in votes])
        agreement[name] = float((predicted == held_labels[name]).mean())
    return agreement


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", nargs="+", choices=("faces", "digits"), default=["faces", "digits"])
    parser.add_argument("--features", nargs="+", choices=("random", "encoder"), default=["random", "encoder"])
    parser.add_argument("--encoder-epochs", type=int, default=EncoderSettings().epochs, metavar="N",
                        help="epochs of the encoder's training (default: as facegan encoder)")
    args = parser.parse_args(argv)
    provenance.announce(__spec__.name, argv)
    if args.encoder_epochs < 1:
        parser.error(f"--encoder-epochs must be at least 1, got {args.encoder_epochs}")
    torch.manual_seed(0)
    result = {}
    with tempfile.TemporaryDirectory() as folder:
        for domain in args.domains:
            real, real_labels, held, held_labels = faces() if domain == "faces" else digits()
            for space in args.features:
                started = time.perf_counter()
                spec = "random"
                if space == "encoder":
                    encoder = train_encoder(real, EncoderSettings(epochs=args.encoder_epochs), progress=False)
                    path = save_encoder(encoder, Path(folder) / f"{domain}.pt")
                    spec = f"torchscript:{path}"
                extractor = get_extractor(spec)
                real_f, held_f = extractor.extract(real), extractor.extract(held)
                row = {f"k={k}": neighbour_agreement(real_f, real_labels, held_f, held_labels, k) for k in (1, 10)}
                row["seconds"] = round(time.perf_counter() - started, 1)
                result[f"{domain}/{space}"] = row
                top = row["k=1"]
                print(f"{domain:7s} {space:8s} k=1: " + ", ".join(f"{n} {v:.3f}" for n, v in top.items())
                      + f"   ({row['seconds']} s)", flush=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
