"""The tracking store: connecting to it, and reading runs and models back.

Everything here talks to MLflow (:mod:`facegan.tracking` is the only package importing it). The
client settings facegan wants (no artifact progress bars, two retries of at most 15 s instead of
minutes of them, quiet MLflow loggers) are applied by :func:`connect`, the one door every command
goes through, never at import.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus
from mlflow.exceptions import MlflowException

from facegan.checkpoint import GENERATOR_FILE
from facegan.common import error_text
from facegan.errors import FaceganError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MODEL_TYPE = "facegan-generator"
TRAIN_KIND = "train"  # the tag facegan.kind of a training run
# MLflow 3's UI opens an experiment in its GenAI view unless this tag says it holds model training.
EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"

# MLflow reads these when it sends a request: no artifact progress bars; a lost server otherwise
# stalls every request for minutes of retries. A user's own setting wins.
_CLIENT_ENVIRONMENT = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
_LOGIN_REFUSED = {"UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED", "PERMISSION_DENIED"}
# Error codes of a store that refused a request for what it is: retrying will not help.
_REFUSALS = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST",
             "PERMISSION_DENIED", "UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED", "INVALID_STATE", "NOT_IMPLEMENTED"}


def resolve_tracking_uri(uri: str | None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _quiet_client() -> None:
    """The client settings facegan runs MLflow with (module docstring); idempotent."""
    for name, value in _CLIENT_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    # MLflow prints migration chatter, run URLs and deprecation notices; the CLI prints what matters.
    for name in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"mlflow\..*")


def connect(uri: str | None) -> MlflowClient:
    """Point MLflow at the store and check that it answers; a clear error if it does not."""
    _quiet_client()
    uri = resolve_tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        client = MlflowClient(uri, registry_uri=uri)
        client.search_experiments(max_results=1)
    except Exception as exc:  # connection errors, bad URIs, unreadable databases, refused logins
        if isinstance(exc, MlflowException) and exc.error_code in _LOGIN_REFUSED:
            who = os.environ.get("MLFLOW_TRACKING_USERNAME")
            raise FaceganError(
                f"the MLflow tracking server at {uri} refused the credentials "
                + (f"of user {who!r} in MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD" if who else
                   "(none given: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)")) from None
        raise FaceganError(f"cannot reach the MLflow tracking store at {uri}: {error_text(exc)}") from None
    return client


def is_transient(error: BaseException) -> bool:
    """Whether a failed request may go through later: the store is away, restarting, overloaded or
    locked (connection errors, timeouts, server errors), not refusing the request itself."""
    if isinstance(error, MlflowException):
        return error.error_code not in _REFUSALS
    if isinstance(error, FileNotFoundError):  # a kept file removed by hand: retrying cannot bring it back
        return False
    return isinstance(error, Exception)


def training_experiment(client: MlflowClient, name: str) -> str:
    """The id of the experiment ``name``, made if it does not exist, marked as model training
    (:func:`mark_model_training`)."""
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
        except MlflowException:  # another training started at the same time may have made it first
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    mark_model_training(client, found)
    return found.experiment_id


def mark_model_training(client: MlflowClient, experiment) -> None:
    """Tag an experiment as model training for MLflow's UI, unless someone set its kind already."""
    if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)


def ui_address(experiment_id: str, host: str = "http://127.0.0.1:5000") -> str:
    """Where ``mlflow ui`` shows an experiment's runs: MLflow 3's UI opens in its GenAI view unless
    the address asks for the model-training one (an experiment's kind tag alone does not switch it)."""
    return f"{host}/#/experiments/{experiment_id}?workflowType=machine_learning"


# ----------------------------------------------------------------------------------------------
# Reading runs back (evaluation, generate, serve)


class CheckpointRef:
    """A generator checkpoint logged by a run."""

    def __init__(self, epoch: int, model_id: str, name: str):
        self.epoch, self.model_id, self.name = epoch, model_id, name

    def __repr__(self):
        return f"CheckpointRef(epoch={self.epoch}, model_id={self.model_id!r})"


def get_run(client: MlflowClient, run_id: str):
    try:
        return client.get_run(run_id)
    except MlflowException:
        raise FaceganError(f"no MLflow run with id {run_id!r} in {mlflow.get_tracking_uri()}") from None


