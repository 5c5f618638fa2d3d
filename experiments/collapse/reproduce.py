"""Fingerprint one collapse-benchmark training run, to tell whether two code versions or two
machines train the same generator from the same seed.

Trains the quick benchmark's run the way ``experiments.collapse.benchmark`` does (the same
overrides: DCGAN, 32 x 32, widths 32, the STABLE settings, 2000 synthetic faces, the fixed schedule,
the CPU) into an in-memory tracker, and prints one line per epoch: a sha256 of the generator's and
the critic's weights (state_dict, raw float bytes, 12 hex digits), the generator's weight sum and the
epoch's losses. Before epoch 1 it prints the data digest and the initial weights.

The script imports only what facegan had at commit 190dc80 as well, so the same file runs against an
old checkout (from this checkout's root; ``.venv`` is the project's virtual environment)::

    PYTHONPATH=$PWD .venv/bin/python -m experiments.collapse.reproduce --epochs 24 --collapse-after 16 --out new.json
    git worktree add --detach ../old 190dc80
    PYTHONPATH=../old .venv/bin/python experiments/collapse/reproduce.py --epochs 24 --collapse-after 16 --out old.json
    .venv/bin/python -m experiments.collapse.reproduce --compare old.json new.json

What it showed (2026-12-04, 2-core AMD EPYC, torch 2.14.1, oneDNN 3.12): 190dc80 and cfc0228 train
the collapsing seed-0 run bit for bit alike over all 24 epochs, and twice in a row alike, even under
load; its ``--gt 5000`` history is the one in ``collapse_benchmark-quick-issue26.json``. One torch
thread instead of two, or oneDNN limited to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``), gives other weights
from epoch 1 on and another ground-truth history: the run depends on the machine's kernels and
thread count, so a stored CPU result is reproducible only on the machine (and thread count) that
made it.

Options: ``--epochs N`` (default 4; the run's own schedule is the quick scale's 24), ``--threads N``
(torch.set_num_threads; default: torch's own choice, as the benchmark leaves it), ``--collapse-after
N`` (the "collapsing" run's designed collapse; default none, which is the same run until then),
``--gt SAMPLES`` (the benchmark's ground truth of each checkpoint; needs today's checkout),
``--seed``, ``--out FILE`` (the fingerprints as JSON; compare two files with ``--compare A B``).
The run's ``--epochs`` is also its ``train.epochs``: a shorter run trains the same first epochs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time

import torch

# The benchmark's BASE_OVERRIDES and STABLE (identical at 190dc80 and later), with the quick scale.
OVERRIDES = {
    "train.loss": "dcgan",
    "model.image_size": 32,
    "model.g_width": 32,
    "model.d_width": 32,
    "train.schedule": "fixed",
    "train.device": "cpu",
    "tracking.sample_every": 1000,
    "tracking.resume_every": 1000,
    "tracking.num_samples": 64,
    "train.batch_size": 32,
    "train.n_critic": 1,
    "train.lr_g": 2e-3,
    "train.lr_d": 2e-3,
    "tracking.checkpoint_every": 2,
    "data.num_images": 2000,
    "data.source": "synthetic",
    "tracking.experiment": "facegan-collapse-benchmark",
}


def weights_hash(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def weights_sum(module: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in module.parameters()))


def imports():
    """(load_config, synthetic_faces, MemoryTracker, Trainer, train) from this facegan or an older one.

    Modules are chosen by the files of the facegan package that was imported: the venv's editable
    install would otherwise serve a module that the older checkout lacks from the newer one."""
    from pathlib import Path

    import facegan
    from facegan.config import load_config
    from facegan.training import Trainer, train

    package = Path(facegan.__file__).parent
    if (package / "synthetic.py").exists():
        from facegan.synthetic import synthetic_faces
    else:  # before c729bf2
        from facegan.data import synthetic_faces
    if (package / "run_tracker.py").exists():
        from facegan.run_tracker import MemoryTracker
    else:  # before 08b59f3
        from facegan.tracking import MemoryTracker
    modules = [load_config, synthetic_faces, MemoryTracker, Trainer]
    print("facegan modules:", ", ".join(sys.modules[m.__module__].__file__ for m in modules), flush=True)
    return load_config, synthetic_faces, MemoryTracker, Trainer, train


def ground_truth_counter(num_samples: int):
    """``count(generator) -> ModeReport as dict``: the benchmark's ground truth of a checkpoint (its
    ``checkpoint_truth``: the face classifier on ``num_samples`` samples from the engine's fixed
    latents). Needs today's checkout (experiments.collapse, evaluation.engine)."""
    import copy

    from evaluation.engine import generator_batches
    from experiments.collapse import ground_truth as gt

    classifier = gt.FaceClassifier.load_or_train()

    def count(generator: torch.nn.Module) -> dict:
        state = torch.get_rng_state()  # nothing here may move training's draws
        images = torch.cat(list(generator_batches(copy.deepcopy(generator), num_samples, torch.device("cpu"))))
        torch.set_rng_state(state)
        return classifier.count_modes(images).to_dict()

    return count


