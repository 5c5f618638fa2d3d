"""What every subcommand shares: the one error contract, the ranges options are checked against,
and the help texts used by several."""

from __future__ import annotations

import functools
import math
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


# One rule for option values: a value outside a range known when the options are parsed is click's
# usage error (exit 2, with the Usage block); a value from --set or a config file is a config
# error (exit 1, one Error line). The ranges below are those the library enforces; they are
# written out here rather than imported, to keep torch out of parsing and --help (tests check
# they agree).
MIN_PREPARE_SIZE = 8  # facegan.folders.MIN_PREPARE_SIZE
MIN_SYNTHETIC_SIZE = 16  # facegan.synthetic.MIN_SYNTHETIC_SIZE


class _SeedRange(click.IntRange):
    """Seeds: non-negative, as numpy's; below 2**63, since training adds offsets to a seed and
    torch's generators take at most 2**64 - 1."""

    def __init__(self):
        super().__init__(0, 2**63 - 1)

    def _describe_range(self) -> str:
        return "0<=x<2**63"


SEED = _SeedRange()


def check_synthetic_size(source: str, size: int, option: str) -> None:
    """The built-in faces' smallest size, checked once ``source`` is known (an argument or another
    option, which click may parse after ``option``): a usage error, as the option's own range."""
    if source == "synthetic" and size < MIN_SYNTHETIC_SIZE:
        raise click.BadParameter(f"{size} is smaller than {MIN_SYNTHETIC_SIZE}, the smallest size of the built-in "
                                 "synthetic faces", param_hint=f"'{option}'")


def positive_number(ctx, param, value: float | None) -> float | None:
    """A click callback: ``value`` must be a positive, finite number (or not given)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"must be a positive number, got {value:g}")
    return value


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