def run_checkpoints(client: MlflowClient, run_id: str) -> list[CheckpointRef]:
    """The run's generator checkpoints, ordered by epoch (READY LoggedModels only)."""
    run = get_run(client, run_id)
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}'",
        max_results=1000,
    )
    refs = []
    for m in models:
        if m.model_type != MODEL_TYPE or m.status != LoggedModelStatus.READY or "epoch" not in m.params:
            continue
        refs.append(CheckpointRef(int(m.params["epoch"]), m.model_id, m.name))
    return sorted(refs, key=lambda r: r.epoch)


def latest_run_id(client: MlflowClient) -> str:
    """The most recently started training run in any experiment of the store."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.`facegan.kind` = '{TRAIN_KIND}'",
                              order_by=["attributes.start_time DESC"], max_results=1) if experiments else []
    if not runs:
        raise FaceganError(f"no facegan training runs in {mlflow.get_tracking_uri()}; train one with `facegan train`")
    return runs[0].info.run_id


def study_run_ids(client: MlflowClient, runs: list[str], experiment: str | None) -> list[str]:
    """The training runs of a study: the given ids (``latest`` allowed), or every training run of
    ``experiment`` in the order they started."""
    if experiment is None:
        return [latest_run_id(client) if run == "latest" else get_run(client, run).info.run_id for run in runs]
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise FaceganError(f"no experiment named {experiment!r} in {mlflow.get_tracking_uri()} (there are: {names})")
    found_runs = client.search_runs([found.experiment_id], filter_string=f"tags.`facegan.kind` = '{TRAIN_KIND}'",
                                    order_by=["attributes.start_time ASC"], max_results=1000)
    if not found_runs:
        raise FaceganError(f"experiment {experiment!r} has no facegan training runs")
    return [r.info.run_id for r in found_runs]


def logged_image_steps(client: MlflowClient, run_id: str, key: str) -> set[int]:
    """The steps at which the run logged an image under ``key``."""
    steps = set()
    for info in client.list_artifacts(run_id, "images"):
        name = Path(info.path).name
        # log_image names files "<key>+step+<step>+timestamp+..." ("%" in older MLflow).
        parts = name.replace("%", "+").split("+")
        if len(parts) > 2 and parts[0] == key and parts[1] == "step":
            steps.add(int(parts[2]))
    return steps


def resolve_model(spec: str, tracking_uri: str | None, dest_dir: str | Path) -> Path:
    """A local generator checkpoint file for ``spec``.

    ``spec`` is a checkpoint file (or a LoggedModel artifact folder), an MLflow model URI
    (``models:/facegan-generator@best``, ``models:/facegan-generator/3``, ``models:/m-<id>``), or
    ``runs:/<run_id>`` (the run's last checkpoint) / ``runs:/<run_id>/<epoch>``. Registry and run
    URIs are downloaded into ``dest_dir``.
    """
    path = Path(spec)
    if "://" not in spec and not spec.startswith(("models:/", "runs:/")):
        if not path.exists():
            raise FaceganError(f"model not found: {spec} (give a checkpoint file, models:/NAME@ALIAS or runs:/RUN_ID)")
        return path / GENERATOR_FILE if path.is_dir() else path
    client = connect(tracking_uri)
    if spec.startswith("runs:/"):
        run_id, _, epoch = spec[len("runs:/"):].strip("/").partition("/")
        checkpoints = run_checkpoints(client, run_id)
        if not checkpoints:
            raise FaceganError(f"run {run_id} has no generator checkpoints")
        if epoch:
            chosen = [c for c in checkpoints if str(c.epoch) == epoch.lstrip("0") or str(c.epoch) == epoch]
            if not chosen:
                raise FaceganError(f"run {run_id} has no checkpoint at epoch {epoch}; it has "
                                   + ", ".join(str(c.epoch) for c in checkpoints))
            spec = f"models:/{chosen[0].model_id}"
        else:
            spec = f"models:/{checkpoints[-1].model_id}"
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=spec, dst_path=str(dest_dir))
    except Exception as exc:
        raise FaceganError(f"cannot load model {spec} from {mlflow.get_tracking_uri()}: {error_text(exc)}") from None
    local = Path(local)
    return local / GENERATOR_FILE if local.is_dir() else local
