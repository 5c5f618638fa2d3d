"""Checkpoints as MLflow models, the registered choice, and a study's own run.

- :func:`write_pyfunc_files`: the files that make a checkpoint an MLflow ``python_function``
  model (:mod:`facegan.pyfunc` loads it), written by hand in milliseconds;
- :func:`register_choice`: the chosen checkpoint in the model registry, and the aliases
  (``best``, ``best-<space>``) it earns against the versions already there;
- :func:`log_study`: a study (several runs compared) as a run of its own.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from facegan.checkpoint import GENERATOR_FILE
from facegan.config import BEST_ALIAS

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


# ----------------------------------------------------------------------------------------------
# The registered choice: what an alias means (README, "The model registry")
#
# - One registry version per checkpoint, ever: registering a checkpoint again reuses its version.
# - A version carries the scores that chose it, one per comparison class (feature space, real
#   images' digest, sample count) with when it was scored, as JSON in the tag ``facegan.scores``;
#   for people, ``fid.<space>`` (the latest, with its sample count and data), ``run_id``,
#   ``epoch`` and ``model_id``.
# - Each alias has a comparison class, kept as the registered model's tag ``alias.<alias>``: a
#   feature space, real data and sample count. ``best-<space>`` follows one space; ``best`` (what
#   ``serve`` and ``generate`` load) follows the space it was first set in. An alias points at
#   the version with the lowest FID among the versions scored in its class (since it was last
#   set by hand). A choice of another class leaves it where it is, and the output says why.
# - ``--promote`` (set by hand) moves the aliases to this choice, makes its class theirs and
#   leaves out every version scored before: later choices compete with it from there.
# Because an alias is a function of the versions' tags, two evaluations registering at once end
# on the same holder whatever the order of their requests: each one tags its version first, sets
# the alias, then reads again until the alias agrees with the tags.

_CONVERGE_ATTEMPTS = 5
_DESCRIPTION = (
    "Generator checkpoints chosen by facegan (lowest FID before any collapse or copying). One version per "
    "checkpoint. `@best-<space>` (e.g. `@best-random`) points at the version with the lowest FID in that "
    "feature space (same real images, same sample count); `@best`, what `facegan serve` and `facegan generate` load, follows the space "
    "it was first set in. A choice that is not better leaves them in place; `facegan evaluate --promote` "
    "moves them anyway. Each version's tag facegan.scores holds the scores that chose it.")


@dataclass(frozen=True)
class Candidate:
    """A chosen checkpoint offered to the registry, with what makes its score comparable."""

    model_id: str
    run_id: str
    epoch: int
    space: str
    data: str  # digest of the real images it was scored against
    num_samples: int
    fid: float

    @property
    def comparison(self) -> dict:
        return {"space": self.space, "data": self.data[:16], "num_samples": self.num_samples}


@dataclass
class Registration:
    """What registering a choice did: its version, and for each alias whether it moved or why not."""

    name: str
    version: str
    epoch: int
    run_id: str
    moved: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # one sentence per alias that stayed

    @property
    def uri(self) -> str:
        """The most telling URI of the choice: ``@best`` when it holds it, else the alias it holds, else its version."""
        alias = BEST_ALIAS if BEST_ALIAS in self.moved else (self.moved[0] if self.moved else None)
        return f"models:/{self.name}@{alias}" if alias else f"models:/{self.name}/{self.version}"

    def lines(self) -> list[str]:
        """For people: one line on the version and the aliases it holds, one per alias that stayed."""
        holds = ", ".join(f"@{a}" for a in self.moved) or "no alias"
        return [f"registered: {self.uri} (epoch {self.epoch} of run {self.run_id}: version {self.version} of "
                f"{self.name}, holding {holds})"] + \
            [f"kept: {line}" for line in self.kept]


SCORES_TAG = "facegan.scores"  # a version's scores, one per comparison class, as JSON


@dataclass(frozen=True)
class VersionScore:
    """A registered version's score in one comparison class, read back from its tags."""

    version: int
    run_id: str
    epoch: str
    fid: float
    data: str
    num_samples: int
    scored_at: int

    @classmethod
    def of(cls, version, space: str) -> "list[VersionScore]":
        """Every score the version carries in ``space`` (one per real data and sample count)."""
        tags = version.tags or {}
        try:
            entries = json.loads(tags.get(SCORES_TAG, "[]"))
            return [cls(int(version.version), tags.get("run_id", "?"), tags.get("epoch", "?"), float(e["fid"]),
                        e["data"], int(e["num_samples"]), int(e["scored_at"])) for e in entries if e["space"] == space]
        except (KeyError, TypeError, ValueError):  # a tag edited by hand: this version takes no part
            return []


