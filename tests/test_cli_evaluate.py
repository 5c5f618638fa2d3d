"""End to end: `facegan evaluate` on a real training run (sqlite store) and on sample folders."""

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from conftest import TINY_TRAIN, assert_clean_error, run_id_of
from facegan.synthetic import SYNTHETIC_ATTRIBUTES, render_faces, synthetic_faces

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_run(tracking_uri, tmp_path_factory):
    """A tiny 4-epoch run with a checkpoint every epoch."""
    import subprocess

    from conftest import FACEGAN

    cwd = tmp_path_factory.mktemp("train")
    proc = subprocess.run([FACEGAN, "train", *TINY_TRAIN, "--epochs", "4", "--checkpoint-every", "1",
                           "--experiment", "e2e-evaluate", "--tracking-uri", tracking_uri],
                          cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return run_id_of(proc)


def test_evaluate_run_logs_scores_tags_and_registers_the_choice(cli, tracking_uri, trained_run, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setenv("FACEGAN_CACHE_DIR", str(tmp_path / "cache"))
    env = {"FACEGAN_CACHE_DIR": str(tmp_path / "cache")}
    proc = cli("evaluate", "--run", trained_run, "--features", "random", "--num-samples", 40,
               "--json", "out.json", "--tracking-uri", tracking_uri, "--quiet", env=env)
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["features"] == "random"
    assert [c["epoch"] for c in result["checkpoints"]] == [1, 2, 3, 4]
    for c in result["checkpoints"]:
        for key in ("fid", "kid", "coverage", "diversity", "precision", "recall", "collapsed"):
            assert key in c
    assert result["best_epoch"] in (1, 2, 3, 4)
    assert result["collapse_epoch"] is None or result["collapse_epoch"] in (1, 2, 3, 4)
    assert "not comparable with published FIDs" in proc.stdout
    assert "<- best" in proc.stdout

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)  # not the registry another test left set
    history = client.get_metric_history(trained_run, "random/fid")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    by_epoch = {c["epoch"]: c for c in result["checkpoints"]}
    for metric in history:
        assert metric.value == pytest.approx(by_epoch[metric.step]["fid"])
    for checkpoint in result["checkpoints"]:  # each checkpoint's model carries its own scores
        model = client.get_logged_model(checkpoint["model_id"])
        assert model.params["epoch"] == str(checkpoint["epoch"])
        scores = {m.key: m.value for m in model.metrics}
        assert scores["random/fid"] == pytest.approx(checkpoint["fid"])
        assert {"random/diversity", "random/coverage"} <= set(scores)
    tags = client.get_run(trained_run).data.tags
    assert tags["facegan.best_epoch"] == str(result["best_epoch"])
    assert tags["facegan.collapse_epoch"] == str(result["collapse_epoch"] or "none")
    artifacts = {a.path for a in client.list_artifacts(trained_run, "evaluation")}
    assert {"evaluation/random_ranking.json", "evaluation/random_scores.png", "evaluation/random_report.html"} <= artifacts
    page = client.download_artifacts(trained_run, "evaluation/random_report.html", str(tmp_path))
    assert f"Chosen: epoch {result['best_epoch']}" in Path(page).read_text()
    assert "evidence page: " in proc.stdout and "evaluation/random_report.html" in proc.stdout
    version = client.get_model_version_by_alias("facegan-generator", "best")
    assert version.source.startswith("models:/m-")
    assert client.get_logged_model(version.source[len("models:/"):]).params["epoch"] == str(result["best_epoch"])

    # Idempotent: a second call scores nothing again, and says so; --force does.
    proc = cli("evaluate", "--run", trained_run, "--features", "random", "--num-samples", 40,
               "--tracking-uri", tracking_uri, "--quiet", env=env)
    assert len(client.get_metric_history(trained_run, "random/fid")) == 4
    assert proc.stderr.splitlines() == ["all 4 checkpoints were already scored in random at 40 samples; nothing new "
                                        "was scored (--force scores them again)"], proc.stderr
    # Against other real images the logged scores are not these: scored again, not reused.
    proc = cli("evaluate", "--run", trained_run, "--features", "random", "--num-samples", 40, "--real", "synthetic",
               "--json", "other_real.json", "--tracking-uri", tracking_uri, "--quiet", env=env)
    assert len(client.get_metric_history(trained_run, "random/fid")) == 8
    assert "already scored" not in proc.stderr, proc.stderr
    assert json.loads((tmp_path / "other_real.json").read_text())["real_digest"] != result["real_digest"]
    cli("evaluate", "--run", "latest", "--features", "random", "--num-samples", 40, "--force",
        "--json", "forced.json", "--tracking-uri", tracking_uri, "--quiet", env=env)
    assert len(client.get_metric_history(trained_run, "random/fid")) == 12
    forced = json.loads((tmp_path / "forced.json").read_text())
    assert forced["checkpoints"] == result["checkpoints"]  # same latents, same features: same scores

    # A damaged checkpoint is reported and skipped; the others still count.
    damaged = next(c for c in result["checkpoints"] if c["epoch"] == 3)
    location = client.get_logged_model(damaged["model_id"]).artifact_location
    (Path(location.replace("file://", "")) / "generator.pt").write_bytes(b"truncated")
    proc = cli("evaluate", "--run", trained_run, "--features", "random", "--num-samples", 40, "--force",
               "--json", "again.json", "--tracking-uri", tracking_uri, "--quiet", env=env)
    again = json.loads((tmp_path / "again.json").read_text())
    assert [c["epoch"] for c in again["checkpoints"]] == [1, 2, 4]
    assert again["skipped"][0]["checkpoint"] == "generator-epoch-0003"
    assert "skipping generator-epoch-0003" in proc.stderr
    # The warning names the run and the epoch, not the scratch file the artifact was downloaded to.
    warning = next(line for line in proc.stderr.splitlines() if "skipping generator-epoch-0003" in line)
    assert warning == (f"warning: skipping generator-epoch-0003: checkpoint generator-epoch-0003 (epoch 3) of run "
                       f"{trained_run} is not a readable facegan checkpoint: it is not a PyTorch file"), warning
    assert "facegan-evaluate-" not in proc.stderr

    # Trained on, the run's new checkpoint is scored and the others kept, and the line says how many.
    logged = len(client.get_metric_history(trained_run, "random/fid"))
    cli("train", "--resume", trained_run, "--epochs", 5, "--tracking-uri", tracking_uri, "--quiet")
    proc = cli("evaluate", "--run", trained_run, "--features", "random", "--num-samples", 40, "--json", "resumed.json",
               "--tracking-uri", tracking_uri, "--quiet", env=env)
    assert ("4 of 5 checkpoints were already scored in random at 40 samples and kept; 1 was scored now "
            "(--force scores all again)") in proc.stderr.splitlines(), proc.stderr
    assert [c["epoch"] for c in json.loads((tmp_path / "resumed.json").read_text())["checkpoints"]] == [1, 2, 3, 4, 5]
    history = client.get_metric_history(trained_run, "random/fid")
    assert len(history) == logged + 1 and max(m.step for m in history) == 5

    # The registered choice feeds `facegan generate`.
    out = tmp_path / "faces"
    cli("generate", "--model", "models:/facegan-generator@best", "-n", 4, "--out", out,
        "--tracking-uri", tracking_uri)
    assert len(list(out.glob("0*.png"))) == 4


def write_folder(folder, images):
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(np.transpose(image, (1, 2, 0))).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Real faces and per-epoch sample folders with a planted collapse and planted mode dropping.

    Epochs 1-4 hold distinct faces of all kinds (a different seed from the real set); from
    epoch 5 the "collapse" folders repeat 4 distinct faces, the "dropping" folders hold distinct
    faces from only 2 of the 96 attribute combinations.
    """
    root = tmp_path_factory.mktemp("planted")
    real = synthetic_faces(300, 32, seed=0)
    write_folder(root / "real", real.images.numpy())
    rng = np.random.default_rng(1)
    for name in ("collapse", "dropping"):
        for epoch in range(1, 5):
            write_folder(root / name / str(epoch * 10), synthetic_faces(150, 32, seed=100 + epoch).images.numpy())
    for epoch in (50, 60, 70):
        few = synthetic_faces(4, 32, seed=200 + epoch).images.numpy()
        write_folder(root / "collapse" / str(epoch), np.repeat(few, 38, axis=0)[:150])
        attributes = {name: rng.integers(0, 2, 150) if name == "skin" else np.zeros(150, int)
                      for name in SYNTHETIC_ATTRIBUTES}
        write_folder(root / "dropping" / str(epoch), render_faces(attributes, 32, rng))
    # "late": the same good epochs, then a single collapsed checkpoint at the end.
    for epoch in range(1, 5):
        write_folder(root / "late" / str(epoch * 10), synthetic_faces(150, 32, seed=100 + epoch).images.numpy())
    write_folder(root / "late" / "50", np.repeat(synthetic_faces(4, 32, seed=250).images.numpy(), 38, axis=0)[:150])
    (root / "collapse" / "notes").mkdir()
    (root / "collapse" / "80").mkdir()  # an empty epoch folder
    return root


@pytest.mark.parametrize("kind", ["collapse", "dropping"])
def test_samples_mode_finds_the_planted_onset(cli, planted, tmp_path, kind):
    proc = cli("evaluate", "--samples", planted / kind, "--real", planted / "real", "--features", "random",
               "--json", "out.json", "--report", "pages", "--quiet", env={"FACEGAN_CACHE_DIR": str(tmp_path / "cache")})
    result = json.loads((tmp_path / "out.json").read_text())
    page = (tmp_path / "pages" / "random_report.html").read_text()
    assert "evidence page: pages/random_report.html" in proc.stdout
    assert f"Chosen: epoch {result['best_epoch']}" in page and "Near-identical samples: epoch 50" in page
    assert result["collapse_epoch"] == 50, proc.stdout
    assert result["passing_collapse_epochs"] == []  # the planted collapse lasts to the end
    assert result["best_epoch"] in (10, 20, 30, 40)
    scores = {c["epoch"]: c for c in result["checkpoints"]}
    if kind == "collapse":
        assert scores[50]["duplicate_share"] > 0.9 > scores[40]["duplicate_share"]
        assert "ignoring" in proc.stderr and "notes" in proc.stderr
        assert any("80" in s["checkpoint"] for s in result["skipped"])
    else:
        assert scores[50]["coverage"] < scores[40]["coverage"] - 0.2
        assert scores[50]["recall"] < scores[40]["recall"]
        assert scores[50]["precision"] > 0.5 * scores[40]["precision"]


def test_real_synthetic_is_the_built_in_faces_with_their_held_out_renders(cli, planted, tmp_path):
    import torch

    from evaluation.encoder import Encoder, save_encoder

    # A tiny random feature network: the 2000 real faces and 1000 held-out ones embed in seconds.
    torch.manual_seed(0)
    save_encoder(Encoder(width=4), tmp_path / "tiny.pt2")
    env = {"FACEGAN_CACHE_DIR": str(tmp_path / "cache")}
    # The same faces by another road: `prepare synthetic` at the samples' size, with 1000 held out.
    cli("prepare", "synthetic", "--out", "real.pt", "--size", 32, "--holdout", 1000, "--quiet")
    args = ("evaluate", "--samples", planted / "late", "--features", f"export:{tmp_path / 'tiny.pt2'}", "--quiet")
    # Before: "--real synthetic: no such file or folder".
    proc = cli(*args, "--real", "synthetic", "--json", "synthetic.json", env=env)
    cli(*args, "--real", "real.pt", "--json", "file.json", env=env)
    built_in = json.loads((tmp_path / "synthetic.json").read_text())
    assert built_in == json.loads((tmp_path / "file.json").read_text())
    assert "from held-out real images (1000)" in proc.stdout  # the copying check's chance level


def test_real_features_are_cached_on_disk(cli, planted, tmp_path):
    env = {"FACEGAN_CACHE_DIR": str(tmp_path / "cache")}
    args = ("evaluate", "--samples", planted / "collapse", "--real", planted / "real", "--features", "random", "--quiet")
    first = cli(*args, env=env).stdout
    cached = list((tmp_path / "cache" / "real-features").glob("*.npz"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    assert cli(*args, env=env).stdout == first
    assert cached[0].stat().st_mtime_ns == stamp  # read, not rewritten


def test_bad_evaluate_input_is_one_clear_error(cli, tracking_uri, planted, tmp_path):
    def check(args, message):
        assert_clean_error(cli("evaluate", *map(str, args), "--quiet", check=False), message)

    check(["--run", "0123456789abcdef", "--tracking-uri", tracking_uri], r"no MLflow run with id")
    check(["--samples", tmp_path / "missing", "--real", planted / "real"], r"no such folder")
    check(["--samples", planted / "collapse"], r"--samples needs --real")
    check([], r"give one of --run RUN_ID\|latest .*--experiment NAME, --samples DIR or --checkpoints PATTERN")
    empty = tmp_path / "empty"
    (empty / "5").mkdir(parents=True)
    check(["--samples", empty, "--real", planted / "real", "--features", "random"], r"no sample folder .* could be scored")
    few = tmp_path / "few"
    write_folder(few / "1", synthetic_faces(3, 32, seed=9).images.numpy())
    check(["--samples", few, "--real", planted / "real", "--features", "random"], r"metrics need at least")
    check(["--samples", planted / "collapse", "--real", planted / "real", "--features", "nope"], r"unknown feature space")
    (tmp_path / "a-file").write_text("")
    check(["--samples", planted / "collapse", "--real", planted / "real", "--report", tmp_path / "a-file"],
          r"--report .*a-file: is a file, not a folder")

    # A run without checkpoints.
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)  # not the registry another test left set
    run = client.create_run(client.create_experiment("e2e-empty"))
    check(["--run", run.info.run_id, "--tracking-uri", tracking_uri], r"has no generator checkpoints")


def test_samples_mode_a_single_drop_at_the_end_is_unconfirmed(cli, planted, tmp_path):
    proc = cli("evaluate", "--samples", planted / "late", "--real", planted / "real", "--features", "random",
               "--json", "out.json", env={"FACEGAN_CACHE_DIR": str(tmp_path / "cache")})
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["collapse_epoch"] is None, proc.stdout
    assert result["unconfirmed_drop_epoch"] == 50
    assert result["best_epoch"] in (10, 20, 30, 40)
    table_row = next(line for line in proc.stdout.splitlines() if line.strip().startswith("50 "))
    assert "drop, unconfirmed" in table_row
    assert "collapse onset: none confirmed" in proc.stdout
    assert "unconfirmed drop: from epoch 50 to the last checkpoint (duplicate share 1.000 >" in proc.stdout
