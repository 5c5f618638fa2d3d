"""What every subcommand shares: the one error contract and the help texts used by several."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from facegan.errors import FaceganError


def friendly_errors(func):
    """Turn FaceganError into click's one-line ``Error: ...`` and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except FaceganError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def mlflow_command() -> str:
    """The `mlflow` beside this interpreter (a venv's is not on PATH unless it is activated)."""
    beside = Path(sys.executable).with_name("mlflow")
    return str(beside) if beside.is_file() else "mlflow"


def echo(message: str) -> None:
    """A message for people, on stderr (stdout carries what scripts read)."""
    click.echo(message, err=True)


FEATURES_HELP = ("inception (standard FID; downloads weights once), dinov2 (DINOv2 ViT-B/14, as Stein et al. "
                 "2023 recommend; downloads weights once), random (offline, ranks within a study only), "
                 "export:PATH (your own network saved with torch.export.save, a .pt2 file: images N x 3 x S "
                 "x S in [0, 1] with a dynamic batch N, S from its extra file input_size, else its fixed input "
                 "size, else 224; or one from `facegan encoder`) or torchscript:PATH (the same saved with "
                 "TorchScript, S from its attribute input_size)")
TRACKING_URI_HELP = "MLflow tracking URI [default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db]."
MODEL_HELP = ("A checkpoint file, models:/NAME@ALIAS, models:/m-<id>, or runs:/RUN_ID[/EPOCH] "
              "(the run's last or given checkpoint)  [default: models:/facegan-generator@best, "
              "which `facegan evaluate` registers]")
