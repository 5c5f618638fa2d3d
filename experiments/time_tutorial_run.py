"""How long the tutorial's WGAN-GP run takes end to end: a measured fraction of it, extrapolated.

The run: 10000 epochs of 2000 faces at 80x80 (the built-in faces stand in for LFW: the same sizes
and work), WGAN-GP with the tutorial's adaptive schedule at facegan's default minibatch (64), a
sample grid every epoch, a resume state every 10, and a checkpoint every 100 judged as it is
written in the inception space: what ``facegan train --config experiments/tutorial_wgan_gp.toml
--batch-size 64 --evaluate inception`` runs. The loop is the real one (``facegan.training.train``,
with the judge ``--evaluate`` builds); the tracker is in memory (a GPU machine here has no MLflow;
the MLflow tracker sends from a background thread).

Measured: the first ``--epochs`` epochs (default 200: two judged checkpoints, 100 and 200). Each
epoch's wall time is read off the tracker's clock (one metrics call per epoch), so it holds everything the
loop does: training, the sample grid, resume states, checkpoints, judging. Extrapolated to
``--total-epochs``::

    startup (scorer, capture, first epoch) + (total - 1) x the mean epoch without a checkpoint
        + total / checkpoint_every x the least extra time a judged checkpoint took
        + what the first judging took beyond that (its feature space's noise calibration, once)

With ``--compare-eager-epochs N`` the same run with ``train.compile = off`` (today's eager step)
is measured for N epochs and extrapolated with the same judging cost.

Inception weights: ``--inception-weights FILE``; without it, the FID Inception network with random
weights (the real weights are a download, which these GPU machines cannot reach): the same
network, so the same cost; the scores are meaningless and not reported.

Usage:
    python -m experiments.time_tutorial_run [--device auto] [--epochs 200] [--batch-size 64]
        [--compile cuda-graphs] [--inception-weights FILE] [--compare-eager-epochs 30]

Prints a table and, as the last line, a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from evaluation.online import TrainingJudge
from experiments import provenance
from facegan.common import select_device
from facegan.config import load_config
from facegan.scoring import training_scorer
from facegan.run_tracker import MemoryTracker
from facegan.synthetic import synthetic_faces
from facegan.training import train

TUTORIAL_CONFIG = Path(__file__).with_name("tutorial_wgan_gp.toml")


class ClockedTracker(MemoryTracker):
    """An in-memory tracker that notes when each epoch's metrics arrive."""

    def __init__(self):
        super().__init__()
        self.clock: dict[int, float] = {}

    def log_metrics(self, metrics, step):
        self.clock[step] = time.perf_counter()
        super().log_metrics(metrics, step)


