"""facegan against a real team server: `mlflow server` on a real PostgreSQL, over HTTP.

Train, evaluate, register, resume and generate against http://127.0.0.1:PORT; several trainings
logging at once; basic-auth with a wrong password. The server-outage test is in
test_server_outage.py (its own cluster, so the two files can run side by side).
"""

import json
import os
import subprocess

import pytest
from mlflow import MlflowClient

from conftest import FACEGAN, TINY_TRAIN, assert_clean_error, run_id_of
from experiments.servers import MlflowServer, PostgreSQL


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    postgres = PostgreSQL().start()
    folder = tmp_path_factory.mktemp("team")
    (folder / "artifacts").mkdir()
    mlflow_server = MlflowServer(postgres.create_database("mlflow"), folder / "artifacts")
    try:
        yield mlflow_server.start()
    finally:
        mlflow_server.stop()
        postgres.stop()


def facegan(folder, *args, env=None, check=True, timeout=600):
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([FACEGAN, *map(str, args)], cwd=folder, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"facegan {' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}")
    return done


def test_train_evaluate_register_resume_and_generate_against_the_server(server, tmp_path):
    uri = server.url
    run_id = run_id_of(facegan(tmp_path, "train", *TINY_TRAIN, "--epochs", 4, "--set", "tracking.checkpoint_every=2",
                               "--experiment", "team", "--tracking-uri", uri))
    client = MlflowClient(uri, registry_uri=uri)
    assert [m.step for m in client.get_metric_history(run_id, "d_steps")] == [1, 2, 3, 4]

    done = facegan(tmp_path, "evaluate", "--run", run_id, "--features", "random", "--num-samples", 20,
                   "--tracking-uri", uri, "--quiet")
    assert "registered: models:/facegan-generator@best" in done.stdout
    version = client.get_model_version_by_alias("facegan-generator", "best")
    assert version.run_id == run_id

    facegan(tmp_path, "train", "--resume", run_id, "--epochs", 6, "--tracking-uri", uri)
    assert [m.step for m in client.get_metric_history(run_id, "d_steps")] == [1, 2, 3, 4, 5, 6]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert not (tmp_path / f"facegan-unsent-{run_id}").exists()

    out = tmp_path / "faces"
    facegan(tmp_path, "generate", "-n", 3, "--out", out, "--seed", 1, "--tracking-uri", uri)
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "000002.png", "grid.png"]


def test_several_trainings_logging_at_once_lose_nothing(server, tmp_path):
    uri, epochs = server.url, 6
    folders = [tmp_path / f"trainer-{i}" for i in range(3)]
    processes = []
    for i, folder in enumerate(folders):
        folder.mkdir()
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        processes.append(subprocess.Popen(
            [FACEGAN, "train", *TINY_TRAIN, "--epochs", str(epochs), "--set", "tracking.checkpoint_every=2",
             "--set", f"train.seed={i}", "--experiment", "team-concurrent", "--tracking-uri", uri],
            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    run_ids = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
        run_ids.append(stdout.strip().splitlines()[-1].split(": ", 1)[1])
    client = MlflowClient(uri)
    assert len(set(run_ids)) == 3
    for run_id in run_ids:
        assert [m.step for m in client.get_metric_history(run_id, "d_steps")] == list(range(1, epochs + 1))
        models = client.search_logged_models(experiment_ids=[client.get_run(run_id).info.experiment_id],
                                             filter_string=f"source_run_id = '{run_id}'")
        assert sorted(m.name for m in models) == ["generator-epoch-0002", "generator-epoch-0004", "generator-epoch-0006"]
        assert client.get_run(run_id).info.status == "FINISHED"


def start(folder, *args):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen([FACEGAN, *map(str, args)], cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finished(process) -> str:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    return stdout


def test_two_evaluations_registering_at_once_leave_the_better_choice_as_best(server, tmp_path):
    """Two people evaluate different runs of one server at the same moment: whatever the order of
    their requests, @best ends on the better of the two choices, with one version per checkpoint."""
    uri, name = server.url, "team-registry"
    trainings = [start(tmp_path, "train", *TINY_TRAIN, "--epochs", 2, "--set", "tracking.checkpoint_every=1",
                       "--set", f"train.seed={seed}", "--experiment", "team-registry", "--tracking-uri", uri)
                 for seed in (3, 4)]
    run_ids = [finished(p).strip().splitlines()[-1].split(": ", 1)[1] for p in trainings]
    folders = [tmp_path / f"person-{i}" for i in range(2)]
    evaluations = []
    for folder, run_id in zip(folders, run_ids):
        folder.mkdir()
        evaluations.append(start(folder, "evaluate", "--run", run_id, "--features", "random", "--num-samples", 20,
                                 "--register", name, "--json", "out.json", "--tracking-uri", uri, "--quiet"))
    for process in evaluations:
        finished(process)
    choices = []
    for folder, run_id in zip(folders, run_ids):
        result = json.loads((folder / "out.json").read_text())
        choices.append((next(c["fid"] for c in result["checkpoints"] if c["epoch"] == result["best_epoch"]), run_id))
    client = MlflowClient(uri, registry_uri=uri)
    best = client.get_model_version_by_alias(name, "best")
    assert best.tags["run_id"] == min(choices)[1]
    assert client.get_model_version_by_alias(name, "best-random").version == best.version
    assert len(client.search_model_versions(f"name = '{name}'")) == 2


def test_basic_auth_a_wrong_password_is_one_clear_error(tmp_path):
    """`mlflow server --app-name basic-auth`: facegan reads MLFLOW_TRACKING_USERNAME/PASSWORD."""
    (tmp_path / "artifacts").mkdir()
    password = "facegan-test-password"  # the admin the auth app creates on its first start
    auth_server = MlflowServer(f"sqlite:///{tmp_path / 'auth.db'}", tmp_path / "artifacts", app_name="basic-auth",
                               env={"MLFLOW_AUTH_ADMIN_PASSWORD": password,
                                    "MLFLOW_FLASK_SERVER_SECRET_KEY": "facegan-test-secret"})
    auth_server.start()
    try:
        wrong = facegan(tmp_path, "train", *TINY_TRAIN, "--epochs", 1, "--tracking-uri", auth_server.url, check=False,
                        env={"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "not-the-password"})
        assert_clean_error(wrong, r"refused the credentials .*MLFLOW_TRACKING_USERNAME")
        right = facegan(tmp_path, "train", *TINY_TRAIN, "--epochs", 1, "--tracking-uri", auth_server.url,
                        env={"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password})
        assert run_id_of(right)
    finally:
        auth_server.stop()
