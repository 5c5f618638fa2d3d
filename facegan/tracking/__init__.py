"""Everything facegan tells MLflow and reads back from it: the only package that imports mlflow.

- :mod:`~facegan.tracking.store`: connecting (and the client settings), reading runs and models;
- :mod:`~facegan.tracking.run_writer`: the training run's tracker, its records, ``facegan sync``;
- :mod:`~facegan.tracking.run_source`: a run as a checkpoint source and decision log for the engine;
- :mod:`~facegan.tracking.registry`: checkpoints as pyfunc models, the registered choice, studies.
"""

from facegan.sender import Spool
from facegan.tracking.registry import Candidate, log_study, log_study_report, register_choice, write_pyfunc_files
from facegan.tracking.run_source import MlflowRunSource, RunCheckpoint, active_run_log, imported_run
from facegan.tracking.run_writer import MlflowRunTracker, sync_unsent, unsent_folder
from facegan.tracking.store import (
    MODEL_TYPE, CheckpointRef, connect, get_run, latest_run_id, resolve_model, resolve_tracking_uri,
    run_checkpoints, study_run_ids, ui_address,
)

__all__ = [
    "MODEL_TYPE", "Candidate", "active_run_log", "CheckpointRef", "MlflowRunSource", "MlflowRunTracker", "RunCheckpoint", "Spool", "connect",
    "get_run", "imported_run", "latest_run_id", "log_study", "log_study_report", "register_choice", "resolve_model", "resolve_tracking_uri",
    "run_checkpoints", "study_run_ids", "sync_unsent", "ui_address", "unsent_folder", "write_pyfunc_files",
]
