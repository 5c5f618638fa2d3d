"""The MLflow tracker against a real sqlite store, and when the store goes away."""

import json

import numpy as np
import pytest
from mlflow import MlflowClient

from facegan import tracking


@pytest.fixture
def tracker(tracking_uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the fallback folder is created in the working directory
    return tracking.MlflowRunTracker.start(tracking_uri, "tracker-tests")


def test_metrics_images_and_checkpoints_reach_the_store(tracker, tracking_uri, tmp_path):
    tracker.log_metrics({"loss_d": 1.5}, 1)
    tracker.log_image("samples", np.zeros((8, 8, 3), np.uint8), 0)
    ckpt = tmp_path / "g.pt"
    ckpt.write_bytes(b"weights")
    model_id = tracker.log_checkpoint(ckpt, 7)
    client = MlflowClient(tracking_uri)
    assert [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "loss_d")] == [(1, 1.5)]
    assert tracker.logged_image_steps("samples") == {0}
    assert tracker.checkpoint_epochs() == {7}
    assert client.get_logged_model(model_id).name == "generator-epoch-0007"


def test_a_lost_store_neither_stops_training_nor_loses_anything(tracker, tracking_uri, tmp_path, monkeypatch, capsys):
    def down(*args, **kwargs):
        raise ConnectionError("server went away")

    real_log_batch = tracker.client.log_batch
    for name in ("log_batch", "log_image", "create_logged_model", "log_artifacts"):
        monkeypatch.setattr(tracker.client, name, down)
    tracker.log_metrics({"loss_d": 1.0}, 1)
    tracker.log_metrics({"loss_d": 2.0}, 2)
    tracker.log_image("samples", np.full((4, 4, 3), 9, np.uint8), 2)
    state = tmp_path / "state.pt"
    state.write_bytes(b"resume")
    tracker.save_resume_state(state)
    tracker.log_checkpoint(state, 2)
    err = capsys.readouterr().err
    assert err.count("warning: MLflow did not take") == 1  # one warning, not one per call
    kept = tracker.fallback_dir
    assert (kept / "resume-state.pt").read_bytes() == b"resume"
    assert (kept / "generator-epoch-0002.pt").exists() and (kept / "samples-step-000002.png").exists()

    # The server comes back: buffered metrics go out with the next call, in order.
    monkeypatch.setattr(tracker.client, "log_batch", real_log_batch)
    tracker.log_metrics({"loss_d": 3.0}, 3)
    history = MlflowClient(tracking_uri).get_metric_history(tracker.run_id, "loss_d")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 2.0), (3, 3.0)]


def test_metrics_still_unsent_at_the_end_are_written_to_a_file(tracker, monkeypatch, capsys):
    monkeypatch.setattr(tracker.client, "log_batch", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("down")))
    tracker.log_metrics({"loss_g": 4.0}, 5)
    tracker.finish("FINISHED")
    saved = json.loads((tracker.fallback_dir / "metrics.json").read_text())
    assert [(m["key"], m["value"], m["step"]) for m in saved] == [("loss_g", 4.0, 5)]
    assert "1 metrics could not reach MLflow" in capsys.readouterr().err
