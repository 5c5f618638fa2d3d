"""What scoring checkpoints during training costs: `facegan train --evaluate` beside plain training.

1. **Quickstart** (issue 15's target: at most 15% more wall time on 2 CPU cores). The real CLI,
   ``facegan train --config experiments/quick.toml`` (40 epochs, a checkpoint every 4: ten
   checkpoints), once plainly and once with ``--evaluate FEATURES``, interleaved within each repeat
   so that the machine's drift hits both alike, in an order rotated from repeat to repeat: plain,
   evaluating with an empty real-feature cache (a user's first run on this data), and evaluating
   with the cache a first run leaves (every later run; primed once by an untimed one-epoch run).
   Each run gets a new sqlite store. Overhead = median evaluating wall time / median plain - 1;
   also the median of the per-repeat ratios (each evaluating run over the plain run just before it),
   which a machine whose speed drifts between repeats disturbs less.
2. **The tutorial's cadence** (a checkpoint every 100 epochs of the tutorial's WGAN-GP on 2000 faces
   at 80 x 80, minibatch 20, adaptive schedule): the seconds of one epoch, timed on a tenth of one,
   against the seconds to score one 80 x 80 checkpoint at ``--num-samples`` (the real side already
   computed, as in training); overhead = scoring / (100 epochs).
3. **The tutorial's case in numbers**: a history at that cadence (checkpoints 100, 200, ...,
   10000) whose samples are fresh built-in faces of all 96 attribute combinations up to epoch
   2900 and faces of only 3 combinations from epoch 3000 on (a collapse at 3000, as the
   tutorial's), judged checkpoint by checkpoint as ``--stop-on-collapse`` judges: where training
   stops, how many of the 10000 epochs it does not train, and what that is in hours at the
   measured epoch time.

Usage::

    python -m experiments.bench_online_evaluation [--repeats 3] [--features random] [--device cpu]
        [--inception-weights FILE] [--skip-quickstart]

On a GPU machine: ``--device cuda --features inception --inception-weights FILE`` for the
standard network. Prints a table and, as its last line, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from experiments import provenance

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "experiments" / "quick.toml"
TUTORIAL_CADENCE = 100  # epochs between the tutorial's checkpoints


def facegan_command() -> list[str]:
    installed = Path(sys.executable).with_name("facegan")
    return [str(installed)] if installed.is_file() else [sys.executable, "-m", "facegan"]


def timed_train(folder: Path, name: str, extra: list[str], cache: Path, device: str) -> float:
    """Wall seconds of one `facegan train` on the Quickstart config into a new sqlite store."""
    env = {**os.environ, "FACEGAN_CACHE_DIR": str(cache)}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    done = subprocess.run([*facegan_command(), "train", "--config", str(QUICK), "--quiet", "--device", device,
                           "--tracking-uri", f"sqlite:///{folder / (name + '.db')}", *extra],
                          cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"facegan train {' '.join(extra)} failed:\n{done.stderr[-2000:]}")
    return seconds


def quickstart(repeats: int, features: list[str], device: str) -> dict:
    rows: dict[str, list[float]] = {"plain": [], "evaluate_cold_cache": [], "evaluate_warm_cache": []}
    kinds = list(rows)
    with tempfile.TemporaryDirectory(prefix="facegan-bench-online-") as tmp:
        folder = Path(tmp)
        # The cache a first run leaves (the real features and chance levels of this data), made
        # once, untimed, by a one-epoch run: every warm run starts from a copy of it.
        primed = folder / "cache-primed"
        timed_train(folder, "prime", [*features, "--epochs", "1"], primed, device)
        for repeat in range(repeats):
            # Each repeat runs the three kinds in a rotated order: a machine that slows down (or
            # speeds up) within a repeat then favours no kind over the others.
            order = kinds[repeat % 3:] + kinds[:repeat % 3]
            for kind in order:
                if kind == "plain":
                    rows[kind].append(timed_train(folder, f"plain-{repeat}", [], folder / "cache-plain", device))
                elif kind == "evaluate_cold_cache":
                    rows[kind].append(timed_train(folder, f"cold-{repeat}", features, folder / f"cache-cold-{repeat}",
                                                  device))
                else:
                    warm = folder / f"cache-warm-{repeat}"
                    shutil.copytree(primed, warm)
                    rows[kind].append(timed_train(folder, f"warm-{repeat}", features, warm, device))
            print(f"  repeat {repeat + 1} ({', '.join(order)}): "
                  + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in rows.items()), flush=True)
    plain = statistics.median(rows["plain"])
    result = {"runs_s": {k: [round(x, 1) for x in v] for k, v in rows.items()}, "plain_median_s": round(plain, 1)}
    for key in ("evaluate_cold_cache", "evaluate_warm_cache"):
        median = statistics.median(rows[key])
        result[f"{key}_median_s"] = round(median, 1)
        result[f"{key}_overhead"] = round(median / plain - 1, 3)
        paired = [e / p for e, p in zip(rows[key], rows["plain"])]
        result[f"{key}_paired_overhead"] = round(statistics.median(paired) - 1, 3)
    return result


def tutorial_cadence(features: str, num_samples: int, device: str, inception_weights: str | None) -> dict:
    """Seconds of one tutorial epoch and of scoring one 80 x 80 checkpoint, and their ratio."""
    from evaluation.engine import Scorer
    from facegan.scoring import real_images
    from evaluation.features import get_extractor
    from evaluation.sources import GeneratorCheckpoint
    from facegan.common import select_device
    from facegan.config import load_config
    from facegan.models import Generator
    from facegan.run_tracker import MemoryTracker
    from facegan.synthetic import synthetic_faces
    from facegan.training import Trainer

    torch_device = select_device(device)
    tenth = 200  # a tenth of the tutorial's 2000 faces: ten minibatches of 20
    cfg = load_config(ROOT / "experiments" / "tutorial_wgan_gp.toml",
                      {"data.source": "synthetic", "data.num_images": tenth, "train.device": device})
    trainer = Trainer(cfg, synthetic_faces(tenth, 80, seed=0), MemoryTracker(), progress=False)
    trainer.run_epoch()  # warm-up: allocations, kernel choice
    started = time.perf_counter()
    epochs = 3
    for _ in range(epochs):
        trainer.run_epoch()
    if torch_device.type == "cuda":
        torch.cuda.synchronize()
    epoch_s = (time.perf_counter() - started) / epochs * (2000 / tenth)

    real = synthetic_faces(2000, 80, seed=0)
    extractor = get_extractor(features, inception_weights=inception_weights, device=device)
    scorer = Scorer(extractor, real_images(real), num_samples, device=torch_device)
    scorer.noise()
    torch.manual_seed(0)
    generator = Generator()
    scorer.score(GeneratorCheckpoint(0, generator))  # warm-up: the real side's per-size terms
    started = time.perf_counter()
    scorer.score(GeneratorCheckpoint(1, generator))
    score_s = time.perf_counter() - started
    return {"epoch_s": round(epoch_s, 2), "score_s": round(score_s, 2), "num_samples": num_samples,
            "overhead_at_cadence": round(score_s / (TUTORIAL_CADENCE * epoch_s), 5)}


def tutorial_case(features: str, num_samples: int, device: str, inception_weights: str | None,
                  epoch_s: float, collapse_at: int = 3000, planned: int = 10000) -> dict:
    """The judge on a tutorial-cadence history that collapses at ``collapse_at``: where it stops."""
    import numpy as np

    from evaluation.engine import Scorer
    from facegan.scoring import real_images
    from evaluation.features import get_extractor
    from evaluation.online import StopRule, TrainingJudge
    from evaluation.sources import ImagesCheckpoint
    from facegan.synthetic import SYNTHETIC_ATTRIBUTES, render_faces, synthetic_faces

    real = synthetic_faces(2000, 80, seed=0)
    extractor = get_extractor(features, inception_weights=inception_weights, device=device)
    judge = TrainingJudge(Scorer(extractor, real_images(real), num_samples, device=device),
                          rule=StopRule(on_collapse=True))
    few = [(0, 0, 0, 0), (1, 2, 1, 0), (3, 1, 2, 1)]  # the attribute combinations a collapsed run keeps
    started, stopped = time.perf_counter(), None
    for epoch in range(TUTORIAL_CADENCE, planned + 1, TUTORIAL_CADENCE):
        if epoch < collapse_at:
            images = synthetic_faces(num_samples, 80, seed=100_000 + epoch).images
        else:
            rng = np.random.default_rng(epoch)
            combination = np.array(few)[np.arange(num_samples) % len(few)]
            labels = {name: combination[:, i] for i, name in enumerate(SYNTHETIC_ATTRIBUTES)}
            images = torch.from_numpy(render_faces(labels, 80, rng))
        if judge.add(ImagesCheckpoint(epoch, images)) is not None:
            stopped = epoch
            break
    evaluation = judge.evaluation
    trained = stopped or planned
    return {"collapse_at": collapse_at, "planned_epochs": planned, "stopped_epoch": stopped,
            "onset_epoch": evaluation.collapse.onset_epoch, "best_epoch": evaluation.best_epoch,
            "epochs_saved": planned - trained, "epochs_saved_share": round(1 - trained / planned, 3),
            "hours_saved_at_measured_epoch": round((planned - trained) * epoch_s / 3600, 1),
            "scoring_s": round(time.perf_counter() - started, 1), "checkpoints_scored": len(evaluation.checkpoints)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="Quickstart runs of each kind (default 3)")
    parser.add_argument("--features", default="random", help="the feature space scored in (default random)")
    parser.add_argument("--inception-weights", help="local Inception weights for --features inception")
    parser.add_argument("--num-samples", type=int, default=2000,
                        help="samples per checkpoint at the tutorial's cadence (the default of train --evaluate)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--skip-quickstart", action="store_true", help="only the tutorial-cadence part")
    parser.add_argument("--skip-tutorial", action="store_true", help="only the Quickstart part")
    args = parser.parse_args(argv)
    provenance.announce(__spec__.name, argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: PyTorch sees no CUDA device")
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({os.cpu_count()} cores)"
    result: dict = {"device": device_name, "features": args.features}
    flags = ["--evaluate", args.features] + (["--set", f"evaluate.inception_weights={args.inception_weights}"]
                                             if args.inception_weights else [])
    if not args.skip_quickstart:
        print(f"Quickstart ({QUICK.name}), plain against --evaluate {args.features}, {args.repeats} repeats:")
        result["quickstart"] = quickstart(args.repeats, flags, args.device)
        q = result["quickstart"]
        print(f"{'run':28} {'median s':>9} {'overhead':>9} {'paired':>9}")
        print(f"{'plain':28} {q['plain_median_s']:9.1f}")
        for key in ("evaluate_cold_cache", "evaluate_warm_cache"):
            print(f"{key:28} {q[f'{key}_median_s']:9.1f} {q[f'{key}_overhead']:9.1%} "
                  f"{q[f'{key}_paired_overhead']:9.1%}")
    if args.skip_tutorial:
        print(json.dumps(result))
        return result
    cadence = tutorial_cadence(args.features, args.num_samples, args.device, args.inception_weights)
    result["tutorial_cadence"] = cadence
    print(f"tutorial cadence (WGAN-GP, 80 x 80, minibatch 20): one epoch {cadence['epoch_s']:.1f} s, one checkpoint "
          f"scored at {cadence['num_samples']} samples {cadence['score_s']:.1f} s: "
          f"{cadence['overhead_at_cadence']:.3%} more time at a checkpoint every {TUTORIAL_CADENCE} epochs")
    case = tutorial_case(args.features, args.num_samples, args.device, args.inception_weights, cadence["epoch_s"])
    result["tutorial_case"] = case
    print(f"tutorial case (collapse at epoch {case['collapse_at']}, checkpoints every {TUTORIAL_CADENCE}): onset found at "
          f"{case['onset_epoch']}, stopped at {case['stopped_epoch']}, best checkpoint {case['best_epoch']}: "
          f"{case['epochs_saved']} of {case['planned_epochs']} epochs not trained ({case['epochs_saved_share']:.0%}, "
          f"{case['hours_saved_at_measured_epoch']} h at the epoch time above); {case['checkpoints_scored']} "
          f"checkpoints scored in {case['scoring_s']} s")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
