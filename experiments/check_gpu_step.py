"""The GPU check of the captured training step (issue 30): every figure in one short run.

Runs on one CUDA GPU in about 7 minutes on an H200 and prints every figure, with one JSON object
as its last line. The captured step is asked for explicitly throughout (``capture=True``,
``train.compile = cuda-graphs``): a part that fails prints its traceback and is recorded as
FAILED, the other parts still run (the device time is short), and the script then exits non-zero
naming every failed part. Nothing falls back silently: a Trainer that falls back from decisions on
the GPU to decisions by the host prints a warning, and part 2 has then already failed. Parts:

1. **environment**: PyTorch, CUDA, the GPU, whether CUDA graph conditional nodes are there.
2. **captured = uncaptured**: the step captured as CUDA graphs against the same step functions run
   uncaptured (branches decided on the host), cuDNN deterministic, the same seeds: 2 epochs of 512
   faces at 80x80, minibatch 64 (+ a short last one of 32: 544 faces), every objective on the
   adaptive schedule decided on the GPU, WGAN-GP with ``gp_every = 4``, DCGAN on the fixed schedule,
   WGAN-GP decided by the host between graphs (the fallback). The epochs' figures
   and the final weights must agree to 1e-4 (relative) and the D/G step counts exactly; bit for bit
   is expected (the same kernels in the same order).
3. **no sync inside an epoch**: a captured epoch under ``torch.cuda.set_sync_debug_mode("warn")``
   must make exactly one synchronising call, the epoch's one read of its figures.
4. **speed**: ``experiments/bench_train.py``'s figures without its bf16 and lazy-penalty rows:
   the tutorial's loop (minibatch 20), the eager and the captured step at 20, 64 and 256 (the
   same 5 D : 1 G mix), and the captured adaptive step at 64, decided on the GPU and by the host.
5. **end to end**: ``experiments/time_tutorial_run.py``: the tutorial's WGAN-GP run (80x80, 2000
   faces, minibatch 64, adaptive, a grid every epoch, a checkpoint every 100 judged in the inception
   space), ``--e2e-epochs`` measured and extrapolated to 10000; the eager step for comparison.
6. **quality**: WGAN-GP (adaptive, 80x80, 2000 faces, minibatch 64), the eager and the captured
   step from the same seeds, ``--quality-epochs`` each; FID in the ``random`` space on 2000
   samples, against one FID's spread over fresh latents and the eager runs' spread over seeds (the
   two steps draw their random numbers in different orders, see ``facegan/step_graphs.py``, so
   their runs part like two seeds').

Needs torch-fidelity for part 5 (the FID Inception network); the GPU machines here lack it. Before
the call, in the repository root::

    echo /.gpu_carry/ >> .git/info/exclude
    mkdir -p .gpu_carry && cp -r "$(python -c 'import torch_fidelity, os; print(os.path.dirname(torch_fidelity.__file__))')" .gpu_carry/

then run, carrying ``.gpu_carry``::

    PYTHONPATH=$PWD/.gpu_carry:$PWD PYTHONUNBUFFERED=1 python3 -m experiments.check_gpu_step

Save the output as ``experiments/results/check_gpu_step_<gpu>.txt``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
import warnings

import torch

from experiments import bench_train, provenance, time_tutorial_run
from facegan.config import load_config
from facegan.step_graphs import StepGraphs, conditional_nodes_missing
from facegan.synthetic import synthetic_faces
from facegan.training import Schedule, build_gan

SMALL_EPOCHS, SMALL_IMAGES, BATCH = 2, 544, 64
CASES = [("dcgan", "adaptive", 1, "device"), ("wgan", "adaptive", 1, "device"), ("wgan-gp", "adaptive", 1, "device"),
         ("wgan-gp", "adaptive", 4, "device"), ("dcgan", "fixed", 1, "host"), ("wgan-gp", "adaptive", 1, "host")]
TOLERANCE = 1e-4


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def small_run(loss, schedule, gp_every, capture, images, device, decide_on="device"):
    cfg = load_config(overrides={"train.loss": loss, "train.schedule": schedule, "train.gp_every": gp_every,
                                 "train.batch_size": BATCH, "train.device": "cuda"})
    t = cfg.train
    torch.manual_seed(0)
    gan = build_gan(cfg, device)
    graphs = StepGraphs(gan, t.schedule, t.n_critic, t.gp_every, tuple(images.shape[1:]), device, capture=capture,
                        decide_on=decide_on)
    state = Schedule(t.schedule, t.n_critic, t.gp_every)
    metrics = []
    for epoch in range(SMALL_EPOCHS):
        order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(epoch))
        metrics.append(graphs.run_epoch(images, order, BATCH, state).metrics(1.0))
    weights = [p.detach().clone() for p in gan.generator.parameters()] + \
              [p.detach().clone() for p in gan.discriminator.parameters()]
    return metrics, weights, graphs, state


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def check_captured_equals_uncaptured(images, device) -> dict:
    torch.backends.cudnn.deterministic = True
    report, failures = {}, []
    try:
        for loss, schedule, gp_every, decide_on in CASES:
            name = f"{loss}-{schedule}" + (f"-gp{gp_every}" if gp_every > 1 else "") + \
                (f"-decided-on-{decide_on}" if schedule == "adaptive" else "")
            reference, ref_weights, _, _ = small_run(loss, schedule, gp_every, False, images, device, decide_on)
            captured, cap_weights, _, _ = small_run(loss, schedule, gp_every, True, images, device, decide_on)
            worst_metric = max(relative(r[k], c[k]) for r, c in zip(reference, captured) for k in r
                               if k not in ("images_per_s", "epoch_seconds"))
            worst_weight = max(((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item()
                               for a, b in zip(ref_weights, cap_weights))
            counts_equal = all((r["d_steps"], r["g_steps"]) == (c["d_steps"], c["g_steps"])
                               for r, c in zip(reference, captured))
            report[name] = {"max_relative_metric_difference": worst_metric,
                            "max_relative_weight_difference": worst_weight, "step_counts_equal": counts_equal,
                            "bit_identical": worst_metric == 0 and worst_weight == 0,
                            "d_steps": [c["d_steps"] for c in captured], "g_steps": [c["g_steps"] for c in captured],
                            "loss_d": [round(c["loss_d"], 5) for c in captured]}
            print(name, report[name], flush=True)
            if not counts_equal or worst_metric > TOLERANCE or worst_weight > TOLERANCE:
                failures.append(name)
    finally:
        torch.backends.cudnn.deterministic = False
    if failures:
        raise SystemExit(f"FAILED: the captured step differs from the uncaptured one in {failures}")
    return report


def check_no_sync(images, device) -> dict:
    _, _, graphs, state = small_run("wgan-gp", "adaptive", 1, True, images, device)
    order = torch.randperm(images.shape[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            graphs.run_epoch(images, order, BATCH, state)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
    minibatches = -(-images.shape[0] // BATCH)
    result = {"minibatches": minibatches, "synchronising_calls": len(syncs), "messages": syncs[:5]}
    print(result, flush=True)
    if len(syncs) != 1:
        raise SystemExit(f"FAILED: a captured epoch made {len(syncs)} synchronising calls; expected 1 (its one read)")
    return result


def quality(device, epochs: int, seeds: list[int]) -> dict:
    from evaluation.engine import Scorer
    from evaluation.sources import GeneratorCheckpoint
    from facegan.config import ScoringOptions
    from facegan.scoring import make_extractor, real_images
    from facegan.run_tracker import MemoryTracker
    from facegan.training import Trainer

    faces = synthetic_faces(2000, 80, seed=0)
    scorer = Scorer(make_extractor(ScoringOptions("random", device=str(device))), real_images(faces), 2000, device=device)
    rows, spreads = [], []
    for seed in seeds:
        for mode in ("off", "cuda-graphs"):
            cfg = load_config(overrides={"train.loss": "wgan-gp", "train.seed": seed, "train.device": "cuda",
                                         "train.compile": mode, "data.num_images": 2000})
            trainer = Trainer(cfg, faces, MemoryTracker(), progress=False)
            started, d_steps, g_steps = time.perf_counter(), 0, 0
            for _ in range(epochs):
                totals = trainer.run_epoch()
                d_steps, g_steps = d_steps + totals.d_steps, g_steps + totals.g_steps
            seconds = time.perf_counter() - started
            fid = scorer.score(GeneratorCheckpoint(epochs, trainer.gan.generator))[0]["fid"]
            fresh = [scorer.score(GeneratorCheckpoint(0, trainer.gan.generator, seed=1000 + k))[0]["fid"] for k in range(3)]
            spreads.append(statistics.stdev(fresh))
            row = {"seed": seed, "compile": mode, "epochs": epochs, "seconds": round(seconds, 1), "fid": round(fid, 3),
                   "d_steps": d_steps, "g_steps": g_steps}
            rows.append(row)
            print(row, flush=True)
    eager = {r["seed"]: r["fid"] for r in rows if r["compile"] == "off"}
    captured = {r["seed"]: r["fid"] for r in rows if r["compile"] == "cuda-graphs"}
    summary = {"fid_difference_captured_minus_eager": [round(captured[s] - eager[s], 3) for s in seeds],
               "fid_resampling_sd": round(statistics.mean(spreads), 3),
               "fid_eager_sd_over_seeds": round(statistics.stdev(eager.values()), 3) if len(seeds) > 1 else None}
    print(summary, flush=True)
    return {"rows": rows, "summary": summary}


def speed(device, seconds: float) -> dict:
    faces = synthetic_faces(640, 80, seed=0).images
    result = {}
    for loss in ("dcgan", "wgan", "wgan-gp"):
        r = bench_train.bench_loss(loss, device, seconds, faces, (20, 64, 256), extras=False)
        result[loss] = r
        print(loss, json.dumps(r), flush=True)
    print(f"{'objective':10} {'tutorial':>9} " + " ".join(f"{h:>15}" for h in (
        "eager b20", "eager b64", "eager b256", "captured b20", "captured b64", "captured b256", "adaptive b64",
        "host-dec. b64")))
    for loss, r in result.items():
        cells = [r.get(k) for k in ("facegan_batch20_images_per_s", "facegan_images_per_s", "facegan_batch256_images_per_s",
                                    "captured_batch20_images_per_s", "captured_images_per_s",
                                    "captured_batch256_images_per_s", "captured_adaptive_images_per_s",
                                    "captured_adaptive_host_images_per_s")]
        print(f"{loss:10} {r['tutorial_images_per_s']:9.0f} " + " ".join(
            f"{c:8.0f} ({c / r['tutorial_images_per_s']:4.1f}x)" if c else f"{'-':>15}" for c in cells), flush=True)
    return result


def end_to_end(epochs: int, eager_epochs: int) -> dict:
    import tempfile
    from pathlib import Path

    common = {"device": "cuda", "batch_size": 64, "image_size": 80, "num_images": 2000, "checkpoint_every": 100,
              "features": "inception", "total_epochs": 10000}
    with tempfile.TemporaryDirectory() as tmp:
        weights = str(time_tutorial_run.random_inception_weights(Path(tmp)))
        captured = time_tutorial_run.measure(**common, epochs=epochs, compile_mode="cuda-graphs",
                                             inception_weights=weights, judge=True)
        print(captured, flush=True)
        eager = time_tutorial_run.measure(**common, epochs=eager_epochs, compile_mode="off",
                                          inception_weights=weights, judge=False,
                                          judge_extra=captured["judge_extra_seconds"])
        print(eager, flush=True)
    return {"captured": captured, "eager": eager}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench-seconds", type=float, default=2.5)
    parser.add_argument("--e2e-epochs", type=int, default=200)
    parser.add_argument("--e2e-eager-epochs", type=int, default=30)
    parser.add_argument("--quality-epochs", type=int, default=40)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--skip", default="", help="parts to leave out, e.g. speed,e2e,quality")
    args = parser.parse_args()
    provenance.announce(__spec__.name)
    skip = set(filter(None, args.skip.split(",")))
    if not torch.cuda.is_available():
        raise SystemExit("FAILED: no CUDA device; this check is for a GPU")
    device = torch.device("cuda")
    started = time.perf_counter()
    report, failed = {}, []

    def part(key: str, title: str, run) -> None:
        """Run one part; a failure is printed in full and recorded, and the other parts still run
        (the device time is short): the script then ends with a non-zero exit naming every failure."""
        if key in skip:
            return
        section(title)
        try:
            report[key] = run()
        except (Exception, SystemExit) as exc:  # noqa: BLE001  (reported, and fails the run at the end)
            traceback.print_exc()
            report[key] = {"FAILED": f"{type(exc).__name__}: {exc}"}
            failed.append(key)
            print(f"FAILED: {key}: {type(exc).__name__}: {exc}", flush=True)

    images = synthetic_faces(SMALL_IMAGES, 80, seed=0).images.to(device)
    part("environment", "1. environment", lambda: {
        "torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(),
        "cudnn": torch.backends.cudnn.version(), "conditional_nodes": conditional_nodes_missing() or "yes"})
    print(report.get("environment"), flush=True)
    part("captured_equals_uncaptured", "2. the captured step against the same functions uncaptured (cuDNN deterministic)",
         lambda: check_captured_equals_uncaptured(images, device))
    part("sync", "3. host syncs in a captured epoch", lambda: check_no_sync(images, device))
    part("speed", "4. speed: images/s (same 5 D : 1 G mix; the tutorial's loop at minibatch 20)",
         lambda: speed(device, args.bench_seconds))
    part("e2e", "5. end to end: the tutorial's WGAN-GP run, measured and extrapolated to 10000 epochs",
         lambda: end_to_end(args.e2e_epochs, args.e2e_eager_epochs))
    part("quality", "6. quality: FID after the same training, eager and captured",
         lambda: quality(device, args.quality_epochs, [int(s) for s in args.seeds.split(",")]))
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["failed"] = failed
    print(json.dumps(report))
    if failed:
        raise SystemExit(f"FAILED parts: {', '.join(failed)}")


if __name__ == "__main__":
    main()
