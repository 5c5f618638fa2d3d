"""Does the lazy gradient penalty cost quality? WGAN-GP with ``train.gp_every`` 1 and 4 at equal wall time.

For each seed, two WGAN-GP trainings with the real loop on the built-in faces: the penalty on
every critic step (gp_every 1, the tutorial's) and on every 4th, 4 times as strong (gp_every 4,
as StyleGAN2 regularises lazily). They train in alternation, one epoch each in turn, so that a
change in the machine's load hits both; each stops once its own training time (the epochs'
wall time, nothing else) reaches the budget, so the faster one trains more epochs. Then both are
scored in the same feature space against the training faces: FID (lower is better), precision
and recall. The paired difference over seeds, against the spread of one generator's FID over
fresh latents (the sampling noise), says whether the speed costs quality.

Usage:
    python -m experiments.bench_lazy_penalty [--seconds 120] [--seeds 0,1,2] [--image-size 32]

Prints a table and, as the last line, a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


from evaluation.engine import Scorer
from experiments import provenance
from evaluation.sources import GeneratorCheckpoint
from facegan.config import load_config
from facegan.config import ScoringOptions
from facegan.scoring import make_extractor, real_images
from facegan.run_tracker import MemoryTracker
from facegan.synthetic import synthetic_faces
from facegan.training import Trainer

VARIANTS = (1, 4)  # train.gp_every


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="training time per variant and seed")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--image-size", type=int, default=32, help="32: enough epochs in a short budget")
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--num-samples", type=int, default=1000, help="samples scored per generator")
    parser.add_argument("--features", default="random", help="feature space, as facegan evaluate --features")
    args = parser.parse_args()
    provenance.announce(__spec__.name)

    faces = synthetic_faces(args.num_images, args.image_size, seed=0)
    scorer = Scorer(make_extractor(ScoringOptions(args.features, device="cpu")), real_images(faces), args.num_samples)
    rows, resampled = [], []
    print(f"{'seed':>4} {'gp_every':>8} {'epochs':>6} {'img/s':>7} {'fid':>8} {'precision':>9} {'recall':>7}", flush=True)
    for seed in (int(s) for s in args.seeds.split(",")):
        trainers, seconds, epochs = {}, {}, {}
        for gp_every in VARIANTS:
            cfg = load_config(overrides={"train.loss": "wgan-gp", "train.gp_every": gp_every, "train.seed": seed,
                                         "model.image_size": args.image_size, "data.num_images": args.num_images,
                                         "train.device": "cpu"})
            trainers[gp_every] = Trainer(cfg, faces, MemoryTracker(), progress=False)
            seconds[gp_every], epochs[gp_every] = 0.0, 0
        while any(seconds[k] < args.seconds for k in VARIANTS):
            for gp_every in VARIANTS:
                if seconds[gp_every] >= args.seconds:
                    continue
                started = time.perf_counter()
                trainers[gp_every].run_epoch()
                seconds[gp_every] += time.perf_counter() - started
                epochs[gp_every] += 1
        for gp_every in VARIANTS:
            scores, _ = scorer.score(GeneratorCheckpoint(epochs[gp_every], trainers[gp_every].gan.generator))
            row = {"seed": seed, "gp_every": gp_every, "epochs": epochs[gp_every], "train_seconds": round(seconds[gp_every], 1),
                   "images_per_s": round(epochs[gp_every] * args.num_images / seconds[gp_every], 1),
                   **{k: round(scores[k], 4) for k in ("fid", "precision", "recall")}}
            rows.append(row)
            if gp_every == VARIANTS[0]:  # FID's spread from the samples alone: other latents, same weights
                resampled.append(statistics.stdev(
                    scorer.score(GeneratorCheckpoint(0, trainers[gp_every].gan.generator, seed=1000 + k))[0]["fid"]
                    for k in range(3)))
            print(f"{seed:4d} {gp_every:8d} {row['epochs']:6d} {row['images_per_s']:7.1f} {row['fid']:8.3f} "
                  f"{row['precision']:9.3f} {row['recall']:7.3f}", flush=True)

    def by(gp_every):
        return {r["seed"]: r for r in rows if r["gp_every"] == gp_every}

    lazy, eager = by(4), by(1)
    differences = [lazy[s]["fid"] - eager[s]["fid"] for s in eager]
    summary = {
        "fid_mean": {str(k): round(statistics.mean(r["fid"] for r in by(k).values()), 3) for k in VARIANTS},
        "fid_difference_lazy_minus_eager": [round(d, 3) for d in differences],
        "fid_difference_mean": round(statistics.mean(differences), 3),
        "fid_difference_sd": round(statistics.stdev(differences), 3) if len(differences) > 1 else None,
        "fid_resampling_sd": round(statistics.mean(resampled), 3),
        "epochs_ratio": round(statistics.mean(lazy[s]["epochs"] / eager[s]["epochs"] for s in eager), 3),
        "speed_ratio": round(statistics.mean(lazy[s]["images_per_s"] / eager[s]["images_per_s"] for s in eager), 3),
    }
    print(f"lazy (gp_every 4) minus eager (gp_every 1) FID, per seed: {summary['fid_difference_lazy_minus_eager']}; "
          f"mean {summary['fid_difference_mean']} (sd over seeds {summary['fid_difference_sd']}; "
          f"one FID's spread over fresh latents {summary['fid_resampling_sd']}); lazy trained {summary['epochs_ratio']}x the epochs "
          f"at {summary['speed_ratio']}x the speed")
    print(json.dumps({"seconds": args.seconds, "image_size": args.image_size, "num_images": args.num_images,
                      "num_samples": args.num_samples, "features": args.features, "rows": rows, "summary": summary}))


if __name__ == "__main__":
    main()
