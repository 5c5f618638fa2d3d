"""A training run as a source of checkpoints for the evaluation engine, and where its scores go.

:class:`MlflowRunSource` is what ``facegan evaluate --run`` reads from and writes to a run, and
what training writes through when it scores its own checkpoints (``facegan train --evaluate``),
so both log the same way: scores per checkpoint as run metrics ``<space>/<name>`` (e.g.
``random/fid``) at ``step=epoch``, linked to the checkpoint's LoggedModel, so the run's charts
show them against epoch beside the losses and the Models tab lists them per checkpoint; the
sample count per feature space as the run tag ``facegan.num_samples.<space>``; the decision as
run tags; at the end a table, a plot and a summary, and the registered choice.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from facegan.checkpoint import load_generator
from facegan.errors import FaceganError
from facegan.run_tracker import checkpoint_name
from facegan.tracking.registry import candidate_of, register_choice
from facegan.tracking.run_writer import (
    CheckpointIds, CheckpointJob, MetricsJob, MlflowRunTracker, SendNow, TagsJob, sync_unsent, unsent_folder,
)
from facegan.tracking.store import (
    CheckpointRef, connect, get_run, latest_run_id, mark_model_training, resolve_model, run_checkpoints,
)

NUM_SAMPLES_TAG = "facegan.num_samples"  # + ".<space>": samples per checkpoint its scores came from
REAL_DATA_TAG = "facegan.real_data"  # + ".<space>": the digest of the real images its latest scores are against
LEGACY_NUM_SAMPLES = 2000  # what runs scored before that tag existed were scored with


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
    """A training run: its checkpoints for the engine, and the :class:`evaluation.engine.DecisionLog`
    its scores and decision go to.

    Use it as a context manager: downloaded checkpoints live in a scratch folder until it closes.

    ``tracker``: the run's own tracker while it trains. Scores and tags then go through its
    background queue behind the checkpoints they belong to (never waiting for the store);
    otherwise they are sent at once. Either way every record goes out through :attr:`outbox`.
    ``promote``: the registered choice takes the aliases even when it is not better than their
    holders (``facegan evaluate --promote``).
    """

    def __init__(self, client: MlflowClient, run_id: str, *, tracker: MlflowRunTracker | None = None,
                 promote: bool = False):
        self.client, self.run_id, self.promote = client, run_id, promote
        self.outbox = tracker if tracker is not None else SendNow()
        self.model_ids: CheckpointIds = tracker.model_ids if tracker is not None else CheckpointIds()
        self.run = get_run(client, run_id)
        self.tracking_uri = mlflow.get_tracking_uri()
        self._scratch: tempfile.TemporaryDirectory | None = None
        if tracker is None and unsent_folder(run_id).is_dir():  # what a training of it left unsent, first
            sync_unsent(client, run_id)
            self.run = get_run(client, run_id)
        self._tags = dict(self.run.data.tags)

    @classmethod
    def open(cls, tracking_uri: str | None, run: str, *, promote: bool = False) -> "MlflowRunSource":
        """``run`` is a run id or ``latest`` (the newest training run of the store)."""
        client = connect(tracking_uri)
        return cls(client, latest_run_id(client) if run == "latest" else run, promote=promote)

    def __enter__(self) -> "MlflowRunSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove the downloaded checkpoints."""
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
        refs = run_checkpoints(self.client, self.run_id)
        for ref in refs:
            self.model_ids.record(ref.epoch, ref.model_id)
        return [RunCheckpoint(self, ref) for ref in refs]

    def tag(self, key: str) -> str | None:
        return self._tags.get(key)

    def set_tags(self, tags: dict[str, str]) -> None:
        changed = {k: str(v) for k, v in tags.items() if self._tags.get(k) != str(v)}
        if changed:
            self.outbox.submit(TagsJob(self.client, self.run_id, changed))
            self._tags.update(changed)

    def model_id_of(self, checkpoint) -> str | None:
        """A checkpoint's LoggedModel id; for one the run has just written, once it was sent."""
        return checkpoint.model_id or self.model_ids.get(checkpoint.epoch)

    def log_generator(self, path: Path, epoch: int) -> str:
        """Log a facegan checkpoint file as this run's model at ``epoch`` (as training logs its
        checkpoints); returns the model's id, which the run's scores at that epoch then link to."""
        job = CheckpointJob(self.client, self.run_id, self.run.info.experiment_id, epoch, Path(path), self.model_ids)
        self.outbox.submit(job)
        return job.model_id

    def finish(self, status: str) -> None:
        """Mark the run ended (runs this source made, such as :func:`imported_run`'s)."""
        self.client.set_terminated(self.run_id, status=status)

    # -- scores ------------------------------------------------------------------------------

    def scored_num_samples(self, space: str) -> int | None:
        """The sample count the run's checkpoints were scored with in ``space``, if any were."""
        value = self.tag(f"{NUM_SAMPLES_TAG}.{space}")
        if value is not None:
            return int(value)
        # Runs scored before the tag existed were all scored at the then only default.
        return LEGACY_NUM_SAMPLES if f"{space}/fid" in self.run.data.metrics else None

    def logged_scores(self, checkpoint, space: str, num_samples: int, *, real_digest: str) -> dict[str, float] | None:
        """Scores already logged for this checkpoint in this feature space at this sample count against
        the same real images, or None. (Runs scored before the real-data tag existed were scored
        against their own training data or what the user gave; their scores are taken as they are.)"""
        if self.scored_num_samples(space) != num_samples:
            return None
        scored_against = self.tag(f"{REAL_DATA_TAG}.{space}")
        if scored_against is not None and scored_against != real_digest:
            return None
        prefix = f"{space}/"
        metrics = self.client.get_logged_model(checkpoint.model_id).metrics or []
        scores = {m.key[len(prefix):]: m.value for m in sorted(metrics, key=lambda m: m.timestamp)
                  if m.key.startswith(prefix)}
        return scores or None

    def log_scores(self, checkpoint, space: str, num_samples: int, scores: dict[str, float], *,
                   real_digest: str) -> None:
        # Scores at another count or against other real images stay in the metric history; the tags
        # say which count and which real images the latest are.
        self.set_tags({f"{NUM_SAMPLES_TAG}.{space}": str(num_samples), f"{REAL_DATA_TAG}.{space}": real_digest})
        now = int(time.time() * 1000)
        metrics = [{"key": f"{space}/{k}", "value": float(v), "timestamp": now, "step": checkpoint.epoch}
                   for k, v in scores.items()]
        if checkpoint.model_id is not None:
            self.model_ids.record(checkpoint.epoch, checkpoint.model_id)
        # Linked by epoch when sent: behind a checkpoint still queued, its id is known once it went out.
        self.outbox.submit(MetricsJob(self.client, self.run_id, metrics, model_epoch=checkpoint.epoch,
                                      model_ids=self.model_ids, what=f"scores of {checkpoint_name(checkpoint.epoch)}"))

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

        Returns the registered model URI (``models:/NAME@best`` when the choice holds ``best``; the
        rules: :mod:`facegan.tracking.registry`), or None when not registering.

        Raises:
            FaceganError: while training, the store did not take the run's queued records in time.
        """
        if not self.outbox.wait_until_sent():
            raise FaceganError(f"the tracking store did not take the run's records within "
                               f"{self.outbox.send_timeout:.0f} s")
        for c in evaluation.checkpoints:  # the ids of the checkpoints sent meanwhile
            c.model_id = self.model_id_of(c)
        self.record_progress(evaluation)
        mark_model_training(self.client, self.client.get_experiment(self.run.info.experiment_id))
        space = evaluation.features
        self.client.log_table(self.run_id, data=evaluation.table_columns(), artifact_file=f"evaluation/{space}_ranking.json")
        self.client.log_figure(self.run_id, figure, f"evaluation/{space}_scores.png")
        if register_name:
            registration = register_choice(self.client, register_name, candidate_of(evaluation, self.run_id),
                                           promote=self.promote)
            evaluation.registered, evaluation.registration_lines = registration.uri, registration.lines()
        self.client.log_dict(self.run_id, evaluation.to_json(), f"evaluation/{space}_summary.json")
        return evaluation.registered


    def log_report(self, page: str, space: str) -> str:
        """The evidence page (:mod:`evaluation.report`, one self-contained HTML file) as the artifact
        ``evaluation/<space>_report.html``, which MLflow's artifact viewer shows; returns where it lies."""
        path = f"evaluation/{space}_report.html"
        self.client.log_text(self.run_id, page, path)
        return f"{self.run.info.artifact_uri.rstrip('/')}/{path}"


