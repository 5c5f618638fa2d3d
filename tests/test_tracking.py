"""The MLflow tracker against a real sqlite store, and when the store goes away."""

import threading

import numpy as np
import pytest
from mlflow import MlflowClient

from conftest import assert_clean_error
from facegan import tracking


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr("facegan.sender.BACKOFF_START_S", 0.01)
    monkeypatch.setattr("facegan.sender.BACKOFF_MAX_S", 0.05)


@pytest.fixture
def tracker(tracking_uri, fast_retries):
    # The unsent folder is made in the working directory: the test's scratch folder (conftest).
    return tracking.MlflowRunTracker.start(tracking_uri, "tracker-tests")


class Outage:
    """Switch the client's write calls off and on (what a server that went away looks like)."""

    CALLS = ("log_batch", "log_image", "create_logged_model", "log_model_artifacts", "log_artifacts",
             "finalize_logged_model", "log_outputs", "set_terminated")

    def __init__(self, client, monkeypatch):
        self.down = threading.Event()
        self.attempts = 0
        for name in self.CALLS:
            real = getattr(client, name)
            monkeypatch.setattr(client, name, self._guard(real))

    def _guard(self, real):
        def call(*args, **kwargs):
            if self.down.is_set():
                self.attempts += 1
                raise ConnectionError("server went away")
            return real(*args, **kwargs)

        return call


def checkpoint_file(tmp_path, name="g.pt", data=b"weights"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_metrics_images_and_checkpoints_reach_the_store(tracker, tracking_uri, tmp_path):
    tracker.log_metrics({"loss_d": 1.5}, 1)
    tracker.log_image("samples", np.zeros((8, 8, 3), np.uint8), 0)
    assert tracker.log_checkpoint(checkpoint_file(tmp_path), 7) is None  # queued: its id comes once sent
    assert tracker.wait_until_sent(30)
    client = MlflowClient(tracking_uri)
    assert [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "loss_d")] == [(1, 1.5)]
    assert tracker.logged_image_steps("samples") == {0}
    assert tracker.checkpoint_epochs() == {7}
    model = client.get_logged_model(tracker.model_ids.get(7))
    assert model.name == "generator-epoch-0007"
    # Every checkpoint is an MLflow pyfunc model (facegan.pyfunc), files written by hand.
    artifacts = {a.path for a in client.list_logged_model_artifacts(model.model_id)}
    assert {"generator.pt", "MLmodel", "requirements.txt", "python_env.yaml", "conda.yaml"} <= artifacts
    tracker.finish("FINISHED")
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
    assert not tracking.unsent_folder(tracker.run_id).exists()  # nothing left behind


def test_a_lost_store_neither_stops_training_nor_loses_anything(tracker, tracking_uri, tmp_path, monkeypatch, capsys):
    outage = Outage(tracker.client, monkeypatch)
    outage.down.set()
    tracker.log_metrics({"loss_d": 1.0}, 1)
    tracker.log_metrics({"loss_d": 2.0}, 2)
    tracker.log_image("samples", np.full((4, 4, 3), 9, np.uint8), 2)
    tracker.log_checkpoint(checkpoint_file(tmp_path), 2)
    tracker.save_resume_state(checkpoint_file(tmp_path, "state.pt", b"resume"))
    tracker.set_tags({"facegan.note": "during the outage"})
    kept = tracking.unsent_folder(tracker.run_id)
    assert (kept / "generator-epoch-0002.pt").read_bytes() == b"weights"  # on disk from the moment it was queued
    assert not tracker.wait_until_sent(0.3) and outage.attempts > 1  # retrying

    outage.down.clear()  # the server is back: everything goes out, in order
    assert tracker.wait_until_sent(30)
    client = MlflowClient(tracking_uri)
    history = client.get_metric_history(tracker.run_id, "loss_d")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 2.0)]
    assert tracker.logged_image_steps("samples") == {2}
    assert tracker.checkpoint_epochs() == {2}
    assert client.get_run(tracker.run_id).data.tags["facegan.note"] == "during the outage"
    assert tracker.fetch_resume_state(tmp_path / "fetched").read_bytes() == b"resume"
    err = capsys.readouterr().err
    assert err.count("does not answer") == 1 and "is back" in err  # one warning each, not one per call
    tracker.finish("FINISHED")
    assert not kept.exists()


