"""Training speed on 1 to N processes (torchrun, DistributedDataParallel): images/s and scaling.

For each process count it starts ``torchrun --standalone --nproc_per_node=N`` on this file's
worker, which times facegan's own training step (``GAN.step``, the DDP-wrapped networks) at the
same global minibatch, with the fixed schedule (5 critic steps, then 1 generator step) so every
count measures the same mix. Scaling efficiency is ``images/s at N / (N x images/s at 1)``.

On a GPU machine: one process per GPU (NCCL). On the CPU (gloo) the processes share the
machine's cores (each gets ``cores / N`` threads), so the figure says what the engine costs there,
not a speed-up.

Usage:
    python -m experiments.bench_distributed [--nprocs 1,2] [--device auto|cpu|cuda] [--loss wgan-gp]
        [--batch-size 64] [--seconds 20] [--set train.gp_every=4 ...]

Prints a table and, as the last line, a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

N_CRITIC = 5


def worker(args) -> None:
    """One rank: time ``GAN.step`` on its share of every global minibatch; rank 0 prints the figure."""
    import torch

    from facegan import distributed
    from facegan.config import load_config, parse_override
    from facegan.distributed import Processes
    from facegan.synthetic import synthetic_faces
    from facegan.training import EpochTotals, Schedule, build_gan, training_device

    procs = Processes.from_environment()
    distributed.start(procs)
    overrides = dict(parse_override(text) for text in args.set)
    cfg = load_config(overrides={"train.loss": args.loss, "train.schedule": "fixed", "train.n_critic": N_CRITIC,
                                 "train.batch_size": args.batch_size, "train.device": args.device,
                                 "train.world_size": procs.world_size, **overrides})
    device = training_device(cfg, procs)
    torch.manual_seed(cfg.train.seed)
    gan = build_gan(cfg, device, procs)
    schedule, totals = Schedule("fixed", N_CRITIC, cfg.train.gp_every), EpochTotals()
    images = synthetic_faces(cfg.train.batch_size * 8, cfg.model.image_size, seed=0).as_float()
    batches = [b.tensor_split(procs.world_size)[procs.rank].to(device).contiguous(memory_format=gan.memory_format)
               for b in images.split(cfg.train.batch_size)]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for i in range(N_CRITIC + 1):  # warm-up: one whole cycle
        gan.step(batches[i % len(batches)], schedule, totals)
    sync()
    done, started = 0, time.perf_counter()
    while True:
        gan.step(batches[done % len(batches)], schedule, totals)
        done += 1
        if done % (N_CRITIC + 1) == 0:  # whole cycles only; every rank decides the same
            sync()
            elapsed = torch.tensor([time.perf_counter() - started])
            distributed.sum_over_ranks(elapsed, procs)  # the same stop decision on every rank
            if elapsed.item() / procs.world_size >= args.seconds:
                break
    seconds = time.perf_counter() - started
    if procs.is_main:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(json.dumps({"world_size": procs.world_size, "images_per_s": done * cfg.train.batch_size / seconds,
                          "device": name, "threads_per_process": torch.get_num_threads()}), flush=True)
    distributed.stop(procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nprocs", default="1,2", help="process counts to measure, e.g. 1,2,4,8")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--loss", default="wgan-gp")
    parser.add_argument("--batch-size", type=int, default=64, help="the global minibatch")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from experiments import provenance

    provenance.announce(__spec__.name)
    cores = os.cpu_count() or 1
    results = []
    print(f"{'processes':>9} {'images/s':>9} {'scaling':>8}  device", flush=True)
    for n in (int(x) for x in args.nprocs.split(",")):
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // n))}
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                   str(Path(__file__).resolve()), "--worker", "--device", args.device, "--loss", args.loss,
                   "--batch-size", str(args.batch_size), "--seconds", str(args.seconds),
                   *[f"--set={s}" for s in args.set]]
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"{n} processes failed:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(result)
        first = results[0]  # efficiency against the first count's speed per process
        result["scaling_efficiency"] = round((result["images_per_s"] / n) / (first["images_per_s"] / first["world_size"]), 3)
        print(f"{n:9d} {result['images_per_s']:9.1f} {result['scaling_efficiency']:8.2f}  {result['device']}"
              f" ({result['threads_per_process']} threads each)", flush=True)
    print(json.dumps({"loss": args.loss, "batch_size": args.batch_size, "set": args.set, "results": results}))


if __name__ == "__main__":
    main()
