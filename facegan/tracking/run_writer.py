"""Writing a training run: the tracker the loop logs through, and the records it sends.

:class:`MlflowRunTracker` implements the loop's tracker interface
(:class:`facegan.run_tracker.RunTracker`) against a real store. Layout (docs/ARCHITECTURE.md,
"MLflow layout"):

- params: the resolved config, flat (``train.loss``, ...);
- input: the dataset, with a digest of the whole uint8 tensor;
- metrics: ``step=epoch``; sample grids: ``log_image(key="samples", step=epoch)``, step 0 too;
- generator checkpoints: LoggedModels named ``generator-epoch-0100`` with param ``epoch``, linked
  to the run at ``step=epoch``: the checkpoint file and hand-written pyfunc files
  (:func:`facegan.tracking.registry.write_pyfunc_files`), not ``mlflow.pytorch.log_model``
  (seconds each);
- resume state: run artifact ``resume/state.pt``.

A store that goes away must neither stall nor kill training: what the loop logs after the start
is a job (:class:`MetricsJob`, :class:`ImageJob`, ...) for a background :class:`facegan.sender.Sender`,
sent in order and retried until the store is back; what is still unsent when the run ends is
kept in ``facegan-unsent-<run>/`` for :func:`sync_unsent` (``facegan sync``).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from PIL import Image

from facegan.checkpoint import GENERATOR_FILE
from facegan.common import error_text
from facegan.errors import FaceganError
from facegan.run_tracker import checkpoint_name
from facegan.sender import Sender, Spool
from facegan.tracking.registry import write_pyfunc_files
from facegan.tracking.store import (
    MODEL_TYPE, TRAIN_KIND, connect, get_run, is_transient, logged_image_steps, run_checkpoints, training_experiment,
)

RESUME_ARTIFACT = "resume/state.pt"
DEFAULT_SEND_TIMEOUT_S = 120.0  # how long a finished run waits for a store that is away


def unsent_folder(run_id: str) -> Path:
    """Where a run keeps what has not reached the store: ``./facegan-unsent-<run id>/``."""
    return Path(f"facegan-unsent-{run_id}")


class CheckpointIds:
    """A run's checkpoints' LoggedModel ids by epoch, as they become known.

    A checkpoint's id exists once its job has been sent, so records queued behind it (its
    scores) look the id up when they are sent, not when they are queued.
    """

    def __init__(self, ids: dict[int, str] | None = None):
        self._ids = dict(ids or {})

    def get(self, epoch: int) -> str | None:
        return self._ids.get(epoch)

    def record(self, epoch: int, model_id: str) -> None:
        self._ids[epoch] = model_id

    def __contains__(self, epoch: int) -> bool:
        return epoch in self._ids


class SendNow:
    """The outbox of a run that is not training: every record is sent at once, in the caller's thread."""

    model_ids = CheckpointIds()  # nothing is ever queued, so no id becomes known later
    send_timeout = 0.0

    def submit(self, job) -> None:
        job.send()

    def wait_until_sent(self, timeout: float | None = None) -> bool:
        return True


class MlflowRunTracker:
    """A tracker writing one MLflow run; also reopens a run to resume it.

    Parameters, the dataset and the run's creation are sent at once (a store that is away at
    the start is an immediate, clear error); everything the loop logs afterwards goes through a
    background :class:`facegan.sender.Sender`, so training never waits for the store. The
    checkpoints' model ids are known once they are sent (:attr:`model_ids`). It is also the
    outbox of the run's scores while it trains (:class:`facegan.tracking.run_source.MlflowRunSource`).
    """

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str):
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        self.send_timeout = DEFAULT_SEND_TIMEOUT_S  # tracking.send_timeout
        self.spool = Spool(unsent_folder(run_id))
        self.model_ids = CheckpointIds()
        self._latest_resume: Path | None = None
        self.sender = Sender(is_transient=is_transient, spool=self.spool)

    @classmethod
    def start(cls, tracking_uri: str | None, experiment: str, run_name: str | None = None) -> "MlflowRunTracker":
        client = connect(tracking_uri)
        experiment_id = training_experiment(client, experiment)
        run = client.create_run(experiment_id, run_name=run_name, tags={"facegan.kind": TRAIN_KIND})
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

    def submit(self, job) -> None:
        """Queue one record; the background sender sends it in turn."""
        self.sender.submit(job)

    # -- what the loop logs ------------------------------------------------------------------

    def log_params(self, params):
        self.client.log_batch(self.run_id, params=[Param(k, "none" if v is None else str(v)) for k, v in params.items()])

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
        """Queue the checkpoint; None: its model id is known once sent (:attr:`model_ids`)."""
        kept = self.spool.path(f"{checkpoint_name(epoch)}.pt")
        shutil.copyfile(path, kept)  # the loop deletes its file; this copy lives until it is sent
        self.submit(CheckpointJob(self.client, self.run_id, self.experiment_id, epoch, kept, self.model_ids))
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


