"""A short correctness check of training on a GPU (or the CPU): every objective, fp32 and bf16.

Trains the default 80x80 networks for a few epochs on synthetic faces with an in-memory tracker
and checks that losses are finite, that the samples move away from their initial state, that a
resumed run matches a straight one, and reports images/s. Prints one JSON object last.

On a GPU the step is captured as CUDA graphs (``train.compile = auto``); ``--compile off`` checks
the eager step. ``experiments/check_gpu_step.py`` checks the captured step against the eager one.

Usage: python -m experiments.check_gpu_training [--device cuda] [--epochs 3] [--compile auto|off|cuda-graphs]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from facegan.checkpoint import load_checkpoint
from facegan.config import load_config
from facegan.synthetic import synthetic_faces
from facegan.run_tracker import MemoryTracker
from facegan.common import select_device
from facegan.training import cpu_has_native_bf16, train

from experiments import provenance


def run(loss, bf16, epochs, faces, device, resume_at=None, compile_mode="auto"):
    overrides = {"train.loss": loss, "train.epochs": epochs, "train.device": device, "train.bf16": bf16,
                 "tracking.resume_every": resume_at or 10, "train.schedule": "fixed", "train.compile": compile_mode}
    cfg = load_config(overrides=overrides)
    tracker = MemoryTracker()
    if resume_at:
        cfg.train.epochs = resume_at
        train(cfg, faces, tracker, progress=False)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "state.pt"
            path.write_bytes(tracker.resume_state)
            payload = load_checkpoint(path, kind="resume")
        cfg.train.epochs = epochs
        train(cfg, faces, tracker, resume_payload=payload, progress=False)
    else:
        train(cfg, faces, tracker, progress=False)
    return tracker


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-images", type=int, default=1024)
    parser.add_argument("--compile", default="auto", choices=["auto", "off", "cuda-graphs"])
    args = parser.parse_args()
    provenance.announce(__spec__.name)
    device = select_device(args.device).type
    faces = synthetic_faces(args.num_images, 80, seed=0)
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "compile": args.compile}
    for loss in ("dcgan", "wgan", "wgan-gp"):
        for bf16 in ((False, True) if device == "cuda" or cpu_has_native_bf16() else (False,)):
            tracker = run(loss, bf16, args.epochs, faces, device, compile_mode=args.compile)
            losses = list(tracker.metrics.get("loss_d", {}).values()) + list(tracker.metrics.get("loss_g", {}).values())
            grids = tracker.images["samples"]
            change = float(np.abs(grids[max(grids)].astype(float) - grids[0].astype(float)).mean())
            key = f"{loss}{'_bf16' if bf16 else ''}"
            report[key] = {
                "finite": all(math.isfinite(v) for v in losses),
                "sample_change_from_step0": round(change, 2),
                "images_per_s_last_epoch": round(tracker.metrics["images_per_s"][args.epochs], 1),
                "loss_d_last": round(tracker.metrics["loss_d"][args.epochs], 4),
            }
            print(key, report[key], flush=True)
    straight = run("wgan-gp", False, args.epochs, faces, device, compile_mode=args.compile)
    resumed = run("wgan-gp", False, args.epochs, faces, device, resume_at=1, compile_mode=args.compile)
    a, b = straight.metrics["loss_d"], resumed.metrics["loss_d"]
    report["resume_max_abs_diff_loss_d"] = max(abs(a[e] - b[e]) for e in a)
    print("resume vs straight, max |loss_d diff|:", report["resume_max_abs_diff_loss_d"])
    print(json.dumps(report))


if __name__ == "__main__":
    main()
