"""What the captured step's logic changes, measured on the CPU: the same runs, eager and through the step graphs.

The captured step (``train.compile = cuda-graphs``, :mod:`facegan.step_graphs`) keeps the
tutorial's rule, but on the adaptive schedule it draws every minibatch's latents and penalty
points before the step (random numbers cannot be drawn inside a CUDA graph's conditional node),
where the eager step draws the penalty points only on the D steps that use them. Given the same
draws the two train bit for bit alike (``tests/test_step_graphs.py``); with the draws of a run,
the random streams part after the first G step, and this script measures what that does to a
run: the steps of each kind, the losses, the time, and the FID reached.

For each seed: one run with the eager step and one with the step graphs' functions run uncaptured
(the code a CUDA graph records, with its branches decided on the host: all a CPU can run), the
same seed, data and epochs; then both generators are scored in the same feature space. The
differences are set against two spreads: one FID's over fresh latents (the same weights), and the
eager runs' over seeds.

Usage:
    python -m experiments.compare_step_graphs [--seeds 0,1,2] [--epochs 10] [--loss wgan-gp]
        [--image-size 32] [--num-images 2000]

Prints a table and, as the last line, a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


from evaluation.engine import Scorer
from evaluation.sources import GeneratorCheckpoint
from experiments import provenance
from facegan.config import load_config
from facegan.config import ScoringOptions
from facegan.scoring import make_extractor, real_images
from facegan.run_tracker import MemoryTracker
from facegan.step_graphs import StepGraphs
from facegan.synthetic import synthetic_faces
from facegan.training import Trainer

VARIANTS = ("eager", "step_graphs")


def make_trainer(variant: str, cfg, faces) -> Trainer:
    trainer = Trainer(cfg, faces, MemoryTracker(), progress=False)
    if variant == "step_graphs":
        t = cfg.train
        trainer.step_graphs = StepGraphs(trainer.gan, t.schedule, t.n_critic, t.gp_every,
                                         tuple(faces.images.shape[1:]), trainer.device, capture=False)
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--loss", default="wgan-gp")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--num-samples", type=int, default=1000, help="samples scored per generator")
    parser.add_argument("--features", default="random")
    args = parser.parse_args()
    provenance.announce(__spec__.name)

    faces = synthetic_faces(args.num_images, args.image_size, seed=0)
    scorer = Scorer(make_extractor(ScoringOptions(args.features, device="cpu")), real_images(faces), args.num_samples)
    rows, resampled = [], []
    print(f"{'seed':>4} {'variant':>11} {'d_steps':>7} {'g_steps':>7} {'loss_d':>9} {'loss_g':>9} {'s/epoch':>7} {'fid':>8}",
          flush=True)
    for seed in (int(s) for s in args.seeds.split(",")):
        for variant in VARIANTS:
            cfg = load_config(overrides={"train.loss": args.loss, "train.seed": seed, "train.device": "cpu",
                                         "model.image_size": args.image_size, "data.num_images": args.num_images})
            trainer = make_trainer(variant, cfg, faces)
            seconds, per_epoch = 0.0, []
            for _ in range(args.epochs):
                started = time.perf_counter()
                metrics = trainer.run_epoch().metrics(1.0)
                seconds += time.perf_counter() - started
                per_epoch.append({k: metrics.get(k) for k in ("d_steps", "g_steps", "loss_d", "loss_g", "accuracy_g",
                                                              "accuracy_d")})
            scores, _ = scorer.score(GeneratorCheckpoint(args.epochs, trainer.gan.generator))
            row = {"seed": seed, "variant": variant,
                   "d_steps": int(sum(e["d_steps"] for e in per_epoch)),
                   "g_steps": int(sum(e["g_steps"] for e in per_epoch)),
                   "loss_d_last": per_epoch[-1]["loss_d"], "loss_g_last": per_epoch[-1]["loss_g"],
                   "seconds_per_epoch": round(seconds / args.epochs, 2), "fid": round(scores["fid"], 3),
                   "epochs": per_epoch}
            rows.append(row)
            if variant == "eager":  # FID's spread from the samples alone: other latents, same weights
                resampled.append(statistics.stdev(
                    scorer.score(GeneratorCheckpoint(0, trainer.gan.generator, seed=1000 + k))[0]["fid"] for k in range(3)))

            def show(value):
                return f"{value:9.4f}" if value is not None else f"{'-':>9}"

            print(f"{seed:4d} {variant:>11} {row['d_steps']:7d} {row['g_steps']:7d} {show(row['loss_d_last'])} "
                  f"{show(row['loss_g_last'])} {row['seconds_per_epoch']:7.2f} {row['fid']:8.3f}", flush=True)

    def by(variant):
        return {r["seed"]: r for r in rows if r["variant"] == variant}

    eager, stepped = by("eager"), by("step_graphs")
    differences = [stepped[s]["fid"] - eager[s]["fid"] for s in eager]
    eager_fids = [r["fid"] for r in eager.values()]
    summary = {
        "fid_difference_step_graphs_minus_eager": [round(d, 3) for d in differences],
        "fid_difference_mean": round(statistics.mean(differences), 3),
        "fid_abs_difference_mean": round(statistics.mean(abs(d) for d in differences), 3),
        "fid_eager_sd_over_seeds": round(statistics.stdev(eager_fids), 3) if len(eager_fids) > 1 else None,
        "fid_resampling_sd": round(statistics.mean(resampled), 3),
        "d_share_eager": round(statistics.mean(r["d_steps"] / (r["d_steps"] + r["g_steps"]) for r in eager.values()), 4),
        "d_share_step_graphs": round(statistics.mean(r["d_steps"] / (r["d_steps"] + r["g_steps"])
                                                     for r in stepped.values()), 4),
        "first_epoch_identical": [eager[s]["epochs"][0] == stepped[s]["epochs"][0] for s in eager],
        "time_ratio_step_graphs_over_eager": round(statistics.mean(stepped[s]["seconds_per_epoch"]
                                                                   / eager[s]["seconds_per_epoch"] for s in eager), 3),
    }
    print(f"step graphs minus eager FID, per seed: {summary['fid_difference_step_graphs_minus_eager']} "
          f"(mean {summary['fid_difference_mean']}); eager FID's sd over seeds {summary['fid_eager_sd_over_seeds']}; "
          f"one FID's spread over fresh latents {summary['fid_resampling_sd']}; share of D steps "
          f"{summary['d_share_eager']} eager, {summary['d_share_step_graphs']} step graphs; first epochs identical: "
          f"{summary['first_epoch_identical']}; uncaptured on the CPU the step graphs take "
          f"{summary['time_ratio_step_graphs_over_eager']}x the eager time (the decided steps score twice)")
    print(json.dumps({"loss": args.loss, "epochs": args.epochs, "image_size": args.image_size,
                      "num_images": args.num_images, "num_samples": args.num_samples, "features": args.features,
                      "rows": rows, "summary": summary}))


if __name__ == "__main__":
    main()
