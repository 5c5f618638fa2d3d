"""End to end: the real `facegan` CLI against a real MLflow sqlite store."""

import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import FACEGAN, TINY_TRAIN, assert_clean_error, run_id_of

pytestmark = pytest.mark.slow


def image_steps(client, run_id):
    steps = set()
    for info in client.list_artifacts(run_id, "images"):
        parts = info.path.split("/")[-1].replace("%", "+").split("+")
        if parts[0] == "samples" and not info.path.endswith("compressed.webp"):
            steps.add(int(parts[2]))
    return steps


def test_train_logs_the_mlflow_layout_and_resumes(cli, tracking_uri):
    proc = cli("train", *TINY_TRAIN, "--loss", "wgan-gp", "--epochs", 3, "--checkpoint-every", 2,
               "--experiment", "e2e", "--run-name", "tiny", "--tracking-uri", tracking_uri)
    run_id = run_id_of(proc)
    # The hint names the mlflow beside facegan: a venv's is not on PATH unless it is activated.
    assert f"browse: {Path(FACEGAN).with_name('mlflow')} ui --backend-store-uri {tracking_uri}" in proc.stderr
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    params = run.data.params
    assert params["train.loss"] == "wgan-gp" and params["model.d_norm"] == "instance"
    assert params["train.lr_g"] == "0.0001" and params["tracking.checkpoint_every"] == "2"
    # Every epoch logs its step counts and speed; a loss is logged for epochs that trained that
    # network (the adaptive schedule may give an epoch of 2 minibatches to one side only).
    for key in ("accuracy_g", "accuracy_d", "d_steps", "g_steps", "images_per_s"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2, 3], key
    assert client.get_metric_history(run_id, "loss_d") or client.get_metric_history(run_id, "loss_g")
    assert image_steps(client, run_id) == {0, 1, 2, 3}
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == run.data.tags["facegan.dataset_digest"][:32]
    assert len(run.data.tags["facegan.dataset_digest"]) == 64

    models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    assert sorted((m.name, m.params["epoch"]) for m in models) == [
        ("generator-epoch-0002", "2"), ("generator-epoch-0003", "3")]
    assert sorted(o.step for o in run.outputs.model_outputs) == [2, 3]

    # --resume continues the same run at epoch 4, with no step logged twice.
    proc = cli("train", "--resume", run_id, "--epochs", 5, "--tracking-uri", tracking_uri, "--quiet")
    assert run_id_of(proc) == run_id
    assert "from epoch 3 of 5" in proc.stderr
    assert [m.step for m in client.get_metric_history(run_id, "d_steps")] == [1, 2, 3, 4, 5]
    assert image_steps(client, run_id) == {0, 1, 2, 3, 4, 5}
    models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    assert sorted(int(m.params["epoch"]) for m in models) == [2, 3, 4, 5]
    assert client.get_run(run_id).info.status == "FINISHED"

    # Finished: resuming without more epochs is a clear error; changing the loss is refused.
    assert_clean_error(cli("train", "--resume", run_id, "--tracking-uri", tracking_uri, check=False),
                       r"already reached epoch 5 of 5")
    assert client.get_run(run_id).info.status == "FINISHED"  # a refused resume leaves the run as it was
    assert_clean_error(cli("train", "--resume", run_id, "--loss", "dcgan", "--tracking-uri", tracking_uri,
                           check=False), r"cannot change train.loss when resuming")
    # What may change on resume goes through the config's own checks (type, range).
    assert_clean_error(cli("train", "--resume", run_id, "--epochs", 7, "--set", "evaluate.num_samples=many",
                           "--tracking-uri", tracking_uri, check=False), r"evaluate.num_samples must be int")
    assert_clean_error(cli("train", "--resume", run_id, "--epochs", 7, "--set", "tracking.send_timeout=-1",
                           "--tracking-uri", tracking_uri, check=False), r"tracking.send_timeout must be non-negative")
    assert client.get_run(run_id).info.status == "FINISHED"


def test_ctrl_c_saves_resume_state_and_marks_the_run_killed(cli, tracking_uri, tmp_path):
    proc = subprocess.Popen(
        [FACEGAN, "train", *TINY_TRAIN, "--epochs", "500", "--checkpoint-every", "1000",
         "--experiment", "e2e-interrupt", "--tracking-uri", tracking_uri],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    client = MlflowClient(tracking_uri)
    deadline = time.time() + 120
    run_id = None
    while time.time() < deadline:
        experiment = client.get_experiment_by_name("e2e-interrupt")
        runs = experiment and client.search_runs([experiment.experiment_id])
        if runs and len(client.get_metric_history(runs[0].info.run_id, "d_steps")) >= 2:
            run_id = runs[0].info.run_id
            break
        time.sleep(0.5)
    assert run_id, "training never logged two epochs"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"facegan train --resume {run_id}" in err and "Traceback" not in err
    assert out.strip().splitlines()[-1] == f"run_id: {run_id}"
    assert client.get_run(run_id).info.status == "KILLED"
    logged = [m.step for m in client.get_metric_history(run_id, "d_steps")]

    proc = cli("train", "--resume", run_id, "--epochs", max(logged) + 2, "--tracking-uri", tracking_uri)
    steps = [m.step for m in client.get_metric_history(run_id, "d_steps")]
    assert steps == list(range(1, max(logged) + 3))  # no step missing, none twice
    assert client.get_run(run_id).info.status == "FINISHED"


def test_unreachable_tracking_server_fails_before_training(cli):
    started = time.time()
    proc = cli("train", *TINY_TRAIN, "--epochs", 1, "--tracking-uri", "http://127.0.0.1:9", check=False)
    assert_clean_error(proc, r"cannot reach the MLflow tracking store at http://127.0.0.1:9")
    assert time.time() - started < 90


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "does/not/exist"], r"does/not/exist"),
        # Option values out of range are usage errors (test_cli_errors.py); the same values
        # from --set or a config file are config errors, as here.
        (["--set", "model.image_size=100"], r"supported sizes: 32, 40, 64, 80, 128, 160"),
        (["--set", "train.lr_g=-1"], r"train.lr_g must be positive"),
        (["--set", "train.nope=1"], r"unknown config key 'train.nope'"),
        (["--set", "oops"], r"--set expects key=value"),
        (["--set", "train.epochs=0"], r"train.epochs must be positive"),
        (["--config", "missing.toml"], r"config file not found"),
    ],
)
def test_bad_train_input_is_one_clear_error(cli, tracking_uri, args, message):
    proc = cli("train", "--tracking-uri", tracking_uri, "--quiet", *args, check=False)
    assert_clean_error(proc, message)