def _with_score(tags: dict, candidate: "Candidate", scored_at: int) -> str:
    """The version's scores tag with the candidate's score in its class added (or replaced)."""
    try:
        entries = json.loads(tags.get(SCORES_TAG, "[]"))
    except ValueError:
        entries = []
    mine = {**candidate.comparison, "fid": float(candidate.fid), "scored_at": scored_at}
    keep = [e for e in entries if isinstance(e, dict) and
            {k: e.get(k) for k in ("space", "data", "num_samples")} != candidate.comparison]
    return json.dumps(keep + [mine])


def alias_for_space(space: str) -> str:
    """``best-<space>``, in the characters MLflow allows in an alias."""
    return f"{BEST_ALIAS}-" + "".join(c if c.isalnum() or c in "_-" else "_" for c in space)


def holder(comparison: dict, scores: list[VersionScore]) -> VersionScore | None:
    """The version an alias of class ``comparison`` points at: the lowest FID (then the oldest
    version) among those scored in its class since it was last set by hand."""
    eligible = [s for s in scores if s.data == comparison["data"] and s.num_samples == comparison["num_samples"]
                and s.scored_at >= comparison.get("since", 0)]
    return min(eligible, key=lambda s: (s.fid, s.version), default=None)


def _why_not_comparable(comparison: dict, candidate: Candidate) -> str | None:
    if comparison["space"] != candidate.space:
        return f"it follows the {comparison['space']} feature space; this choice was scored in {candidate.space}"
    if comparison["data"] != candidate.comparison["data"]:
        return (f"it follows scores against other real images (data {comparison['data'][:12]}, this choice's "
                f"{candidate.data[:12]})")
    if comparison["num_samples"] != candidate.num_samples:
        return (f"it follows scores at {comparison['num_samples']} samples per checkpoint, this choice's are at "
                f"{candidate.num_samples} (FID depends on the sample count)")
    return None


def _version_of(client: MlflowClient, name: str, candidate: Candidate) -> str:
    """The one version of ``name`` for the candidate's checkpoint: found, or made once."""
    source = f"models:/{candidate.model_id}"

    def same_checkpoint():
        return sorted((v for v in _versions(client, name) if v.source == source), key=lambda v: int(v.version))

    found = same_checkpoint()
    if found:
        return found[0].version
    # mlflow.register_model also links the version to the LoggedModel (its Models tab shows the
    # version); it prints a line to stderr, which the CLI's own output replaces.
    with contextlib.redirect_stderr(io.StringIO()):
        made = mlflow.register_model(source, name, tags={"epoch": str(candidate.epoch), "run_id": candidate.run_id,
                                                         "model_id": candidate.model_id})
    first = same_checkpoint()[0]
    if first.version != made.version:  # another evaluation registered the same checkpoint at the same moment
        client.delete_model_version(name, made.version)
    return first.version


def _versions(client: MlflowClient, name: str) -> list:
    try:
        return list(client.search_model_versions(f"name = '{name}'"))
    except MlflowException:
        return []


