"""What the training loop needs from a tracker, and an in-memory tracker: no MLflow here.

:class:`RunTracker` is the interface; :class:`facegan.tracking.MlflowRunTracker` implements it
against a tracking store, :class:`MemoryTracker` in memory. The in-memory one serves the tests of
the loop and experiments on machines that have PyTorch but no MLflow (a bare GPU machine, see
``experiments/collapse/benchmark_gpu.py``), which is why it lives apart from ``tracking``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


# Run tags a training run that stopped early carries (``facegan train --stop-on-collapse``).
STOPPED_TAG = "facegan.stopped"  # "collapse", "copying", "patience", or "no" when it trained all epochs
STOPPED_EPOCH_TAG = "facegan.stopped_epoch"
STOP_REASON_TAG = "facegan.stop_reason"


def checkpoint_name(epoch: int) -> str:
    """A generator checkpoint's name, in any store: ``generator-epoch-0100``."""
    return f"generator-epoch-{epoch:04d}"


class RunTracker(Protocol):
    """What the training loop needs from a tracker."""

    run_id: str

    def log_params(self, params: dict[str, object]) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_dataset(self, info: dict) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_image(self, key: str, image: np.ndarray, step: int) -> None: ...
    def log_checkpoint(self, path: Path, epoch: int) -> str | None: ...  # the model id, None if kept locally
    def checkpoint_epochs(self) -> set[int]: ...
    def logged_metric_steps(self, key: str) -> set[int]: ...
    def logged_image_steps(self, key: str) -> set[int]: ...
    def save_resume_state(self, path: Path) -> None: ...
    def fetch_resume_state(self, dest_dir: Path) -> Path | None: ...
    def mark_running(self) -> None: ...
    def finish(self, status: str) -> None: ...


class MemoryTracker:
    """An in-memory tracker: for tests of the loop, and where there is no MLflow."""

    def __init__(self, run_id: str = "memory"):
        self.run_id = run_id
        self.params: dict[str, object] = {}
        self.tags: dict[str, str] = {}
        self.datasets: list[dict] = []
        self.metrics: dict[str, dict[int, float]] = {}
        self.images: dict[str, dict[int, np.ndarray]] = {}
        self.checkpoints: dict[int, bytes] = {}
        self.resume_state: bytes | None = None
        self.status: str | None = None

    def log_params(self, params):
        self.params.update(params)

    def set_tags(self, tags):
        self.tags.update({k: str(v) for k, v in tags.items()})

    def log_dataset(self, info):
        self.datasets.append(dict(info))

    def log_metrics(self, metrics, step):
        for key, value in metrics.items():
            self.metrics.setdefault(key, {})[step] = float(value)

    def log_image(self, key, image, step):
        self.images.setdefault(key, {})[step] = np.asarray(image)

    def log_checkpoint(self, path, epoch):
        self.checkpoints[epoch] = Path(path).read_bytes()
        return f"memory-{epoch}"

    def checkpoint_epochs(self):
        return set(self.checkpoints)

    def logged_metric_steps(self, key):
        return set(self.metrics.get(key, {}))

    def logged_image_steps(self, key):
        return set(self.images.get(key, {}))

    def save_resume_state(self, path):
        self.resume_state = Path(path).read_bytes()

    def fetch_resume_state(self, dest_dir):
        if self.resume_state is None:
            return None
        path = Path(dest_dir) / "state.pt"
        path.write_bytes(self.resume_state)
        return path

    def mark_running(self):
        self.status = "RUNNING"

    def finish(self, status):
        self.status = status
