"""Everything facegan tells MLflow, and everything it reads back: the only module importing mlflow.

The training loop talks to a small tracker interface (:class:`facegan.run_tracker.RunTracker`);
:class:`MlflowRunTracker` implements it against a real tracking store. Layout (docs/ARCHITECTURE.md, "MLflow layout"):

- params: the resolved config, flat (``train.loss``, ...);
- input: the dataset, with a digest of the whole uint8 tensor;
- metrics: ``step=epoch``; sample grids: ``log_image(key="samples", step=epoch)``, step 0 too;
- generator checkpoints: LoggedModels named ``generator-epoch-0100`` with param ``epoch``, linked
  to the run at ``step=epoch``: the checkpoint file and hand-written pyfunc files
  (:func:`write_pyfunc_files`), not ``mlflow.pytorch.log_model`` (seconds each);
- resume state: run artifact ``resume/state.pt``.

A store that goes away must neither stall nor kill training: what the loop logs is sent by a
background thread (:mod:`facegan.sender`), in order, retrying until the store is back; what is
still unsent when the run ends is kept in ``facegan-unsent-<run>/`` for ``facegan sync``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from facegan.checkpoint import GENERATOR_FILE, load_generator
from facegan.common import error_text
from facegan.errors import FaceganError
from facegan.run_tracker import checkpoint_name
from facegan.sender import Sender, Spool

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MODEL_TYPE = "facegan-generator"
RESUME_ARTIFACT = "resume/state.pt"
NUM_SAMPLES_TAG = "facegan.num_samples"  # + ".<space>": samples per checkpoint its scores came from
LEGACY_NUM_SAMPLES = 2000  # what runs scored before that tag existed were scored with


# ----------------------------------------------------------------------------------------------
# MLflow


# Read by MLflow at import: no artifact progress bars; a lost server otherwise stalls each request
# for minutes of retries.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")

import mlflow  # noqa: E402  (after the environment above is set)
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

# MLflow configures its loggers at import and prints migration chatter, run URLs and
# deprecation notices; the CLI prints what matters itself.
for _name in ("mlflow", "alembic", "urllib3"):
    logging.getLogger(_name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module=r"mlflow\..*")


def resolve_tracking_uri(uri: str | None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


_LOGIN_REFUSED = {"UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED", "PERMISSION_DENIED"}


def connect(uri: str | None) -> MlflowClient:
    """Point MLflow at the store and check that it answers; a clear error if it does not."""
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


DEFAULT_SEND_TIMEOUT_S = 120.0  # how long a finished run waits for a store that is away
# Error codes of a store that refused a request for what it is: retrying will not help.
_REFUSALS = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST",
             "PERMISSION_DENIED", "UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED", "INVALID_STATE", "NOT_IMPLEMENTED"}


def is_transient(error: BaseException) -> bool:
    """Whether a failed request may go through later: the store is away, restarting, overloaded or
    locked (connection errors, timeouts, server errors), not refusing the request itself."""
    if isinstance(error, MlflowException):
        return error.error_code not in _REFUSALS
    if isinstance(error, FileNotFoundError):  # a kept file removed by hand: retrying cannot bring it back
        return False
    return isinstance(error, Exception)


def unsent_folder(run_id: str) -> Path:
    """Where a run keeps what has not reached the store: ``./facegan-unsent-<run id>/``."""
    return Path(f"facegan-unsent-{run_id}")


class MlflowRunTracker:
    """A tracker writing one MLflow run; also reopens a run to resume it.

    Parameters, the dataset and the run's creation are sent at once (a store that is away at
    the start is an immediate, clear error); everything the loop logs afterwards goes through a
    background :class:`facegan.sender.Sender`, so training never waits for the store. The
    checkpoints' model ids are known once they are sent: :meth:`model_id_at` gives them.
    """

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str):
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        self.send_timeout = DEFAULT_SEND_TIMEOUT_S  # tracking.send_timeout
        self.spool = Spool(unsent_folder(run_id))
        self._model_ids: dict[int, str] = {}
        self._latest_resume: Path | None = None
        self.sender = Sender(is_transient=is_transient, spool=self.spool)

    @classmethod
    def start(cls, tracking_uri: str | None, experiment: str, run_name: str | None = None) -> "MlflowRunTracker":
        client = connect(tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            try:
                experiment_id = client.create_experiment(experiment)
            except MlflowException:  # another training started at the same time may have made it first
                found = client.get_experiment_by_name(experiment)
                if found is None:
                    raise
                experiment_id = found.experiment_id
        run = client.create_run(experiment_id, run_name=run_name, tags={"facegan.kind": "train"})
        return cls(client, run.info.run_id, experiment_id)

    @classmethod
    def reopen(cls, tracking_uri: str | None, run_id: str) -> "MlflowRunTracker":
        client = connect(tracking_uri)
        run = get_run(client, run_id)
        sync_unsent(client, run_id)  # what an earlier process of this run left unsent goes first
        return cls(client, run_id, run.info.experiment_id)

    def mark_running(self) -> None:
        """A resumed run is RUNNING again once training really continues (not on a refusal)."""
        self.client.update_run(self.run_id, status="RUNNING")

    def model_id_at(self, epoch: int) -> str | None:
        """The LoggedModel id of this run's checkpoint at ``epoch``, once it has been sent."""
        return self._model_ids.get(epoch)

    def submit(self, job) -> None:
        self.sender.submit(job)

    # -- what the loop logs ------------------------------------------------------------------

    def log_params(self, params):
        self.client.log_batch(
            self.run_id, params=[mlflow.entities.Param(k, "none" if v is None else str(v)) for k, v in params.items()]
        )

    def set_tags(self, tags):
        self.submit(TagsJob(self.client, self.run_id, {k: str(v) for k, v in tags.items()}))

    def log_dataset(self, info):
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.types import Schema, TensorSpec

        shape = tuple(info["shape"])
        schema = Schema([TensorSpec(np.dtype(np.uint8), (-1, *shape[1:]), name="images")])
        source = CodeDatasetSource(tags={"source": str(info["source"])})
        # MLflow's digest column holds 36 characters; the first 32 hex digits of a sha256 over
        # the whole tensor still identify it (MLflow's own digest hashes only a sample).
        dataset = MetaDataset(source=source, name=info["name"], digest=info["digest"][:32], schema=schema)
        self.client.log_inputs(self.run_id, datasets=[mlflow.entities.DatasetInput(dataset._to_mlflow_entity())])
        self.client.set_tag(self.run_id, "facegan.dataset_digest", info["digest"])

    def log_metrics(self, metrics, step):
        now = int(time.time() * 1000)
        self.submit(MetricsJob(self.client, self.run_id,
                               [{"key": k, "value": float(v), "timestamp": now, "step": step} for k, v in metrics.items()]))

    def log_image(self, key, image, step):
        path = self.spool.path(f"{key}-step-{step:06d}.png")
        Image.fromarray(np.asarray(image)).save(path)
        self.submit(ImageJob(self.client, self.run_id, key, step, path))

    def log_checkpoint(self, path, epoch):
        """Queue the checkpoint; None: its model id is known once sent (:meth:`model_id_at`)."""
        kept = self.spool.path(f"{checkpoint_name(epoch)}.pt")
        shutil.copyfile(path, kept)  # the loop deletes its file; this copy lives until it is sent
        self.submit(CheckpointJob(self.client, self.run_id, self.experiment_id, epoch, kept, self._model_ids))
        return None

    def checkpoint_epochs(self):
        return {c.epoch for c in run_checkpoints(self.client, self.run_id)}

    def save_resume_state(self, path):
        kept = self.spool.path(f"resume-state-{time.time_ns()}.pt")
        shutil.copyfile(path, kept)
        self._latest_resume = kept
        # Only the newest resume state matters: an older one still queued is dropped when its turn comes.
        self.submit(ResumeStateJob(self.client, self.run_id, kept, latest=lambda: self._latest_resume))

    def fetch_resume_state(self, dest_dir):
        try:
            return Path(self.client.download_artifacts(self.run_id, RESUME_ARTIFACT, str(dest_dir)))
        except (MlflowException, OSError):
            return None

    def logged_metric_steps(self, key: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    def logged_image_steps(self, key: str) -> set[int]:
        return logged_image_steps(self.client, self.run_id, key)

    def wait_until_sent(self, timeout: float | None = None) -> bool:
        """Block until everything queued so far reached the store (False: ``timeout`` passed first)."""
        return self.sender.wait_until_sent(self.send_timeout if timeout is None else timeout)

    def finish(self, status):
        """Send what is queued (waiting at most ``send_timeout`` s), then mark the run ``status``.

        What the store did not take by then stays in :func:`unsent_folder`, with the status, for
        ``facegan sync``.
        """
        try:
            if not self.sender.wait_until_sent(min(2.0, self.send_timeout)):  # a healthy store: done by now
                print(f"sending what is queued to the tracking store (waiting at most {self.send_timeout:.0f} s; "
                      "Ctrl-C keeps the rest locally)", file=sys.stderr)
                self.sender.wait_until_sent(max(self.send_timeout - 2.0, 0.0))
        except KeyboardInterrupt:
            pass  # stop waiting: what is left is kept locally, below
        left = self.sender.close(0)
        if left:
            self.spool.write_manifest(self.spool.pending() + [{"kind": "status", "status": status}])
            print(f"warning: the tracking store did not take {len(left)} records of run {self.run_id} "
                  f"({', '.join(job.what for job in left[:3])}{', ...' if len(left) > 3 else ''}); they are kept "
                  f"in {self.spool.folder}/. Send them when the store is back: facegan sync {self.run_id}",
                  file=sys.stderr)
            return
        _set_terminated(self.client, self.run_id, status)


def _set_terminated(client: MlflowClient, run_id: str, status: str) -> None:
    for attempt in range(5):  # a sqlite store may be locked for a moment by another reader
        try:
            client.set_terminated(run_id, status=status)
            return
        except Exception as exc:
            error = exc
            time.sleep(0.5 * (attempt + 1))
    print(f"warning: could not mark run {run_id} {status}: {error_text(error)}", file=sys.stderr)


def logged_image_steps(client: MlflowClient, run_id: str, key: str) -> set[int]:
    steps = set()
    for info in client.list_artifacts(run_id, "images"):
        name = Path(info.path).name
        # log_image names files "<key>+step+<step>+timestamp+..." ("%" in older MLflow).
        parts = re.split(r"[+%]", name)
        if len(parts) > 2 and parts[0] == key and parts[1] == "step":
            steps.add(int(parts[2]))
    return steps


# ----------------------------------------------------------------------------------------------
# The records the background sender sends (facegan.sender.Job). Each remembers what went
# through, so a retry after a failure repeats only the failed step and nothing is logged twice.


class MetricsJob:
    """A batch of metrics (an epoch's, or a checkpoint's scores). ``model_epoch``: link each to the
    run's checkpoint of that epoch, whose id is looked up when sent (it may have been queued just
    before)."""

    def __init__(self, client, run_id, metrics: list[dict], *, model_epoch: int | None = None,
                 model_ids: Callable[[int], str | None] | None = None, what: str | None = None):
        self.client, self.run_id, self.metrics = client, run_id, metrics
        self.model_epoch, self.model_ids = model_epoch, model_ids
        self.what = what or f"metrics of step {metrics[0]['step'] if metrics else '?'}"

    def send(self):
        model_id = None
        if self.model_epoch is not None and self.model_ids is not None:
            model_id = self.model_ids(self.model_epoch)
        while self.metrics:  # MLflow's batch size; a resent batch is deduplicated by the store
            chunk = [Metric(m["key"], m["value"], m["timestamp"], m["step"], model_id=model_id,
                            run_id=self.run_id if model_id else None) for m in self.metrics[:1000]]
            self.client.log_batch(self.run_id, metrics=chunk)
            del self.metrics[:1000]

    def absorb(self, other) -> bool:
        """Take in the next epoch's metrics (one request for many after an outage); scores linked
        to a checkpoint stay apart."""
        if (not isinstance(other, MetricsJob) or self.model_epoch is not None or other.model_epoch is not None
                or len(self.metrics) + len(other.metrics) > 1000):
            return False
        self.metrics += other.metrics
        self.what = f"metrics of steps {self.metrics[0]['step']}-{other.metrics[-1]['step']}"
        return True

    def to_json(self):
        return {"kind": "metrics", "metrics": self.metrics, "model_epoch": self.model_epoch}


class TagsJob:
    def __init__(self, client, run_id, tags: dict[str, str], what: str = "run tags"):
        self.client, self.run_id, self.tags, self.what = client, run_id, tags, what

    def send(self):
        self.client.log_batch(self.run_id, tags=[mlflow.entities.RunTag(k, v) for k, v in self.tags.items()])

    def to_json(self):
        return {"kind": "tags", "tags": self.tags}


class ImageJob:
    """A sample grid kept as a PNG in the unsent folder until sent."""

    def __init__(self, client, run_id, key: str, step: int, path: Path):
        self.client, self.run_id, self.key, self.step, self.path = client, run_id, key, step, Path(path)
        self.what = f"sample grid of step {step}"
        self._tried = False

    def send(self):
        # A try whose answer was lost may have stored the grid: look before sending it again.
        if not (self._tried and self.step in logged_image_steps(self.client, self.run_id, self.key)):
            self._tried = True
            image = np.asarray(Image.open(self.path).convert("RGB"))
            self.client.log_image(self.run_id, image, key=self.key, step=self.step, synchronous=True)
        self.path.unlink(missing_ok=True)

    def to_json(self):
        return {"kind": "image", "key": self.key, "step": self.step, "file": self.path.name}


class CheckpointJob:
    """A generator checkpoint as a LoggedModel: created, uploaded, finalised, linked at ``step=epoch``."""

    def __init__(self, client, run_id, experiment_id, epoch: int, path: Path, model_ids: dict[int, str],
                 model_id: str | None = None):
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        self.epoch, self.path, self.model_ids, self.model_id = epoch, Path(path), model_ids, model_id
        self.what = f"checkpoint {checkpoint_name(epoch)}"
        self._uploaded = self._finalized = self._tried = False

    def send(self):
        if self.model_id is None:
            # A try whose answer was lost may have created it: reuse that model, never a second one.
            found = self._existing() if self._tried else None
            self._tried = True
            self.model_id = found or self.client.create_logged_model(
                self.experiment_id, name=checkpoint_name(self.epoch), source_run_id=self.run_id,
                params={"epoch": str(self.epoch)}, model_type=MODEL_TYPE).model_id
        if not self._uploaded:
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copyfile(self.path, Path(tmp) / GENERATOR_FILE)
                write_pyfunc_files(Path(tmp), self.model_id)
                self.client.log_model_artifacts(self.model_id, tmp)
            self._uploaded = True
        if not self._finalized:
            self.client.finalize_logged_model(self.model_id, LoggedModelStatus.READY)
            self._finalized = True
        self.client.log_outputs(self.run_id, [LoggedModelOutput(self.model_id, step=self.epoch)])
        self.model_ids[self.epoch] = self.model_id
        self.path.unlink(missing_ok=True)

    def _existing(self) -> str | None:
        models = self.client.search_logged_models(
            experiment_ids=[self.experiment_id],
            filter_string=f"source_run_id = '{self.run_id}' AND name = '{checkpoint_name(self.epoch)}'", max_results=10)
        return models[0].model_id if models else None

    def to_json(self):
        return {"kind": "checkpoint", "epoch": self.epoch, "file": self.path.name, "model_id": self.model_id}


class ResumeStateJob:
    def __init__(self, client, run_id, path: Path, latest: Callable[[], Path | None] | None = None):
        self.client, self.run_id, self.path, self.latest = client, run_id, Path(path), latest
        self.what = "the resume state"

    def send(self):
        if self.latest is None or self.latest() == self.path:  # a newer one is queued: this one is moot
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copyfile(self.path, Path(tmp) / Path(RESUME_ARTIFACT).name)
                self.client.log_artifacts(self.run_id, tmp, artifact_path=str(Path(RESUME_ARTIFACT).parent))
        self.path.unlink(missing_ok=True)

    def to_json(self):
        return {"kind": "resume", "file": self.path.name}


def sync_unsent(client: MlflowClient, run_id: str, folder: str | Path | None = None) -> tuple[int, int]:
    """Send what a run left in its unsent folder (see :class:`MlflowRunTracker.finish`), in order.

    Returns ``(sent, left)``; ``left`` records stay in the folder (the store refused them or went
    away again). Nothing already in the store is sent twice.
    """
    spool = Spool(folder if folder is not None else unsent_folder(run_id))
    pending = spool.pending()
    if not pending:
        return 0, 0
    experiment_id = get_run(client, run_id).info.experiment_id
    model_ids = {c.epoch: c.model_id for c in run_checkpoints(client, run_id)}
    sent = 0
    for index, entry in enumerate(pending):
        job = _job_from_json(client, run_id, experiment_id, spool, entry, model_ids)
        try:
            if entry["kind"] == "status":
                _set_terminated(client, run_id, entry["status"])
            elif job is not None:  # None: it is in the store already
                job.send()
        except Exception as exc:
            rest = ([job.to_json()] if job is not None else [entry]) + pending[index + 1:]
            spool.write_manifest(rest)
            print(f"warning: stopped sending at {entry['kind']} ({error_text(exc)}); {len(rest)} records are still "
                  f"in {spool.folder}/", file=sys.stderr)
            return sent, len(rest)
        sent += 1
    spool.write_manifest([])
    return sent, 0


def _job_from_json(client, run_id, experiment_id, spool: Spool, entry: dict, model_ids: dict[int, str]):
    """The job a manifest line describes; None for the run's status and what is already in the store."""
    kind = entry["kind"]
    if kind == "metrics":
        return MetricsJob(client, run_id, entry["metrics"], model_epoch=entry.get("model_epoch"),
                          model_ids=model_ids.get)
    if kind == "tags":
        return TagsJob(client, run_id, entry["tags"])
    if kind == "image":
        job = ImageJob(client, run_id, entry["key"], entry["step"], spool.folder / entry["file"])
        job._tried = True  # the earlier process may have sent it before its answer was lost
        return job
    if kind == "checkpoint":
        if entry["epoch"] in model_ids:  # it reached the store before the earlier process lost it
            (spool.folder / entry["file"]).unlink(missing_ok=True)
            return None
        job = CheckpointJob(client, run_id, experiment_id, entry["epoch"], spool.folder / entry["file"], model_ids,
                            model_id=entry.get("model_id"))
        job._tried = True
        return job
    if kind == "resume":
        return ResumeStateJob(client, run_id, spool.folder / entry["file"])
    if kind == "status":
        return None
    raise FaceganError(f"{spool.manifest} holds a record of unknown kind {kind!r}")


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
    runs = client.search_runs(experiments, filter_string="tags.`facegan.kind` = 'train'",
                              order_by=["attributes.start_time DESC"], max_results=1) if experiments else []
    if not runs:
        raise FaceganError(f"no facegan training runs in {mlflow.get_tracking_uri()}; train one with `facegan train`")
    return runs[0].info.run_id


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


class RunCheckpoint:
    """One generator checkpoint of a run, as the evaluation engine sees it (:class:`evaluation.engine.Checkpoint`).

    The file is downloaded once, on first use, into the source's scratch folder.
    """

    def __init__(self, source: "MlflowRunSource", ref: CheckpointRef):
        self.source, self.epoch, self.model_id, self.label = source, ref.epoch, ref.model_id, ref.name
        self._path: Path | None = None

    def __repr__(self):
        return f"RunCheckpoint(epoch={self.epoch}, model_id={self.model_id!r})"

    def load(self) -> tuple[object, dict]:
        """The generator (CPU, eval mode) and the checkpoint's payload (config, dataset, network)."""
        if self._path is None:
            self._path = resolve_model(f"models:/{self.model_id}", self.source.tracking_uri,
                                       self.source.scratch / self.model_id)
        # Named by run and epoch: the downloaded copy's scratch path means nothing to a user.
        return load_generator(self._path, name=f"checkpoint {self.label} (epoch {self.epoch}) of run {self.source.run_id}")

    def samples(self, num_samples, device):
        from evaluation.engine import generator_batches

        generator, _ = self.load()
        return generator_batches(generator, num_samples, device)


class MlflowRunSource:
    """A training run as a source of checkpoints for the evaluation engine, and where its scores go.

    What ``facegan evaluate --run`` reads from and writes to a run, and what training writes when
    it scores its own checkpoints (``facegan train --evaluate``), so both log the same way: scores
    per checkpoint as run metrics ``<space>/<name>`` (e.g. ``random/fid``) at ``step=epoch``,
    linked to the checkpoint's LoggedModel, so the run's charts show them against epoch beside
    the losses and the Models tab lists them per checkpoint; the sample count per feature space
    as the run tag ``facegan.num_samples.<space>``; the decision as run tags; at the end a table,
    a plot and a summary, and the registered choice.

    Use it as a context manager: downloaded checkpoints live in a scratch folder until it closes.

    ``writer``: the run's own tracker while it trains. Scores and tags then go through its
    background queue behind the checkpoints they belong to (never waiting for the store), and
    checkpoints whose model id is not known yet are linked by epoch when sent.
    """

    def __init__(self, client: MlflowClient, run_id: str, *, writer: MlflowRunTracker | None = None):
        self.client, self.run_id, self.writer = client, run_id, writer
        self.run = get_run(client, run_id)
        self.tracking_uri = mlflow.get_tracking_uri()
        self._scratch: tempfile.TemporaryDirectory | None = None
        if writer is None and unsent_folder(run_id).is_dir():  # what a training of it left unsent, first
            sync_unsent(client, run_id)
            self.run = get_run(client, run_id)
        self._tags = dict(self.run.data.tags)

    @classmethod
    def open(cls, tracking_uri: str | None, run: str) -> "MlflowRunSource":
        """``run`` is a run id or ``latest`` (the newest training run of the store)."""
        client = connect(tracking_uri)
        return cls(client, latest_run_id(client) if run == "latest" else run)

    def __enter__(self) -> "MlflowRunSource":
        return self

    def __exit__(self, *exc) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    @property
    def scratch(self) -> Path:
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="facegan-evaluate-")
        return Path(self._scratch.name)

    @property
    def description(self) -> str:
        return f"run {self.run_id}"

    def checkpoints(self) -> list[RunCheckpoint]:
        return [RunCheckpoint(self, ref) for ref in run_checkpoints(self.client, self.run_id)]

    def tag(self, key: str) -> str | None:
        return self._tags.get(key)

    def set_tags(self, tags: dict[str, str]) -> None:
        changed = {k: str(v) for k, v in tags.items() if self._tags.get(k) != str(v)}
        if changed:
            job = TagsJob(self.client, self.run_id, changed)
            self.writer.submit(job) if self.writer is not None else job.send()
            self._tags.update(changed)

    def model_id_of(self, checkpoint) -> str | None:
        """A checkpoint's LoggedModel id; for one the run has just written, once it was sent."""
        if checkpoint.model_id is None and self.writer is not None:
            return self.writer.model_id_at(checkpoint.epoch)
        return checkpoint.model_id

    # -- scores ------------------------------------------------------------------------------

    def scored_num_samples(self, space: str) -> int | None:
        """The sample count the run's checkpoints were scored with in ``space``, if any were."""
        value = self.tag(f"{NUM_SAMPLES_TAG}.{space}")
        if value is not None:
            return int(value)
        # Runs scored before the tag existed were all scored at the then only default.
        return LEGACY_NUM_SAMPLES if f"{space}/fid" in self.run.data.metrics else None

    def logged_scores(self, checkpoint, space: str, num_samples: int) -> dict[str, float] | None:
        """Scores already logged for this checkpoint in this feature space at this sample count, or None."""
        if self.scored_num_samples(space) != num_samples:
            return None
        prefix = f"{space}/"
        metrics = self.client.get_logged_model(checkpoint.model_id).metrics or []
        scores = {m.key[len(prefix):]: m.value for m in sorted(metrics, key=lambda m: m.timestamp)
                  if m.key.startswith(prefix)}
        return scores or None

    def log_scores(self, checkpoint, space: str, num_samples: int, scores: dict[str, float]) -> None:
        # Scores at another count stay in the metric history; the tag says which count the latest are.
        self.set_tags({f"{NUM_SAMPLES_TAG}.{space}": str(num_samples)})
        now = int(time.time() * 1000)
        metrics = [{"key": f"{space}/{k}", "value": float(v), "timestamp": now, "step": checkpoint.epoch}
                   for k, v in scores.items()]
        # The model id is looked up when the job is sent: behind a checkpoint still queued, once it went out.
        job = MetricsJob(self.client, self.run_id, metrics, model_epoch=checkpoint.epoch,
                         model_ids=lambda _: self.model_id_of(checkpoint),
                         what=f"scores of {checkpoint_name(checkpoint.epoch)}")
        self.writer.submit(job) if self.writer is not None else job.send()

    # -- the decision ------------------------------------------------------------------------

    def record_progress(self, evaluation) -> None:
        """Tag the run with the decision so far: the chosen and the onset epochs, and the space."""
        best = next(c for c in evaluation.checkpoints if c.epoch == evaluation.best_epoch)
        onset = evaluation.collapse.onset_epoch
        self.set_tags({
            "facegan.best_epoch": str(best.epoch),
            "facegan.collapse_epoch": "none" if onset is None else str(onset),
            # while training, the id of a checkpoint still queued is not known yet: by epoch instead
            "facegan.best_model_id": str(self.model_id_of(best) or checkpoint_name(best.epoch)),
            "facegan.evaluation_features": evaluation.features,
            "facegan.memorisation_epoch": ("none" if evaluation.memorisation is None
                                           or evaluation.memorisation.onset_epoch is None
                                           else str(evaluation.memorisation.onset_epoch)),
        })

    def record(self, evaluation, figure, register_name: str | None) -> str | None:
        """Tag the run, log the ranking table, the plot and the summary, register the chosen generator.

        Returns the registered model URI (``models:/NAME@best``), or None when not registering.

        Raises:
            FaceganError: while training, the store did not take the run's queued records in time.
        """
        if self.writer is not None:
            if not self.writer.wait_until_sent():
                raise FaceganError(f"the tracking store did not take the run's records within "
                                   f"{self.writer.send_timeout:.0f} s")
            for c in evaluation.checkpoints:  # the ids of the checkpoints sent meanwhile
                c.model_id = self.model_id_of(c)
        self.record_progress(evaluation)
        space = evaluation.features
        self.client.log_table(self.run_id, data=evaluation.table_columns(), artifact_file=f"evaluation/{space}_ranking.json")
        self.client.log_figure(self.run_id, figure, f"evaluation/{space}_scores.png")
        if not register_name:
            self.client.log_dict(self.run_id, evaluation.to_json(), f"evaluation/{space}_summary.json")
            return None
        best = next(c for c in evaluation.checkpoints if c.epoch == evaluation.best_epoch)
        registered = register_generator(self.client, best, register_name, self.run_id)
        evaluation.registered = registered
        self.client.log_dict(self.run_id, evaluation.to_json(), f"evaluation/{space}_summary.json")
        return registered