def test_what_is_unsent_at_the_end_is_kept_and_synced_once(tracker, tracking_uri, tmp_path, monkeypatch, capsys, cli):
    outage = Outage(tracker.client, monkeypatch)
    tracker.log_metrics({"loss_g": 3.0}, 4)
    assert tracker.wait_until_sent(30)
    outage.down.set()
    tracker.log_metrics({"loss_g": 4.0}, 5)
    tracker.log_image("samples", np.full((4, 4, 3), 3, np.uint8), 5)
    tracker.log_checkpoint(checkpoint_file(tmp_path), 5)
    tracker.send_timeout = 0.3
    tracker.finish("FINISHED")
    err = capsys.readouterr().err
    assert f"facegan sync {tracker.run_id}" in err
    kept = tracking.unsent_folder(tracker.run_id)
    kinds = [entry["kind"] for entry in tracking.Spool(kept).pending()]
    assert kinds == ["metrics", "image", "checkpoint", "status"]

    outage.down.clear()
    client = tracking.connect(tracking_uri)
    assert client.get_run(tracker.run_id).info.status == "RUNNING"
    done = cli("sync", tracker.run_id, "--tracking-uri", tracking_uri)  # the real command, in this folder
    assert f"sent 4 records of run {tracker.run_id}" in done.stderr
    assert not kept.exists()
    assert [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "loss_g")] == [(4, 3.0), (5, 4.0)]
    assert tracker.logged_image_steps("samples") == {5}
    assert tracker.checkpoint_epochs() == {5}
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
    assert tracking.sync_unsent(client, tracker.run_id) == (0, 0)  # a second sync sends nothing
    assert_clean_error(cli("sync", tracker.run_id, "--tracking-uri", tracking_uri, check=False),
                       r"no unsent folder facegan-unsent-\w+/ for run \w+: nothing to send")


def test_a_retried_checkpoint_whose_answer_was_lost_is_not_logged_twice(tracker, tmp_path, monkeypatch):
    """The store took the request but the answer never came back: the retry reuses what it made."""
    real = tracker.client.log_model_artifacts
    calls = []

    def lost_answer(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            real(*args, **kwargs)
            raise ConnectionError("connection reset after the upload")
        return real(*args, **kwargs)

    monkeypatch.setattr(tracker.client, "log_model_artifacts", lost_answer)
    real_create = tracker.client.create_logged_model
    created = []

    def create_then_lose(*args, **kwargs):
        model = real_create(*args, **kwargs)
        created.append(model.model_id)
        if len(created) == 1:
            raise ConnectionError("answer lost")
        return model

    monkeypatch.setattr(tracker.client, "create_logged_model", create_then_lose)
    tracker.log_checkpoint(checkpoint_file(tmp_path), 3)
    assert tracker.wait_until_sent(30)
    models = tracker.client.search_logged_models(experiment_ids=[tracker.experiment_id],
                                                 filter_string=f"source_run_id = '{tracker.run_id}'")
    assert [m.name for m in models] == ["generator-epoch-0003"] and len(created) == 1
    tracker.finish("FINISHED")


def test_ctrl_c_while_the_end_waits_for_the_store_keeps_the_rest(tracker, tmp_path, monkeypatch, capsys):
    outage = Outage(tracker.client, monkeypatch)
    outage.down.set()
    tracker.log_metrics({"loss_g": 1.0}, 1)
    tracker.log_checkpoint(checkpoint_file(tmp_path), 1)
    real_wait, calls = tracker.sender.wait_until_sent, []

    def impatient(timeout=None):
        calls.append(timeout)
        if len(calls) == 2:  # the long wait: the user presses Ctrl-C
            raise KeyboardInterrupt
        return real_wait(timeout)

    monkeypatch.setattr(tracker.sender, "wait_until_sent", impatient)
    tracker.finish("KILLED")
    assert "Ctrl-C keeps the rest locally" in capsys.readouterr().err
    pending = tracking.Spool(tracking.unsent_folder(tracker.run_id)).pending()
    assert [entry["kind"] for entry in pending] == ["metrics", "checkpoint", "status"]
    assert pending[-1]["status"] == "KILLED"
