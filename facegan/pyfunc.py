"""A facegan generator as an MLflow ``python_function`` model: faces for seeds.

Every generator checkpoint facegan logs carries an ``MLmodel`` file naming this module as its
``loader_module`` (written by :func:`facegan.tracking.write_pyfunc_files`), so MLflow's own tools
load what ``facegan evaluate`` registers::

    model = mlflow.pyfunc.load_model("models:/facegan-generator@best")
    faces = model.predict(pandas.DataFrame({"seed": [0, 1, 2]}))   # column "png": base64 PNGs

and ``mlflow models serve -m models:/facegan-generator@best --env-manager local`` answers
``POST /invocations`` with ``{"dataframe_records": [{"seed": 5}]}``.

Input: one row per face, column ``seed`` (a non-negative integer) and optionally ``truncation``
(a positive number; empty means none). A seed gives the face ``facegan generate -n 1 --seed S
[--truncation T]`` writes, on every machine. The weights are read with ``torch.load(weights_only=True)``,
as everywhere in facegan. MLflow imports this module itself; it imports no MLflow.
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pandas as pd
from PIL import Image

from facegan.checkpoint import load_generator
from facegan.errors import FaceganError
from facegan.generate import render, sample_latents

SEED_COLUMN, TRUNCATION_COLUMN, PNG_COLUMN = "seed", "truncation", "png"


class FaceModel:
    """The pyfunc model implementation MLflow wraps: :meth:`predict` renders one face per row."""

    def __init__(self, generator, payload: dict | None = None):
        self.generator = generator
        self.payload = payload or {}

    def predict(self, model_input, params=None) -> pd.DataFrame:
        """Faces for the rows of ``model_input`` (a DataFrame, or a list of records / a dict of
        columns); returns a DataFrame with one column ``png`` (base64-encoded PNG), row for row.

        Raises:
            FaceganError: a missing ``seed`` column, a seed that is not a non-negative integer,
                or a truncation that is not a positive number.
        """
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if SEED_COLUMN not in frame.columns:
            raise FaceganError(f"the input needs a column {SEED_COLUMN!r} (one integer per face); "
                               f"it has {', '.join(map(str, frame.columns)) or 'no columns'}")
        pngs = []
        truncations = frame[TRUNCATION_COLUMN] if TRUNCATION_COLUMN in frame.columns else [None] * len(frame)
        for seed, truncation in zip(frame[SEED_COLUMN], truncations):
            z = sample_latents(1, self.generator.latent_dim, seed=_seed(seed), truncation=_truncation(truncation))
            buffer = io.BytesIO()
            Image.fromarray(render(self.generator, z)[0]).save(buffer, format="PNG")
            pngs.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
        return pd.DataFrame({PNG_COLUMN: pngs}, index=frame.index)


def _seed(value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, float, np.floating)):
        raise FaceganError(f"a seed must be a non-negative integer, got {value!r}")
    if not float(value).is_integer() or value < 0:
        raise FaceganError(f"a seed must be a non-negative integer, got {value!r}")
    return int(value)


def _truncation(value) -> float | None:
    """A row's truncation as a number (empty: none); ``sample_latents`` checks that it is positive."""
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise FaceganError(f"truncation must be a positive number, got {value!r}") from None


def _load_pyfunc(data_path: str) -> FaceModel:
    """MLflow's entry point: ``data_path`` is the checkpoint file named in the MLmodel's ``data``."""
    generator, payload = load_generator(data_path)
    return FaceModel(generator, payload)