def study_run_ids(client: MlflowClient, runs: list[str], experiment: str | None) -> list[str]:
    """The training runs of a study: the given ids (``latest`` allowed), or every training run of
    ``experiment`` in the order they started."""
    if experiment is None:
        return [latest_run_id(client) if run == "latest" else get_run(client, run).info.run_id for run in runs]
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise FaceganError(f"no experiment named {experiment!r} in {mlflow.get_tracking_uri()} (there are: {names})")
    found_runs = client.search_runs([found.experiment_id], filter_string="tags.`facegan.kind` = 'train'",
                                    order_by=["attributes.start_time ASC"], max_results=1000)
    if not found_runs:
        raise FaceganError(f"experiment {experiment!r} has no facegan training runs")
    return [r.info.run_id for r in found_runs]


def log_study(client: MlflowClient, study, figure, *, experiment_id: str, register_name: str | None) -> tuple[str, str | None]:
    """The study as a run of its own (tag ``facegan.kind=study``): the runs' table, the comparison
    plot and the summary; the study's best registered. Returns (study run id, registered URI)."""
    best = study.best
    run = client.create_run(experiment_id, run_name=f"study-{study.features}",
                            tags={"facegan.kind": "study", "facegan.study_best_run": best.run_id,
                                  "facegan.study_best_epoch": str(best.evaluation.best_epoch),
                                  "facegan.evaluation_features": study.features})
    run_id = run.info.run_id
    try:
        client.log_batch(run_id, params=[mlflow.entities.Param("features", study.features),
                                         mlflow.entities.Param("num_samples", str(study.num_samples)),
                                         mlflow.entities.Param("runs", ",".join(r.run_id for r in study.runs)[:6000])])
        client.log_table(run_id, data=study.table_columns(), artifact_file=f"study/{study.features}_runs.json")
        client.log_figure(run_id, figure, f"study/{study.features}_comparison.png")
        registered = None
        if register_name:
            registered = register_generator(client, best.best, register_name, best.run_id)
        study.study_run_id, study.registered = run_id, registered
        client.log_dict(run_id, study.to_json(), f"study/{study.features}_summary.json")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id, registered


