"""Checkpoints as MLflow models, the registered choice, and a study's own run.

- :func:`write_pyfunc_files`: the files that make a checkpoint an MLflow ``python_function``
  model (:mod:`facegan.pyfunc` loads it), written by hand in milliseconds;
- :func:`register_generator`: the chosen checkpoint in the model registry, alias ``best``;
- :func:`log_study`: a study (several runs compared) as a run of its own.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
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


def register_generator(client: MlflowClient, ref, name: str, run_id: str) -> str:
    """Register a checkpoint's LoggedModel under ``name`` and point the alias ``best`` at it."""
    source = f"models:/{ref.model_id}"
    _ensure_pyfunc(client, ref.model_id)
    try:
        current = client.get_model_version_by_alias(name, BEST_ALIAS)
    except MlflowException:
        current = None
    if current is not None and current.source == source:
        return f"models:/{name}@{BEST_ALIAS}"  # already the registered choice: no new version
    # mlflow.register_model also links the version to the LoggedModel (its Models tab shows the
    # version); it prints a line to stderr, which the CLI's own output replaces.
    with contextlib.redirect_stderr(io.StringIO()):
        version = mlflow.register_model(source, name, tags={"epoch": str(ref.epoch), "run_id": run_id})
    client.set_registered_model_alias(name, BEST_ALIAS, version.version)
    return f"models:/{name}@{BEST_ALIAS}"


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
