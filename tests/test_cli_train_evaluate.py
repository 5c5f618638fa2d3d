"""End to end: `facegan train --evaluate` and early stopping, through the real CLI and a real sqlite store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import TINY_TRAIN, assert_clean_error, run_id_of

pytestmark = pytest.mark.slow

# Samples per checkpoint: small, so the end-to-end runs take seconds.
SAMPLES = ["--set", "evaluate.num_samples=40"]


def metric_steps(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_train_scores_each_checkpoint_as_evaluate_would(cli, tracking_uri, tmp_path):
    env = {"FACEGAN_CACHE_DIR": str(tmp_path / "cache")}
    proc = cli("train", *TINY_TRAIN, "--epochs", 3, "--checkpoint-every", 1, "--evaluate", "random", *SAMPLES,
               "--set", "evaluate.register=e2e-train-evaluate", "--experiment", "e2e-train-evaluate",
               "--tracking-uri", tracking_uri, env=env)
    run_id = run_id_of(proc)
    assert "best checkpoint: epoch" in proc.stderr and "registered: models:/e2e-train-evaluate@best" in proc.stderr
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)  # not the registry another test left set
    assert metric_steps(client, run_id, "random/fid") == [1, 2, 3]
    tags = client.get_run(run_id).data.tags
    assert tags["facegan.num_samples.random"] == "40" and tags["facegan.stopped"] == "no"
    assert tags["facegan.evaluation_features"] == "random"
    logged = {m.step: m.value for m in client.get_metric_history(run_id, "random/fid")}
    artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/random_ranking.json", "evaluation/random_scores.png", "evaluation/random_summary.json",
            "evaluation/random_report.html"} <= artifacts
    page = Path(client.download_artifacts(run_id, "evaluation/random_report.html", str(tmp_path))).read_text()
    assert f"Chosen: epoch {tags['facegan.best_epoch']}" in page and "evidence page: " in proc.stderr
    version = client.get_model_version_by_alias("e2e-train-evaluate", "best")
    assert client.get_logged_model(version.source[len("models:/"):]).params["epoch"] == tags["facegan.best_epoch"]

    # A later `facegan evaluate` in the same space takes the run's sample count and scores nothing again.
    cli("evaluate", "--run", run_id, "--features", "random", "--json", "again.json", "--register", "none",
        "--tracking-uri", tracking_uri, "--quiet", env=env)
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["num_samples"] == 40 and metric_steps(client, run_id, "random/fid") == [1, 2, 3]
    assert {c["epoch"]: c["fid"] for c in again["checkpoints"]} == logged
    assert str(again["best_epoch"]) == tags["facegan.best_epoch"]
    # Scored again from the checkpoint files, the scores are the ones training logged.
    cli("evaluate", "--run", run_id, "--features", "random", "--force", "--json", "forced.json", "--register",
        "none", "--tracking-uri", tracking_uri, "--quiet", env=env)
    forced = json.loads((tmp_path / "forced.json").read_text())
    assert forced["checkpoints"] == again["checkpoints"]
    for checkpoint in forced["checkpoints"]:  # each checkpoint's model carries its scores
        scores = {m.key: m.value for m in client.get_logged_model(checkpoint["model_id"]).metrics}
        assert scores["random/fid"] == pytest.approx(checkpoint["fid"])


def test_stop_after_checkpoints_without_a_new_best_then_resume(cli, tracking_uri, tmp_path):
    env = {"FACEGAN_CACHE_DIR": str(tmp_path / "cache")}
    # A generator that cannot change (no batch norm, a learning rate below float32's resolution):
    # every checkpoint scores the same, so epoch 1 stays the best and patience runs out for sure.
    frozen = ["--set", 'model.g_norm="none"', "--set", "train.lr_g=1e-30"]
    proc = cli("train", *TINY_TRAIN, *frozen, "--epochs", 6, "--checkpoint-every", 1, "--evaluate", "random",
               *SAMPLES, "--stop-patience", 2, "--set", "evaluate.register=e2e-patience",
               "--experiment", "e2e-stop", "--tracking-uri", tracking_uri, env=env)
    run_id = run_id_of(proc)
    assert "stopped early at epoch 3 of 6" in proc.stderr and f"facegan train --resume {run_id}" in proc.stderr
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)  # not the registry another test left set
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["facegan.stopped"] == "patience" and run.data.tags["facegan.stopped_epoch"] == "3"
    assert "2 checkpoints without a new best" in run.data.tags["facegan.stop_reason"]
    assert run.data.tags["facegan.best_epoch"] == "1"
    assert metric_steps(client, run_id, "d_steps") == [1, 2, 3]
    assert client.get_model_version_by_alias("e2e-patience", "best") is not None

    # Resumed, patience counts again from the stop ...
    proc = cli("train", "--resume", run_id, "--tracking-uri", tracking_uri, "--quiet", env=env)
    assert "stopped early at epoch 5 of 6" in proc.stderr
    # ... and a user who disagrees turns it off.
    proc = cli("train", "--resume", run_id, "--set", "evaluate.stop_patience=none", "--tracking-uri", tracking_uri,
               "--quiet", env=env)
    assert "stopped early" not in proc.stderr
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["facegan.stopped"] == "no"
    for key in ("d_steps", "random/fid"):  # each step once, none missing
        assert [m.step for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)] == [1, 2, 3, 4, 5, 6]


def test_bad_evaluate_values_fail_before_any_training(cli, tracking_uri, tmp_path):
    cases = [
        (["--evaluate", "nonsense"], "unknown feature space 'nonsense'"),
        (["--evaluate", f"torchscript:{tmp_path / 'missing.pt'}"], "TorchScript file not found"),
        (["--stop-on-collapse"], "stopping early needs the checkpoints scored"),
        (["--evaluate", "random", "--set", "evaluate.num_samples=3"], "evaluate.num_samples must be at least 10"),
        (["--evaluate", "random", "--stop-patience", "0"], "--stop-patience"),
        (["--set", "evaluate.features=inception", "--set", f"evaluate.inception_weights={tmp_path / 'w.pth'}"],
         "Inception weights file not found"),
    ]
    for args, message in cases:
        proc = cli("train", *TINY_TRAIN, "--epochs", 2, *args, "--experiment", "e2e-bad-evaluate",
                   "--tracking-uri", tracking_uri, check=False)
        assert_clean_error(proc, message)
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)  # not the registry another test left set
    experiment = client.get_experiment_by_name("e2e-bad-evaluate")
    assert experiment is None or not client.search_runs([experiment.experiment_id])  # no run was started