# ----------------------------------------------------------------------------------------------
# The checkpoint as an MLflow pyfunc model


PYFUNC_LOADER = "facegan.pyfunc"
# What a checkpoint's model needs beside facegan itself; pinned to the versions it was logged with.
PYFUNC_REQUIREMENTS = ("torch", "numpy", "pandas", "pillow", "mlflow")


def write_pyfunc_files(folder: Path, model_id: str | None = None) -> None:
    """Write the MLmodel, requirements and environment files that make the checkpoint in
    ``folder`` (``generator.pt``) an MLflow ``python_function`` model (:mod:`facegan.pyfunc`).

    Written out rather than by ``mlflow.pyfunc.save_model``, which infers requirements by
    importing and running the model: that costs seconds per checkpoint, this a few milliseconds.
    """
    from importlib.metadata import PackageNotFoundError, version

    import mlflow.pyfunc
    from mlflow.models import Model, ModelSignature
    from mlflow.types import ColSpec, Schema

    def pinned(package: str) -> str:
        try:
            return f"{package}=={version(package)}"
        except PackageNotFoundError:
            return package

    requirements = [pinned("facegan")] + [pinned(p) for p in PYFUNC_REQUIREMENTS]
    (folder / "requirements.txt").write_text("\n".join(requirements) + "\n")
    python = ".".join(map(str, sys.version_info[:3]))
    (folder / "python_env.yaml").write_text(
        f"python: {python}\nbuild_dependencies:\n- pip\n- setuptools\n- wheel\n"
        "dependencies:\n- -r requirements.txt\n")
    (folder / "conda.yaml").write_text(
        f"channels:\n- conda-forge\ndependencies:\n- python={python}\n- pip\n- pip:\n"
        + "".join(f"  - {r}\n" for r in requirements) + "name: facegan-env\n")
    signature = ModelSignature(
        inputs=Schema([ColSpec("long", "seed"), ColSpec("double", "truncation", required=False)]),
        outputs=Schema([ColSpec("string", "png")]),
    )
    model = Model(signature=signature, model_id=model_id)
    mlflow.pyfunc.add_to_model(model, loader_module=PYFUNC_LOADER, data=GENERATOR_FILE,
                               conda_env="conda.yaml", python_env="python_env.yaml")
    model.save(str(folder / "MLmodel"))


