"""End to end: the tutorial's three objectives as one study (`facegan evaluate --experiment`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import TINY_TRAIN, assert_clean_error, run_id_of

pytestmark = pytest.mark.slow

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def test_the_tutorials_three_objectives_as_one_study(cli, tracking_uri, tmp_path):
    env = {"FACEGAN_CACHE_DIR": str(tmp_path / "cache")}
    runs = {}
    for config in ("tutorial_dcgan", "tutorial_wgan", "tutorial_wgan_gp"):
        proc = cli("train", "--config", EXPERIMENTS / f"{config}.toml", *TINY_TRAIN, "--epochs", 3,
                   "--checkpoint-every", 1, "--experiment", "e2e-study", "--run-name", config,
                   "--tracking-uri", tracking_uri, env=env)
        runs[config] = run_id_of(proc)
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)  # not the registry another test left set
    # One run was already scored in this space: the study takes its scores as they are.
    cli("evaluate", "--run", runs["tutorial_wgan"], "--features", "random", "--num-samples", 40, "--register", "none",
        "--tracking-uri", tracking_uri, "--quiet", env=env)
    proc = cli("evaluate", "--experiment", "e2e-study", "--features", "random", "--register", "e2e-study-best",
               "--json", "study.json", "--report", "pages", "--tracking-uri", tracking_uri, "--quiet", env=env)
    study = json.loads((tmp_path / "study.json").read_text())
    assert {r["run_id"] for r in study["runs"]} == set(runs.values())
    assert study["num_samples"] == 40  # the count the scored run had: nothing is scored twice
    assert len(client.get_metric_history(runs["tutorial_wgan"], "random/fid")) == 3
    losses = {r["name"]: r["loss"] for r in study["runs"]}
    assert losses == {"tutorial_dcgan": "dcgan", "tutorial_wgan": "wgan", "tutorial_wgan_gp": "wgan-gp"}
    for run in study["runs"]:  # every run is scored and tagged as `facegan evaluate --run` would
        tags = client.get_run(run["run_id"]).data.tags
        assert tags["facegan.best_epoch"] == str(run["best_epoch"])
        assert tags["facegan.study_run_id"] == study["study_run_id"]
        assert sorted(m.step for m in client.get_metric_history(run["run_id"], "random/fid")) == [1, 2, 3]
    best = min(study["runs"], key=lambda r: next(c["fid"] for c in r["checkpoints"] if c["epoch"] == r["best_epoch"]))
    assert study["best"] == {"run_id": best["run_id"], "epoch": best["best_epoch"],
                             "fid": next(c["fid"] for c in best["checkpoints"] if c["epoch"] == best["best_epoch"])}
    assert "<- study best" in proc.stdout and "study best: run " + best["run_id"] in proc.stdout

    summary = client.get_run(study["study_run_id"])
    assert summary.data.tags["facegan.kind"] == "study" and summary.info.status == "FINISHED"
    assert summary.data.tags["facegan.study_best_run"] == best["run_id"]
    artifacts = {a.path for a in client.list_artifacts(study["study_run_id"], "study")}
    assert artifacts == {"study/random_runs.json", "study/random_comparison.png", "study/random_summary.json",
                         "study/random_report.html"}
    # The evidence pages: the study's links to each run's, which each run also holds as an artifact.
    page = (tmp_path / "pages" / "random_report.html").read_text()
    assert "evidence page: pages/random_report.html" in proc.stdout
    for run_id in runs.values():
        assert f'href="{run_id}/random_report.html"' in page
        assert (tmp_path / "pages" / run_id / "random_report.html").is_file()
        assert "evaluation/random_report.html" in {a.path for a in client.list_artifacts(run_id, "evaluation")}
    version = client.get_model_version_by_alias("e2e-study-best", "best")
    model = client.get_logged_model(version.source[len("models:/"):])
    assert model.source_run_id == best["run_id"] and model.params["epoch"] == str(best["best_epoch"])
    # A study run is not a training run: a second study of the experiment holds the same three runs.
    cli("evaluate", "--experiment", "e2e-study", "--features", "random", "--register", "none",
        "--json", "again.json", "--tracking-uri", tracking_uri, "--quiet", env=env)
    again = json.loads((tmp_path / "again.json").read_text())
    assert {r["run_id"] for r in again["runs"]} == set(runs.values())
    assert [r["checkpoints"] for r in again["runs"]] == [r["checkpoints"] for r in study["runs"]]

    # Runs trained on other data are refused, by name.
    other = run_id_of(cli("train", *TINY_TRAIN, "--num-images", 20, "--epochs", 1, "--experiment", "e2e-study-other",
                          "--tracking-uri", tracking_uri, env=env))
    proc = cli("evaluate", "--run", runs["tutorial_dcgan"], "--run", other, "--features", "random",
               "--tracking-uri", tracking_uri, "--quiet", check=False, env=env)
    assert_clean_error(proc, "trained on different data")
    assert runs["tutorial_dcgan"] in proc.stderr and other in proc.stderr
    assert_clean_error(cli("evaluate", "--experiment", "no-such-study", "--features", "random",
                           "--tracking-uri", tracking_uri, check=False), "no experiment named 'no-such-study'")