# ----------------------------------------------------------------------------------------------
# The records the background sender sends (facegan.sender.Job). Each remembers what went
# through, so a retry after a failure repeats only the failed step and nothing is logged twice.
# ``maybe_sent``: an earlier try (or an earlier process) may have sent it before its answer was
# lost, so look in the store before sending again.


class MetricsJob:
    """A batch of metrics (an epoch's, or a checkpoint's scores). ``model_epoch``: link each to the
    run's checkpoint of that epoch, its id looked up in ``model_ids`` when sent (the checkpoint
    may have been queued just before)."""

    def __init__(self, client, run_id, metrics: list[dict], *, model_epoch: int | None = None,
                 model_ids: CheckpointIds | None = None, what: str | None = None):
        self.client, self.run_id, self.metrics = client, run_id, metrics
        self.model_epoch, self.model_ids = model_epoch, model_ids
        self.what = what or f"metrics of step {metrics[0]['step'] if metrics else '?'}"

    def send(self):
        model_id = None
        if self.model_epoch is not None and self.model_ids is not None:
            model_id = self.model_ids.get(self.model_epoch)
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
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in self.tags.items()])

    def to_json(self):
        return {"kind": "tags", "tags": self.tags}


class ImageJob:
    """A sample grid kept as a PNG in the unsent folder until sent."""

    def __init__(self, client, run_id, key: str, step: int, path: Path, *, maybe_sent: bool = False):
        self.client, self.run_id, self.key, self.step, self.path = client, run_id, key, step, Path(path)
        self.what = f"sample grid of step {step}"
        self._maybe_sent = maybe_sent

    def send(self):
        if not (self._maybe_sent and self.step in logged_image_steps(self.client, self.run_id, self.key)):
            self._maybe_sent = True
            image = np.asarray(Image.open(self.path).convert("RGB"))
            self.client.log_image(self.run_id, image, key=self.key, step=self.step, synchronous=True)
        self.path.unlink(missing_ok=True)

    def to_json(self):
        return {"kind": "image", "key": self.key, "step": self.step, "file": self.path.name}


class CheckpointJob:
    """A generator checkpoint as a LoggedModel: created, uploaded, finalised, linked at ``step=epoch``;
    its id is recorded in ``model_ids`` once it went through."""

    def __init__(self, client, run_id, experiment_id, epoch: int, path: Path, model_ids: CheckpointIds,
                 model_id: str | None = None, *, maybe_sent: bool = False):
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        self.epoch, self.path, self.model_ids, self.model_id = epoch, Path(path), model_ids, model_id
        self.what = f"checkpoint {checkpoint_name(epoch)}"
        self._uploaded = self._finalized = False
        self._maybe_sent = maybe_sent

    def send(self):
        if self.model_id is None:
            # A try whose answer was lost may have created it: reuse that model, never a second one.
            found = self._existing() if self._maybe_sent else None
            self._maybe_sent = True
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
        self.model_ids.record(self.epoch, self.model_id)
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
    """Send what a run left in its unsent folder (see :meth:`MlflowRunTracker.finish`), in order.

    Returns ``(sent, left)``; ``left`` records stay in the folder (the store refused them or went
    away again). Nothing already in the store is sent twice.
    """
    spool = Spool(folder if folder is not None else unsent_folder(run_id))
    pending = spool.pending()
    if not pending:
        return 0, 0
    experiment_id = get_run(client, run_id).info.experiment_id
    model_ids = CheckpointIds({c.epoch: c.model_id for c in run_checkpoints(client, run_id)})
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


def _job_from_json(client, run_id, experiment_id, spool: Spool, entry: dict, model_ids: CheckpointIds):
    """The job a manifest line describes; None for the run's status and what is already in the store."""
    kind = entry["kind"]
    if kind == "metrics":
        return MetricsJob(client, run_id, entry["metrics"], model_epoch=entry.get("model_epoch"), model_ids=model_ids)
    if kind == "tags":
        return TagsJob(client, run_id, entry["tags"])
    if kind == "image":
        # The earlier process may have sent it before its answer was lost.
        return ImageJob(client, run_id, entry["key"], entry["step"], spool.folder / entry["file"], maybe_sent=True)
    if kind == "checkpoint":
        if entry["epoch"] in model_ids:  # it reached the store before the earlier process lost it
            (spool.folder / entry["file"]).unlink(missing_ok=True)
            return None
        return CheckpointJob(client, run_id, experiment_id, entry["epoch"], spool.folder / entry["file"], model_ids,
                             model_id=entry.get("model_id"), maybe_sent=True)
    if kind == "resume":
        return ResumeStateJob(client, run_id, spool.folder / entry["file"])
    if kind == "status":
        return None
    raise FaceganError(f"{spool.manifest} holds a record of unknown kind {kind!r}")
