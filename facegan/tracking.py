"""Everything facegan tells MLflow, and everything it reads back: the only module importing mlflow.

The training loop talks to a small tracker interface (:class:`facegan.run_tracker.RunTracker`);
:class:`MlflowRunTracker` implements it against a real tracking store. Layout (docs/ARCHITECTURE.md, "MLflow layout"):

- params: the resolved config, flat (``train.loss``, ...);
- input: the dataset, with a digest of the whole uint8 tensor;
- metrics: ``step=epoch``; sample grids: ``log_image(key="samples", step=epoch)``, step 0 too;
- generator checkpoints: LoggedModels named ``generator-epoch-0100`` with param ``epoch``, linked
  to the run at ``step=epoch``; a state_dict file, not ``mlflow.pytorch.log_model`` (seconds each);
- resume state: run artifact ``resume/state.pt``.

A remote server that goes away must not stall or kill training: requests retry briefly, metrics
that cannot be sent are kept and re-sent with the next batch, and whatever is still unsent at the
end is written to a local JSON file (nothing is lost).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from facegan.checkpoint import GENERATOR_FILE, load_generator
from facegan.errors import FaceganError
from facegan.run_tracker import checkpoint_name

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


def connect(uri: str | None) -> MlflowClient:
    """Point MLflow at the store and check that it answers; a clear error if it does not."""
    uri = resolve_tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        client = MlflowClient(uri, registry_uri=uri)
        client.search_experiments(max_results=1)
    except Exception as exc:  # connection errors, bad URIs, unreadable databases
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FaceganError(f"cannot reach the MLflow tracking store at {uri}: {reason}") from None
    return client


class MlflowRunTracker:
    """A tracker writing one MLflow run; also reopens a run to resume it."""

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str):
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        self._pending: list[Metric] = []
        self._warned = False
        # Where what MLflow could not take is kept (created on first use).
        self.fallback_dir = Path(f"facegan-unsent-{run_id}")

    def _warn_once(self, what: str, exc: Exception) -> None:
        if not self._warned:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"warning: MLflow did not take {what} ({reason}); training goes on, and what cannot "
                  f"be sent is kept in {self.fallback_dir}/", file=sys.stderr)
            self._warned = True

    def _keep_locally(self, source: Path | None, name: str, data: bytes | None = None) -> Path:
        self.fallback_dir.mkdir(parents=True, exist_ok=True)
        target = self.fallback_dir / name
        if source is not None:
            shutil.copyfile(source, target)
        else:
            target.write_bytes(data)
        return target

    @classmethod
    def start(cls, tracking_uri: str | None, experiment: str, run_name: str | None = None) -> "MlflowRunTracker":
        client = connect(tracking_uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        run = client.create_run(experiment_id, run_name=run_name, tags={"facegan.kind": "train"})
        return cls(client, run.info.run_id, experiment_id)

    @classmethod
    def reopen(cls, tracking_uri: str | None, run_id: str) -> "MlflowRunTracker":
        client = connect(tracking_uri)
        run = get_run(client, run_id)
        return cls(client, run_id, run.info.experiment_id)

    def mark_running(self) -> None:
        """A resumed run is RUNNING again once training really continues (not on a refusal)."""
        self.client.update_run(self.run_id, status="RUNNING")

    # -- what the loop logs ------------------------------------------------------------------

    def log_params(self, params):
        self.client.log_batch(
            self.run_id, params=[mlflow.entities.Param(k, "none" if v is None else str(v)) for k, v in params.items()]
        )

    def set_tags(self, tags):
        self.client.log_batch(self.run_id, tags=[mlflow.entities.RunTag(k, str(v)) for k, v in tags.items()])

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
        self._pending += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self._flush()

    def _flush(self) -> bool:
        if not self._pending:
            return True
        try:
            while self._pending:  # sent in MLflow's batch size; what went through is dropped
                self.client.log_batch(self.run_id, metrics=self._pending[:1000])
                del self._pending[:1000]
        except Exception as exc:
            self._warn_once("metrics", exc)
            return False
        return True

    def log_image(self, key, image, step):
        try:
            self.client.log_image(self.run_id, np.asarray(image), key=key, step=step, synchronous=True)
        except Exception as exc:
            self._warn_once("a sample grid", exc)
            buffer = io.BytesIO()
            Image.fromarray(np.asarray(image)).save(buffer, format="PNG")
            self._keep_locally(None, f"{key}-step-{step:06d}.png", buffer.getvalue())

    def log_checkpoint(self, path, epoch):
        try:
            return self._log_checkpoint(path, epoch)
        except Exception as exc:
            self._warn_once("a checkpoint", exc)
            self._keep_locally(Path(path), f"{checkpoint_name(epoch)}.pt")
            return None  # no LoggedModel: its scores, if any, are logged unlinked

    def _log_checkpoint(self, path, epoch):
        model = self.client.create_logged_model(
            self.experiment_id,
            name=checkpoint_name(epoch),
            source_run_id=self.run_id,
            params={"epoch": str(epoch)},
            model_type=MODEL_TYPE,
        )
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copyfile(path, Path(tmp) / GENERATOR_FILE)
            self.client.log_model_artifacts(model.model_id, tmp)
        self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        self.client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, step=epoch)])
        return model.model_id

    def checkpoint_epochs(self):
        return {c.epoch for c in run_checkpoints(self.client, self.run_id)}

    def save_resume_state(self, path):
        try:
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copyfile(path, Path(tmp) / Path(RESUME_ARTIFACT).name)
                self.client.log_artifacts(self.run_id, tmp, artifact_path=str(Path(RESUME_ARTIFACT).parent))
        except Exception as exc:
            self._warn_once("the resume state", exc)
            self._keep_locally(Path(path), "resume-state.pt")

    def fetch_resume_state(self, dest_dir):
        try:
            return Path(self.client.download_artifacts(self.run_id, RESUME_ARTIFACT, str(dest_dir)))
        except (MlflowException, OSError):
            return None

    def logged_metric_steps(self, key: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    def logged_image_steps(self, key: str) -> set[int]:
        steps = set()
        for info in self.client.list_artifacts(self.run_id, "images"):
            name = Path(info.path).name
            # log_image names files "<key>+step+<step>+timestamp+..." ("%" in older MLflow).
            parts = re.split(r"[+%]", name)
            if len(parts) > 2 and parts[0] == key and parts[1] == "step":
                steps.add(int(parts[2]))
        return steps

    def finish(self, status):
        if not self._flush():
            out = self._keep_locally(None, "metrics.json", json.dumps([m.to_dictionary() for m in self._pending]).encode())
            print(f"warning: {len(self._pending)} metrics could not reach MLflow; saved in {out}", file=sys.stderr)
        for attempt in range(5):  # a sqlite store may be locked for a moment by another reader
            try:
                self.client.set_terminated(self.run_id, status=status)
                return
            except Exception as exc:
                error = exc
                time.sleep(0.5 * (attempt + 1))
        print(f"warning: could not mark run {self.run_id} {status}: {str(error).splitlines()[0]}", file=sys.stderr)


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
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FaceganError(f"cannot load model {spec} from {mlflow.get_tracking_uri()}: {reason}") from None
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
    """

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id
        self.run = get_run(client, run_id)
        self.tracking_uri = mlflow.get_tracking_uri()
        self._scratch: tempfile.TemporaryDirectory | None = None
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
            self.client.log_batch(self.run_id, tags=[mlflow.entities.RunTag(k, v) for k, v in changed.items()])
            self._tags.update(changed)

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
        metrics = [Metric(f"{space}/{k}", float(v), now, checkpoint.epoch, model_id=checkpoint.model_id,
                          run_id=self.run_id) for k, v in scores.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    # -- the decision ------------------------------------------------------------------------

    def record_progress(self, evaluation) -> None:
        """Tag the run with the decision so far: the chosen and the onset epochs, and the space."""
        best = next(c for c in evaluation.checkpoints if c.epoch == evaluation.best_epoch)
        onset = evaluation.collapse.onset_epoch
        self.set_tags({
            "facegan.best_epoch": str(best.epoch),
            "facegan.collapse_epoch": "none" if onset is None else str(onset),
            "facegan.best_model_id": str(best.model_id),
            "facegan.evaluation_features": evaluation.features,
            "facegan.memorisation_epoch": ("none" if evaluation.memorisation is None
                                           or evaluation.memorisation.onset_epoch is None
                                           else str(evaluation.memorisation.onset_epoch)),
        })

    def record(self, evaluation, figure, register_name: str | None) -> str | None:
        """Tag the run, log the ranking table, the plot and the summary, register the chosen generator.

        Returns the registered model URI (``models:/NAME@best``), or None when not registering.
        """
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


def register_generator(client: MlflowClient, ref, name: str, run_id: str) -> str:
    """Register a checkpoint's LoggedModel under ``name`` and point the alias ``best`` at it."""
    source = f"models:/{ref.model_id}"
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