def register_choice(client: MlflowClient, name: str, candidate: Candidate, *, promote: bool = False) -> Registration:
    """Register a chosen checkpoint under ``name`` and move the aliases it earns (rules above).

    ``promote``: move ``best`` and ``best-<space>`` to it even when it is not better than their
    holders or not comparable with them, as a person overruling the choice would.
    """
    _ensure_pyfunc(client, candidate.model_id)
    version = _version_of(client, name, candidate)
    now = int(time.time() * 1000)
    space = candidate.space
    tags = client.get_model_version(name, version).tags or {}
    client.set_model_version_tag(name, version, SCORES_TAG, _with_score(tags, candidate, now))
    # For people reading the registry: the latest score in this space, and what it was against.
    client.set_model_version_tag(name, version, f"fid.{space}", f"{candidate.fid:.6g} ({candidate.num_samples} "
                                 f"samples, real data {candidate.data[:12]})")
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=_DESCRIPTION)
    result = Registration(name, version, candidate.epoch, candidate.run_id)
    for alias in (alias_for_space(space), BEST_ALIAS):
        model = client.get_registered_model(name)
        stored = (model.tags or {}).get(f"alias.{alias}")
        comparison = json.loads(stored) if stored else None
        if comparison is None or promote:
            comparison = {**candidate.comparison, "since": now if promote else 0}
            client.set_registered_model_tag(name, f"alias.{alias}", json.dumps(comparison))
        why = _why_not_comparable(comparison, candidate)
        if why is not None:
            current = (model.aliases or {}).get(alias)
            result.kept.append(f"@{alias} stays on version {current}: {why} (--promote moves it)")
            continue
        chosen = _converge(client, name, alias, comparison)
        if chosen is not None and str(chosen.version) == str(version):
            result.moved.append(alias)
        elif chosen is not None:
            result.kept.append(f"@{alias} stays on version {chosen.version} (run {chosen.run_id}, epoch "
                               f"{chosen.epoch}): its FID {chosen.fid:.4g} is lower than this choice's "
                               f"{candidate.fid:.4g} in {space} (--promote moves it)")
    return result


def _converge(client: MlflowClient, name: str, alias: str, comparison: dict) -> VersionScore | None:
    """Point ``alias`` at its holder, and read again until the tags and the alias agree."""
    best = None
    for _ in range(_CONVERGE_ATTEMPTS):
        scores = [score for v in _versions(client, name) for score in VersionScore.of(v, comparison["space"])]
        best = holder(comparison, scores)
        if best is None:
            return None
        current = (client.get_registered_model(name).aliases or {}).get(alias)
        if str(current) == str(best.version):
            return best
        client.set_registered_model_alias(name, alias, str(best.version))
    return best


def candidate_of(evaluation, run_id: str) -> Candidate:
    """An evaluation's choice as a registry candidate."""
    best = next(c for c in evaluation.checkpoints if c.epoch == evaluation.best_epoch)
    return Candidate(best.model_id, run_id, best.epoch, evaluation.features, evaluation.real_digest or "unknown",
                     evaluation.num_samples, float(best.scores["fid"]))


def log_study(client: MlflowClient, study, figure, *, experiment_id: str, register_name: str | None,
              promote: bool = False) -> str:
    """The study as a run of its own (tag ``facegan.kind=study``): the runs' table, the comparison
    plot and the summary; the study's best registered (``study.registered``). Returns the study run's id."""
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
        study.study_run_id = run_id
        if register_name:
            registration = register_choice(client, register_name, candidate_of(best.evaluation, best.run_id),
                                           promote=promote)
            study.registered, study.registration_lines = registration.uri, registration.lines()
        client.log_dict(run_id, study.to_json(), f"study/{study.features}_summary.json")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def log_study_report(client: MlflowClient, study, page: str) -> str:
    """The study's evidence page (:func:`evaluation.report.study_page`) as the artifact
    ``study/<space>_report.html`` of the study run :func:`log_study` made; returns where it lies."""
    path = f"study/{study.features}_report.html"
    client.log_text(study.study_run_id, page, path)
    return f"{client.get_run(study.study_run_id).info.artifact_uri.rstrip('/')}/{path}"
