"""Evaluation speed: seconds per checkpoint, the one-off real side, and what the cache saves.

Scores K checkpoints of the default 80x80 generator (randomly initialised weights: the cost does
not depend on what the weights have learned) against 2000 synthetic real faces, as
`facegan evaluate` does: generation from the fixed latents, features, every metric.

- per checkpoint: generation + features + metrics at --num-samples (target <= 30 s on 2 cores);
- real side, once: real features, the reference (statistics, neighbour radii) and the chance
  calibration;
- K checkpoints with the real side computed once (facegan) against recomputing it per checkpoint.

Usage: python -m experiments.bench_evaluate [--features random] [--num-samples 2000] [--checkpoints 3]
Prints a table and, as the last line, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from evaluation.features import get_extractor
from evaluation.metrics import RealReference, calibrate_noise, score
from evaluation.engine import generator_batches
from facegan.synthetic import synthetic_faces
from facegan.models import Generator

from experiments import provenance


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", default="random")
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--num-real", type=int, default=2000)
    parser.add_argument("--checkpoints", type=int, default=3)
    args = parser.parse_args()
    provenance.announce(__spec__.name)

    extractor = get_extractor(args.features)
    real = synthetic_faces(args.num_real, 80, seed=0)
    generators = []
    for k in range(args.checkpoints):
        torch.manual_seed(k)
        generators.append(Generator())

    def real_side():
        started = time.perf_counter()
        reference = RealReference.from_features(extractor.extract(real.images))
        calibrate_noise(reference, args.num_samples)
        return reference, time.perf_counter() - started

    def checkpoint(generator, reference):
        started = time.perf_counter()
        gen_started = time.perf_counter()
        batches = list(generator_batches(generator, args.num_samples, torch.device("cpu")))
        generation = time.perf_counter() - gen_started
        feat_started = time.perf_counter()
        features = extractor.extract(iter(batches))
        feature_s = time.perf_counter() - feat_started
        metric_started = time.perf_counter()
        score(features, reference)
        return time.perf_counter() - started, generation, feature_s, time.perf_counter() - metric_started

    reference, real_seconds = real_side()
    per_checkpoint = [checkpoint(g, reference) for g in generators]
    cached_total = real_seconds + sum(p[0] for p in per_checkpoint)

    uncached_started = time.perf_counter()
    for g in generators:
        ref, _ = real_side()
        checkpoint(g, ref)
    uncached_total = time.perf_counter() - uncached_started

    mean = lambda i: sum(p[i] for p in per_checkpoint) / len(per_checkpoint)  # noqa: E731
    result = {
        "device": "cpu",
        "features": args.features,
        "num_samples": args.num_samples,
        "num_real": args.num_real,
        "checkpoints": args.checkpoints,
        "seconds_per_checkpoint": round(mean(0), 2),
        "generation_seconds": round(mean(1), 2),
        "feature_seconds": round(mean(2), 2),
        "metric_seconds": round(mean(3), 2),
        "real_side_seconds": round(real_seconds, 2),
        "k_checkpoints_cached_seconds": round(cached_total, 2),
        "k_checkpoints_recomputed_seconds": round(uncached_total, 2),
        "cache_speedup": round(uncached_total / cached_total, 2),
    }
    print(f"{'per checkpoint (s)':28} {result['seconds_per_checkpoint']:8.2f}  (target <= 30 at 2000 samples, 80x80)")
    print(f"{'  generation':28} {result['generation_seconds']:8.2f}")
    print(f"{'  features':28} {result['feature_seconds']:8.2f}")
    print(f"{'  metrics':28} {result['metric_seconds']:8.2f}")
    print(f"{'real side, once (s)':28} {result['real_side_seconds']:8.2f}")
    print(f"{args.checkpoints} checkpoints, cached (s)    {cached_total:8.2f}")
    print(f"{args.checkpoints} checkpoints, recomputed (s){uncached_total:8.2f}  ({result['cache_speedup']}x slower)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
