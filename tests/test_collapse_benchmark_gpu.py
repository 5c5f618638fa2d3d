"""The 80 x 80 part of the collapse benchmark (run on a GPU machine), here at its tiny scale on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.collapse import benchmark_gpu as gpu
from experiments.collapse import study
from test_collapse_benchmark import check_replay


@pytest.mark.slow
def test_store_free_scoring_matches_facegan_evaluate(tmp_path, monkeypatch, tracking_uri):
    """The GPU part scores checkpoints without MLflow: it must find what `score_run` finds."""
    from evaluation.engine import Scorer
    from facegan.scoring import real_images
    from evaluation.features import get_extractor
    from facegan.config import ScoringOptions
    from facegan.scoring import score_run
    from facegan.synthetic import synthetic_faces
    from facegan.tracking import MlflowRunSource, MlflowRunTracker

    monkeypatch.setenv("FACEGAN_CACHE_DIR", str(tmp_path / "cache"))
    scale = gpu.SCALES["tiny"]
    spec = scale.runs[0]
    tracker = MlflowRunTracker.start(tracking_uri, "gpu-equivalence")
    study.train_into(tracker, spec, 0, scale, {**gpu.GPU_BASE_OVERRIDES, "train.device": "cpu"})
    tracker.finish("FINISHED")
    stored = score_run(tracker.run_id, ScoringOptions("random", num_samples=scale.num_samples, device="cpu", register=None),
                       tracking_uri=tracking_uri, progress=False)

    with MlflowRunSource.open(tracking_uri, tracker.run_id) as source:
        generators = {c.epoch: c.load()[0] for c in source.checkpoints()}
    real = synthetic_faces(scale.num_train_images, gpu.IMAGE_SIZE, seed=0)
    scorer = Scorer(get_extractor("random"), real_images(real), scale.num_samples)
    direct = gpu.evaluate_generators("direct", generators, scorer)

    assert [c.epoch for c in direct.checkpoints] == [c.epoch for c in stored.checkpoints] == [1, 2, 3]
    for a, b in zip(direct.checkpoints, stored.checkpoints):
        for key in ("fid", "kid", "coverage", "diversity"):
            np.testing.assert_allclose(a.scores[key], b.scores[key], rtol=1e-5, atol=1e-7)
        assert sorted(direct.noise) == sorted(stored.noise), set(direct.noise) ^ set(stored.noise)
        assert direct.noise == pytest.approx(stored.noise)
    assert (direct.best_epoch, direct.collapse.onset_epoch) == (stored.best_epoch, stored.collapse.onset_epoch)


@pytest.mark.slow
def test_tiny_gpu_benchmark_end_to_end_on_the_cpu(tmp_path, monkeypatch, capsys, tracking_uri):
    monkeypatch.setenv("FACEGAN_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    # As on a bare GPU machine: with MLflow impossible to import (None in sys.modules).
    # `python -m experiments.collapse.benchmark_gpu --scale tiny ...` from the repository root.
    root = Path(gpu.__file__).resolve().parents[2]
    code = ("import runpy, sys; sys.modules['mlflow'] = None; "
            f"sys.argv = ['gpu', '--scale', 'tiny', '--device', 'cpu', '--out', {str(out)!r}]; "
            "runpy.run_module('experiments.collapse.benchmark_gpu', run_name='__main__', alter_sys=True)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["scale"] == "tiny-gpu80" and figures["device"] == "cpu"
    assert set(figures["spearman"]) == {"faces80/modes", "faces80/repeats"}
    assert set(figures["runs"]) == {"collapsing-seed0/random", "collapsing-seed0/encoder"}
    written = json.loads((out / "collapse_benchmark-tiny-gpu80.json").read_text())
    assert written["image_size"] == 80 and written["settings"]["encoder"]["epochs"] == 1
    assert written["ground_truth"]["faces80"]["real_set"]["num_samples"] == gpu.SCALES["tiny"].num_real
    run = written["histories"]["runs"][0]
    assert [c["epoch"] for c in run["checkpoints"]] == [1, 2, 3]
    # the picks are the checkpoints' own ground truth
    truth = {c["epoch"]: c["gt"] for c in run["checkpoints"]}
    for pick in run["picks"].values():
        assert {k: pick[k] for k in truth[pick["epoch"]]} == truth[pick["epoch"]]
    assert figures["targets"] == written["targets"]
    assert "## Training histories (faces, 80 x 80)" in (out / "collapse_benchmark-tiny-gpu80.md").read_text()
    check_replay(out / "collapse_benchmark-tiny-gpu80.json", monkeypatch, capsys)

    # Logged to MLflow afterwards, on a machine that has it.
    assert gpu.main(["--log-study", str(out / "collapse_benchmark-tiny-gpu80.json"), "--tracking-uri", tracking_uri]) is None
    run_id = capsys.readouterr().out.split("MLflow run ")[1].split()[0]
    from facegan import tracking

    client = tracking.connect(tracking_uri)
    assert client.get_run(run_id).data.params["scale"] == "tiny-gpu80"
    assert {a.path for a in client.list_artifacts(run_id)} == {"collapse_benchmark-tiny-gpu80.json",
                                                                "collapse_benchmark-tiny-gpu80.md"}


def test_gpu_benchmark_bad_input(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cases = [
        (["--device", "cuda"], "PyTorch sees no CUDA device"),
        (["--device", "tpu"], "--device must be cuda, cpu or auto"),
        (["--encoder", str(tmp_path / "missing.pt")], "no such file"),
        (["--log-study", str(tmp_path / "missing.json")], "cannot read it as JSON"),
    ]
    (tmp_path / "other.json").write_text('{"a": 1}')
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
    cases.append((["--encoder-weights", str(tmp_path / "other.pt"), "--scale", "tiny", "--device", "cpu"],
                  "not the weights of a width-32 facegan encoder"))
    cases.append((["--log-study", str(tmp_path / "other.json")], "not a collapse benchmark result"))
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            gpu.main(argv)
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
