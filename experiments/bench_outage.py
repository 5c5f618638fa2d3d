"""A team server that goes away mid-run: what it costs training, and what reaches the store.

The procedure of issue 17, as a new user would meet it: a real ``mlflow server`` on a real
PostgreSQL (a throwaway cluster; ``--backend sqlite`` for a sqlite file instead), ``facegan train``
logging to it over HTTP, the server's whole process group killed with SIGKILL once the run has
logged ``--kill-after`` epochs, restarted ``--outage`` seconds later on the same port and store.
Then, from the store:

- per-epoch wall time (the gaps between the trainer's own timestamps on consecutive epochs'
  metrics): the median over the run, the slowest while the server was away, their ratio
  (target <= 2);
- items lost (metric steps, sample grids, checkpoints the run should have and the store lacks;
  target 0) and items left unsent in ``facegan-unsent-<run>/`` (target 0);
- registering: seconds for ``register_choice`` (a checkpoint whose MLmodel was written by hand
  at logging, plus the registry calls) against the registry calls alone (what registering did
  before checkpoints were pyfunc models), and the seconds ``write_pyfunc_files`` adds to logging
  each checkpoint.

Usage::

    python -m experiments.bench_outage [--outage 50] [--kill-after 20] [--epochs 300] [--backend postgresql]

Prints a table and, as its last line, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments import provenance
from experiments.servers import MlflowServer, PostgreSQL  # the team tests' real servers: one way to start them

CHECKPOINT_EVERY, SAMPLE_EVERY = 30, 10


def facegan_command() -> list[str]:
    installed = Path(sys.executable).with_name("facegan")
    return [str(installed)] if installed.is_file() else [sys.executable, "-m", "facegan"]


def train_command(url: str, epochs: int) -> list[str]:
    # About a quarter of a second an epoch on 2 CPU cores: the epochs of the original measurement.
    return [*facegan_command(), "train", "--data", "synthetic", "--num-images", "256", "--image-size", "32",
            "--batch-size", "32", "--set", "model.g_width=16", "--set", "model.d_width=16",
            "--set", "model.latent_dim=32", "--set", "tracking.num_samples=64", "--device", "cpu", "--quiet",
            "--epochs", str(epochs), "--set", f"tracking.checkpoint_every={CHECKPOINT_EVERY}",
            "--set", f"tracking.sample_every={SAMPLE_EVERY}", "--experiment", "bench-outage", "--tracking-uri", url]


def outage_run(backend_uri: str, artifacts: Path, folder: Path, *, epochs: int, kill_after: int, outage: float,
               nice: int = 0) -> dict:
    from mlflow import MlflowClient

    server = MlflowServer(backend_uri, artifacts, nice=nice).start()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    training = subprocess.Popen(train_command(server.url, epochs), cwd=folder, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = MlflowClient(server.url)
    run_id = None
    while run_id is None:
        if training.poll() is not None:
            raise SystemExit(f"facegan train ended before the kill:\n{training.stderr.read()[-3000:]}")
        experiment = client.get_experiment_by_name("bench-outage")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if runs and runs[0].data.metrics.get("d_steps") is not None:
            history = client.get_metric_history(runs[0].info.run_id, "d_steps")
            if max(m.step for m in history) >= kill_after:
                run_id = runs[0].info.run_id
        time.sleep(0.2)
    server.kill()
    killed_at = time.time()
    print(f"  server killed (SIGKILL, process group) at epoch >= {kill_after}; away for {outage:.0f} s", flush=True)
    time.sleep(outage)
    restart_at = time.time()
    server.start()
    back_at = time.time()
    print("  server restarted; waiting for training to finish", flush=True)
    _, stderr = training.communicate(timeout=3600)
    server.stop()
    if training.returncode != 0:
        raise SystemExit(f"facegan train failed:\n{stderr[-3000:]}")

    server = MlflowServer(backend_uri, artifacts).start()
    try:
        client = MlflowClient(server.url)
        history = {m.step: m.timestamp / 1000 for m in client.get_metric_history(run_id, "d_steps")}
        steps = sorted(history)
        gaps = [(history[steps[i - 1]], history[steps[i]] - history[steps[i - 1]]) for i in range(1, len(steps))]
        during = [gap for start, gap in gaps if killed_at <= start <= back_at]
        # The server's own start-up (seconds of CPU for its imports and the store's checks) shares
        # this machine's 2 cores with the trainer: the epochs while it starts are reported apart.
        away = [gap for start, gap in gaps if killed_at <= start < restart_at - 1]
        slowest_at = max(((gap, start) for start, gap in gaps if killed_at <= start <= back_at), default=(0, 0))[1]
        median = statistics.median(gap for _, gap in gaps)
        models = client.search_logged_models(experiment_ids=[client.get_run(run_id).info.experiment_id],
                                             filter_string=f"source_run_id = '{run_id}'")
        grids = set()
        for info in client.list_artifacts(run_id, "images"):
            parts = info.path.split("/")[-1].split("+")
            if len(parts) > 2 and parts[0] == "samples" and parts[1] == "step":
                grids.add(int(parts[2]))
        expected_checkpoints = set(range(CHECKPOINT_EVERY, epochs + 1, CHECKPOINT_EVERY)) | {epochs}
        expected_grids = {0, *range(SAMPLE_EVERY, epochs + 1, SAMPLE_EVERY), epochs}
        ready = {int(m.params["epoch"]) for m in models if m.status.name == "READY"}
        unsent = folder / f"facegan-unsent-{run_id}"
        result = {
            "run_id": run_id, "epochs": epochs, "outage_s": round(back_at - killed_at, 1),
            "median_epoch_s": round(median, 3), "epochs_during_outage": len(during),
            "slowest_epoch_during_outage_s": round(max(during), 3) if during else None,
            "slowest_over_median": round(max(during) / median, 2) if during else None,
            "slowest_at_s_after_kill": round(slowest_at - killed_at, 1),
            "server_restart_s": round(back_at - restart_at, 1),
            "slowest_before_restart_s": round(max(away), 3) if away else None,
            "slowest_before_restart_over_median": round(max(away) / median, 2) if away else None,
            "lost_metric_steps": len(set(range(1, epochs + 1)) - set(steps)),
            "duplicate_metric_steps": len(client.get_metric_history(run_id, "d_steps")) - len(steps),
            "lost_grids": len(expected_grids - grids), "lost_checkpoints": len(expected_checkpoints - ready),
            "duplicate_checkpoints": len(models) - len({m.name for m in models}),
            "left_unsent": len(list(unsent.iterdir())) if unsent.is_dir() else 0,
            "status": client.get_run(run_id).info.status,
            "registering": registering(client, run_id, folder),
        }
    finally:
        server.stop()
    return result


def registering(client, run_id: str, folder: Path, repeats: int = 3) -> dict:
    """Seconds to register a checkpoint, now (pyfunc files already there) and the registry calls alone."""
    import mlflow

    from facegan import tracking

    mlflow.set_tracking_uri(client.tracking_uri)
    mlflow.set_registry_uri(client.tracking_uri)
    ref = tracking.run_checkpoints(client, run_id)[-1]
    now, calls_alone = [], []
    for i in range(repeats):
        started = time.perf_counter()
        candidate = tracking.Candidate(ref.model_id, run_id, ref.epoch, "bench", "data", 1, 1.0)
        tracking.register_choice(client, f"bench-outage-now-{i}-{int(time.time())}", candidate)
        now.append(time.perf_counter() - started)
        started = time.perf_counter()
        name = f"bench-outage-registry-only-{i}-{int(time.time())}"
        with contextlib.redirect_stderr(io.StringIO()):  # MLflow's "Successfully registered" lines
            version = mlflow.register_model(f"models:/{ref.model_id}", name)
        client.set_registered_model_alias(name, "best", version.version)
        calls_alone.append(time.perf_counter() - started)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        for _ in range(20):
            tracking.write_pyfunc_files(Path(tmp))
        write_s = (time.perf_counter() - started) / 20
    return {"register_choice_s": round(statistics.median(now), 3),
            "registry_calls_alone_s": round(statistics.median(calls_alone), 3),
            "write_pyfunc_files_s": round(write_s, 4)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage", type=float, default=50.0, help="seconds the server stays away")
    parser.add_argument("--kill-after", type=int, default=20, help="epochs logged before the kill")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--nice-server", type=int, default=0, metavar="N",
                        help="run the server at this nice level (on a machine the trainer shares with it)")
    args = parser.parse_args(argv)
    provenance.announce(__spec__.name, argv)
    with tempfile.TemporaryDirectory(prefix="facegan-bench-outage-") as tmp:
        folder = Path(tmp)
        (folder / "artifacts").mkdir()
        postgres = PostgreSQL().start() if args.backend == "postgresql" else None
        try:
            backend = postgres.create_database("mlflow") if postgres else f"sqlite:///{folder / 'mlflow.db'}"
            print(f"mlflow server on {args.backend}; facegan train for {args.epochs} epochs", flush=True)
            result = outage_run(backend, folder / "artifacts", folder, epochs=args.epochs,
                                kill_after=args.kill_after, outage=args.outage, nice=args.nice_server)
        finally:
            if postgres:
                postgres.stop()
    result["backend"] = args.backend
    print(f"median epoch {result['median_epoch_s']} s; slowest while the server was away "
          f"{result['slowest_epoch_during_outage_s']} s ({result['slowest_over_median']}x, target <= 2) over "
          f"{result['epochs_during_outage']} epochs of a {result['outage_s']} s outage (at {result['slowest_at_s_after_kill']} s "
          f"after the kill; the server's restart took {result['server_restart_s']} s); before the restart began: slowest "
          f"{result['slowest_before_restart_s']} s ({result['slowest_before_restart_over_median']}x)")
    print(f"lost: {result['lost_metric_steps']} metric steps, {result['lost_grids']} grids, "
          f"{result['lost_checkpoints']} checkpoints (target 0); left unsent: {result['left_unsent']} (target 0); "
          f"duplicates: {result['duplicate_metric_steps']} steps, {result['duplicate_checkpoints']} checkpoints; "
          f"run {result['status']}")
    r = result["registering"]
    print(f"registering: {r['register_choice_s']} s (registry calls alone {r['registry_calls_alone_s']} s); "
          f"MLmodel files per checkpoint {r['write_pyfunc_files_s'] * 1000:.1f} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