def _ensure_pyfunc(client: MlflowClient, model_id: str) -> None:
    """Give a checkpoint logged before facegan wrote MLmodel files its pyfunc files."""
    if any(info.path == "MLmodel" for info in client.list_logged_model_artifacts(model_id)):
        return
    with tempfile.TemporaryDirectory() as tmp:
        write_pyfunc_files(Path(tmp), model_id)
        client.log_model_artifacts(model_id, tmp)


def register_generator(client: MlflowClient, ref, name: str, run_id: str) -> str:
    """Register a checkpoint's LoggedModel under ``name`` and point the alias ``best`` at it."""
    source = f"models:/{ref.model_id}"
    _ensure_pyfunc(client, ref.model_id)
    try:
        current = client.get_model_version_by_alias(name, "best")
    except MlflowException:
        current = None
    if current is not None and current.source == source:
        return f"models:/{name}@best"  # already the registered choice: no new version
    # mlflow.register_model also links the version to the LoggedModel (its Models tab shows the
    # version); it prints a line to stderr, which the CLI's own output replaces.
    with contextlib.redirect_stderr(io.StringIO()):
        version = mlflow.register_model(source, name, tags={"epoch": str(ref.epoch), "run_id": run_id})
    client.set_registered_model_alias(name, "best", version.version)
    return f"models:/{name}@best"