def random_inception_weights(directory: Path) -> Path:
    """A state_dict of the FID Inception-v3 with random (He-initialised) weights: a timing stand-in."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class RandomInit(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None  # keep the constructor's random initialisation

    empty = directory / "empty.pth"
    torch.save({}, empty)
    torch.manual_seed(0)
    network = RandomInit("inception", ["2048"], feature_extractor_weights_path=str(empty))
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = directory / "inception-random.pth"
    torch.save(network.state_dict(), path)
    return path


def measure(*, device: str, epochs: int, batch_size: int, compile_mode: str, image_size: int, num_images: int,
            checkpoint_every: int, features: str, inception_weights: str | None, judge: bool,
            total_epochs: int, judge_extra: float | None = None) -> dict:
    """Train ``epochs`` epochs of the tutorial's WGAN-GP run; its timings and the extrapolation."""
    overrides = {"train.epochs": epochs, "train.batch_size": batch_size, "train.device": device,
                 "train.compile": compile_mode, "data.source": "synthetic", "data.num_images": num_images,
                 "model.image_size": image_size, "tracking.checkpoint_every": checkpoint_every}
    if judge:
        overrides |= {"evaluate.features": features, "evaluate.inception_weights": inception_weights,
                      "evaluate.register": None}
    cfg = load_config(TUTORIAL_CONFIG, overrides)
    faces = synthetic_faces(num_images, image_size, seed=0)
    started = time.perf_counter()
    scorer = training_scorer(cfg, faces, progress=False) if judge else None
    scorer_seconds = time.perf_counter() - started
    tracker = ClockedTracker()
    train(cfg, faces, tracker, progress=False, judge=TrainingJudge(scorer) if judge else None)
    ended = time.perf_counter()
    wall = ended - started
    clock = tracker.clock
    last = max(clock)
    after_checkpoint = {e for e in clock if e > 1 and (e - 1) % checkpoint_every == 0}
    plain = [clock[e] - clock[e - 1] for e in sorted(clock) if e > 2 and e not in after_checkpoint]
    epoch_seconds = statistics.mean(plain)
    # What a judged checkpoint adds: the epochs after one, less an epoch's time; and the tail after
    # the last epoch's metrics (its checkpoint, judged, and the run's end).
    extras = [clock[e] - clock[e - 1] - epoch_seconds for e in sorted(after_checkpoint)] + [ended - clock[last]]
    one_time = 0.0
    if judge_extra is None:
        # The first judging also calibrates the space's noise (then cached on disk): counted once.
        judge_extra = min(extras)
        one_time = sum(extras) - judge_extra * len(extras)
    startup = clock[1] - started
    estimate = (startup + one_time + (total_epochs - 1) * epoch_seconds
                + (total_epochs // checkpoint_every) * judge_extra)
    metrics = tracker.metrics
    return {
        "compile": compile_mode, "epochs": epochs, "batch_size": batch_size, "wall_seconds": round(wall, 2),
        "startup_seconds": round(startup, 2), "scorer_seconds": round(scorer_seconds, 2),
        "epoch_seconds_mean": round(epoch_seconds, 4), "epoch_seconds_median": round(statistics.median(plain), 4),
        "training_seconds_per_epoch_median": round(statistics.median(metrics["epoch_seconds"].values()), 4),
        # What the loop spends per epoch outside the training step: grids, snapshots, resume states.
        "loop_seconds_per_epoch": round(epoch_seconds - statistics.mean(
            metrics["epoch_seconds"][e] for e in sorted(clock) if e > 2 and e not in after_checkpoint), 4),
        "training_images_per_s_median": round(statistics.median(metrics["images_per_s"].values()), 1),
        "judged_checkpoints": len(extras) if judge else 0, "judge_extra_seconds": round(judge_extra, 2),
        "one_time_judge_seconds": round(one_time, 2),
        "d_share": round(sum(metrics.get("d_steps", {}).values())
                         / max(sum(metrics.get("d_steps", {}).values()) + sum(metrics.get("g_steps", {}).values()), 1), 4),
        "total_epochs": total_epochs, "estimated_total_minutes": round(estimate / 60, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=200, help="epochs measured")
    parser.add_argument("--total-epochs", type=int, default=10000, help="epochs extrapolated to")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--compile", default="cuda-graphs", help="train.compile of the measured run")
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=80)
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--features", default="inception", help="the judge's feature space")
    parser.add_argument("--inception-weights", default=None, help="default: the network with random weights")
    parser.add_argument("--compare-eager-epochs", type=int, default=0, help="also time N epochs with train.compile=off")
    args = parser.parse_args()
    provenance.announce(__spec__.name)
    device = select_device(args.device).type
    common = {"device": device, "batch_size": args.batch_size, "image_size": args.image_size,
              "num_images": args.num_images, "checkpoint_every": args.checkpoint_every, "features": args.features,
              "total_epochs": args.total_epochs}
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.inception_weights
        if args.features == "inception" and weights is None:
            weights = str(random_inception_weights(Path(tmp)))
        runs = [measure(**common, epochs=args.epochs, compile_mode=args.compile, inception_weights=weights, judge=True)]
        if args.compare_eager_epochs:
            runs.append(measure(**common, epochs=args.compare_eager_epochs, compile_mode="off",
                                inception_weights=weights, judge=False, judge_extra=runs[0]["judge_extra_seconds"]))
    print(f"{'compile':>12} {'epochs':>6} {'s/epoch':>8} {'of it loop':>10} {'train img/s':>11} {'judge s':>8} "
          f"{'startup s':>9} {'D share':>7} {'estimate (min)':>14}")
    for r in runs:
        print(f"{r['compile']:>12} {r['epochs']:6d} {r['epoch_seconds_mean']:8.4f} {r['loop_seconds_per_epoch']:10.4f} "
              f"{r['training_images_per_s_median']:11.1f} "
              f"{r['judge_extra_seconds']:8.2f} {r['startup_seconds']:9.2f} {r['d_share']:7.3f} "
              f"{r['estimated_total_minutes']:14.1f}", flush=True)
    print(json.dumps({"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
                      "features": args.features, "real_inception_weights": args.inception_weights is not None,
                      "runs": runs}))


if __name__ == "__main__":
    main()
