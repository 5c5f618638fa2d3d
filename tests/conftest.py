"""Shared fixtures: a real MLflow sqlite store and a runner for the real `facegan` CLI."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Tiny networks and data so an end-to-end training run takes seconds on 2 CPU cores.
TINY_TRAIN = [
    "--data", "synthetic", "--num-images", "24", "--image-size", "32", "--batch-size", "12",
    "--set", "model.g_width=8", "--set", "model.d_width=8", "--set", "model.latent_dim=16",
    "--set", "tracking.num_samples=16", "--device", "cpu", "--quiet",
]


# The installed console script, beside this interpreter (the command a user runs).
FACEGAN = str(Path(sys.executable).with_name("facegan"))


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory):
    """One sqlite store for the session, created once (concurrent creation races on migrations)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    from facegan import tracking

    # MLflow puts a new experiment's artifacts under ./mlruns of the current folder: not the checkout.
    here = os.getcwd()
    os.chdir(root)
    try:
        tracking.connect(uri)
    finally:
        os.chdir(here)
        _forget_store_variables()
    return uri


# What MLflow and facegan write into the working folder when given no other place.
CHECKOUT = Path(__file__).resolve().parents[1]
_STRAY_NAMES = ("mlruns", "mlartifacts", "mlflow.db")


def _strays() -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in CHECKOUT.iterdir()
            if p.name in _STRAY_NAMES or p.name.startswith("facegan-unsent-")}


@pytest.fixture(scope="session", autouse=True)
def _checkout_stays_clean():
    """The session fails when a test (or a fixture before the scratch folder) wrote MLflow's or
    facegan's default files into the checkout."""
    before = _strays()
    yield
    changed = sorted(name for name, stamp in _strays().items() if before.get(name) != stamp)
    assert not changed, f"the tests wrote {', '.join(changed)} into the checkout {CHECKOUT}; write under tmp_path"


@pytest.fixture(autouse=True)
def _scratch_folder(tmp_path, monkeypatch):
    """Every test runs in its own scratch folder, so nothing it or MLflow writes lands in the checkout."""
    monkeypatch.chdir(tmp_path)


# mlflow.set_tracking_uri / set_registry_uri (which facegan.tracking.connect calls in-process) also
# set these in os.environ "so that subprocesses inherit them": a store one test connected to would
# leak into the processes later tests start.
_MLFLOW_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def _forget_store_variables() -> None:
    for name in _MLFLOW_URI_VARIABLES:
        os.environ.pop(name, None)


@pytest.fixture(autouse=True)
def _no_inherited_store():
    """Each test starts, and leaves, without a store in the environment (the session's tests set none)."""
    _forget_store_variables()
    yield
    _forget_store_variables()


@pytest.fixture
def cli(tmp_path):
    """Run the installed `facegan` command in a scratch folder; returns CompletedProcess."""

    def run(*args, check=True, timeout=300, env=None):
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        for name in _MLFLOW_URI_VARIABLES:
            full_env.pop(name, None)
        proc = subprocess.run(
            [FACEGAN, *map(str, args)],
            cwd=tmp_path, capture_output=True, text=True, timeout=timeout, env=full_env,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"facegan {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc

    return run


def run_id_of(proc) -> str:
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("run_id: "), proc.stdout
    return last.split(": ", 1)[1]


def assert_clean_error(proc, pattern: str):
    """One clear message and a non-zero exit: no traceback."""
    import re

    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    assert re.search(pattern, proc.stderr), proc.stderr
