"""The registered choice as a real MLflow model: `mlflow.pyfunc.load_model` in a fresh process and
`mlflow models serve`, against a real sqlite store and the real `facegan` CLI."""

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FACEGAN, TINY_TRAIN, run_id_of
from facegan.errors import FaceganError
from facegan.pyfunc import FaceModel

BEST = "models:/facegan-generator@best"


def decode(png_b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png_b64))).convert("RGB"))


def env_for(uri: str) -> dict:
    return {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A tiny run trained and evaluated by the CLI into its own store; returns (uri, folder, run id)."""
    folder = tmp_path_factory.mktemp("pyfunc")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}

    def facegan(*args):
        done = subprocess.run([FACEGAN, *map(str, args)], cwd=folder, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    run_id = run_id_of(facegan("train", *TINY_TRAIN, "--epochs", 2, "--set", "tracking.checkpoint_every=1",
                               "--experiment", "pyfunc", "--tracking-uri", uri))
    facegan("evaluate", "--run", run_id, "--features", "random", "--num-samples", 20, "--tracking-uri", uri, "--quiet")
    return uri, folder, run_id


LOAD_AND_PREDICT = """
import json, sys
import mlflow.pyfunc, pandas
model = mlflow.pyfunc.load_model("models:/facegan-generator@best")
frame = pandas.DataFrame(json.loads(sys.argv[1]))
out = model.predict(frame)
print(json.dumps({"columns": list(out.columns), "png": list(out["png"])}))
"""


def test_registered_choice_loads_with_mlflow_pyfunc_in_a_fresh_process(registered, tmp_path):
    uri, folder, _ = registered
    columns = {"seed": [3, 4, 3], "truncation": [None, 0.7, None]}
    done = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, json.dumps(columns)], cwd=tmp_path,
                          env=env_for(uri), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["columns"] == ["png"]
    faces = [decode(png) for png in result["png"]]
    assert len(faces) == 3 and faces[0].shape == (32, 32, 3)
    assert np.array_equal(faces[0], faces[2])  # the same seed gives the same face
    assert not np.array_equal(faces[0], faces[1])

    # ... and the face `facegan generate` draws for that seed from the same registered model.
    out = tmp_path / "generated"
    generated = subprocess.run([FACEGAN, "generate", "-n", "1", "--seed", "4", "--truncation", "0.7", "--out", str(out),
                                "--tracking-uri", uri], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert generated.returncode == 0, generated.stderr
    assert np.array_equal(np.asarray(Image.open(out / "000000.png").convert("RGB")), faces[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_json(url: str, payload: dict, timeout: float = 30) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_mlflow_models_serve_answers_invocations(registered, tmp_path):
    uri, folder, _ = registered
    port = free_port()
    mlflow_cli = str(Path(sys.executable).with_name("mlflow"))
    # As with an activated venv: mlflow starts the venv's uvicorn by name.
    env = {**env_for(uri), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = subprocess.Popen([mlflow_cli, "models", "serve", "-m", BEST, "--env-manager", "local", "-p", str(port),
                               "--host", "127.0.0.1"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow models serve did not start:\n{server.stdout.read().decode()[-3000:]}")
            time.sleep(0.5)
        status, body = post_json(f"http://127.0.0.1:{port}/invocations", {"dataframe_records": [{"seed": 5}]})
        assert status == 200, body
        (row,) = body["predictions"]
        served = decode(row["png"])

        model = FaceModel(*_registered_generator(uri, tmp_path))
        assert np.array_equal(served, decode(model.predict({"seed": [5]})["png"].iloc[0]))

        status, body = post_json(f"http://127.0.0.1:{port}/invocations", {"dataframe_records": [{"seed": -1}]})
        assert status >= 400 and "non-negative integer" in json.dumps(body)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)


def _registered_generator(uri: str, tmp_path):
    from facegan.generate import load_model

    loaded = load_model(BEST, uri)
    return loaded.generator, loaded.payload


@pytest.mark.parametrize("frame, message", [
    ({"epoch": [1]}, "needs a column 'seed'"),
    ({"seed": [-1]}, "non-negative integer"),
    ({"seed": [1.5]}, "non-negative integer"),
    ({"seed": [1], "truncation": [0.0]}, "positive number"),
    ({"seed": [1], "truncation": ["x"]}, "positive number"),
])
def test_bad_rows_are_one_clear_error(frame, message):
    from facegan.models import Generator

    model = FaceModel(Generator(image_size=32, latent_dim=16, width=8).eval())
    with pytest.raises(FaceganError, match=message):
        model.predict(frame)


def test_a_checkpoint_logged_without_pyfunc_files_gets_them_when_registered(registered, tmp_path):
    """Runs logged before checkpoints carried MLmodel files: registering one adds them."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelStatus

    from facegan import tracking
    from facegan.checkpoint import GENERATOR_FILE
    from facegan.tracking import Candidate, register_choice

    uri, _, run_id = registered
    tracking.connect(uri)
    client = MlflowClient(uri, registry_uri=uri)
    experiment_id = client.get_run(run_id).info.experiment_id
    (first, *_) = tracking.run_checkpoints(client, run_id)
    source = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{first.model_id}",
                                                      dst_path=str(tmp_path / "first"))) / GENERATOR_FILE
    old = client.create_logged_model(experiment_id, name="generator-epoch-0001", source_run_id=run_id,
                                     params={"epoch": "1"}, model_type=tracking.MODEL_TYPE)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / GENERATOR_FILE).write_bytes(source.read_bytes())
    client.log_model_artifacts(old.model_id, str(tmp_path / "old"))
    client.finalize_logged_model(old.model_id, LoggedModelStatus.READY)
    assert [a.path for a in client.list_logged_model_artifacts(old.model_id)] == [GENERATOR_FILE]

    register_choice(client, "facegan-generator-old", Candidate(old.model_id, run_id, 1, "random", "data", 20, 50.0))
    assert "MLmodel" in {a.path for a in client.list_logged_model_artifacts(old.model_id)}
    loaded = mlflow.pyfunc.load_model("models:/facegan-generator-old@best")
    assert decode(loaded.predict({"seed": [2]})["png"].iloc[0]).shape == (32, 32, 3)