def run(epochs: int, seed: int, collapse_after: int | None, gt_samples: int | None = None) -> dict:
    load_config, synthetic_faces, MemoryTracker, Trainer, train = imports()
    count = ground_truth_counter(gt_samples) if gt_samples else None
    cfg = load_config(None, overrides={**OVERRIDES, "train.seed": seed, "train.epochs": epochs})
    data = synthetic_faces(cfg.data.num_images, cfg.model.image_size, seed=cfg.data.seed)
    rows = []

    class Fingerprinted(Trainer):
        def run_epoch(self, stop=None):
            if self.epoch == 0 and not rows:
                rows.append({"epoch": 0, "g": weights_hash(self.gan.generator), "d": weights_hash(self.gan.discriminator),
                             "g_sum": weights_sum(self.gan.generator)})
                print(f"data {data.digest[:12]}  epoch 0: G {rows[0]['g']} D {rows[0]['d']} "
                      f"sum {rows[0]['g_sum']:.10f}", flush=True)
            if collapse_after is not None and self.epoch >= collapse_after:  # the benchmark's DesignedCollapse
                for group in self.gan.opt_g.param_groups:
                    group["lr"] = 1e-2
                for group in self.gan.opt_d.param_groups:
                    group["lr"] = 0.0
            started = time.perf_counter()
            totals = super().run_epoch(stop)
            metrics = totals.metrics(time.perf_counter() - started)
            row = {"epoch": self.epoch + 1, "g": weights_hash(self.gan.generator), "d": weights_hash(self.gan.discriminator),
                   "g_sum": weights_sum(self.gan.generator), "loss_d": float(metrics["loss_d"]),
                   "loss_g": float(metrics["loss_g"]), "seconds": round(time.perf_counter() - started, 2)}
            if count is not None and row["epoch"] % OVERRIDES["tracking.checkpoint_every"] == 0:
                truth = count(self.gan.generator)
                row["gt_modes"], row["gt_kl"] = truth["modes"], truth["kl"]
                print(f"  ground truth at epoch {row['epoch']}: {truth}", flush=True)
            rows.append(row)
            print(f"epoch {row['epoch']}: G {row['g']} D {row['d']} sum {row['g_sum']:.10f} "
                  f"loss_d {row['loss_d']:.8f} loss_g {row['loss_g']:.8f} ({row['seconds']} s)", flush=True)
            return totals

    started = time.perf_counter()
    train(cfg, data, MemoryTracker(), progress=False, trainer_class=Fingerprinted)
    return {"data": data.digest, "epochs": rows, "seconds": round(time.perf_counter() - started, 1),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")(),
            "machine": platform.processor() or platform.machine()}


def compare(a: dict, b: dict) -> int:
    """Print the first epoch whose weights differ; 0 when every common epoch agrees."""
    for x, y in zip(a["epochs"], b["epochs"]):
        if (x["g"], x["d"]) != (y["g"], y["d"]):
            print(f"differ from epoch {x['epoch']}: G {x['g']} vs {y['g']}, sum {x['g_sum']!r} vs {y['g_sum']!r}")
            return 1
    print(f"identical over {min(len(a['epochs']), len(b['epochs'])) - 1} epochs (data {a['data'] == b['data']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--collapse-after", type=int, default=None)
    parser.add_argument("--gt", type=int, default=None, metavar="SAMPLES",
                        help="ground truth of every checkpoint on SAMPLES samples (the quick scale: 5000)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None)
    args = parser.parse_args(argv)
    if args.compare:
        a, b = (json.load(open(path)) for path in args.compare)
        return compare(a, b)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = run(args.epochs, args.seed, args.collapse_after, args.gt)
    print(f"{result['seconds']} s, {result['threads']} threads, torch {result['torch']}, "
          f"CPU capability {result['cpu_capability']}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