IMPORTED_EXPERIMENT = "facegan-imported"  # where runs made by other code are logged when their choice is registered
IMPORT_KIND = "import"  # the tag facegan.kind of such a run


def imported_run(tracking_uri: str | None, name: str, params: dict[str, str]) -> MlflowRunSource:
    """A new run (tag ``facegan.kind=import``, experiment ``facegan-imported``) for checkpoints
    made by other code (``facegan evaluate --checkpoints``): their scores are logged to it as a
    training run's are, and the checkpoint chosen is logged as its model
    (:meth:`MlflowRunSource.log_generator`) so that it can be registered."""
    from facegan.tracking.store import training_experiment

    client = connect(tracking_uri)
    experiment_id = training_experiment(client, IMPORTED_EXPERIMENT)
    run = client.create_run(experiment_id, run_name=name, tags={"facegan.kind": IMPORT_KIND})
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, str(v)[:6000]) for k, v in params.items()])
    return MlflowRunSource(client, run.info.run_id)


def active_run_log() -> MlflowRunSource:
    """The active MLflow run (``mlflow.start_run()``) as the log of a :class:`facegan.judge.Judge`:
    scores, tags, the table, the plot and the registered choice go to it exactly as
    ``facegan train --evaluate`` logs them into a facegan run.

    Raises:
        FaceganError: no run is active.
    """
    run = mlflow.active_run()
    if run is None:
        raise FaceganError("no active MLflow run: call mlflow.start_run() before active_run_log()")
    return MlflowRunSource(connect(mlflow.get_tracking_uri()), run.info.run_id)
