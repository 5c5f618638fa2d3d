"""Typed training configuration: defaults, TOML files, ``--set key=value`` overrides, validation.

A config file is a short diff of the defaults, e.g. ``experiments/tutorial_wgan.toml``::

    [train]
    loss = "wgan"

Unknown sections or keys and badly typed values are errors, never ignored. ``resolve`` fills
the values that depend on others (the tutorial's optimiser settings per objective, the critic's
norm) so that the logged and checkpointed config says exactly what ran.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from facegan.architecture import AUTO_NORM, NetworkConfig
from facegan.errors import FaceganError

LOSSES = ("dcgan", "wgan", "wgan-gp")
SCHEDULES = ("adaptive", "fixed")
OPTIMIZERS = ("adam", "rmsprop")
DEVICES = ("auto", "cpu", "cuda")
NO_FEATURES = "none"  # [evaluate] features: train without scoring
DEFAULT_REGISTERED_NAME = "facegan-generator"
BEST_ALIAS = "best"  # the registered model's alias that follows the chosen checkpoint
DEFAULT_MODEL_URI = f"models:/{DEFAULT_REGISTERED_NAME}@{BEST_ALIAS}"  # what generate and serve load by default
DEFAULT_NUM_SAMPLES = 2000  # samples per checkpoint when scoring
MIN_NUM_SAMPLES = 10
# What may change when a run is resumed; the rest must stay as the run was started. How its
# checkpoints are judged may change: a user who disagrees with a stop continues without it.
RESUMABLE_KEYS = frozenset({
    "train.epochs", "train.device", "tracking.tracking_uri", "tracking.send_timeout", "evaluate.features",
    "evaluate.num_samples", "evaluate.inception_weights", "evaluate.dinov2_weights", "evaluate.stop_on_collapse",
    "evaluate.stop_patience", "evaluate.register",
})
# train.compile: "cuda-graphs" captures the training step as CUDA graphs (facegan.step_graphs);
# "auto" does so where it can (CUDA, one process), "off" trains eagerly.
CAPTURED = "cuda-graphs"
COMPILE_MODES = ("auto", "off", CAPTURED)

# The tutorial's optimiser settings per objective: (optimizer, lr, beta1, beta2).
TUTORIAL_OPTIMIZERS = {
    "dcgan": ("adam", 2e-4, 0.5, 0.999),
    "wgan": ("rmsprop", 5e-5, 0.0, 0.0),
    "wgan-gp": ("adam", 1e-4, 0.0, 0.999),
}


@dataclass
class DataConfig:
    source: str = "synthetic"  # "synthetic", a file from `facegan prepare`, or an image folder
    num_images: int = 2000  # images used (the tutorial keeps 2000 LFW faces)
    seed: int = 0  # seed of the built-in synthetic faces


def _model_defaults() -> NetworkConfig:
    """The ``[model]`` section's defaults: the tutorial's 80x80 networks, the critic's norm chosen by
    the objective (d_norm ``"auto"``, resolved by :func:`resolve`)."""
    return NetworkConfig(d_norm=AUTO_NORM)


@dataclass
class TrainConfig:
    loss: str = "wgan-gp"
    epochs: int = 10000
    batch_size: int = 64
    schedule: str = "adaptive"  # the tutorial's accuracy balance, or "fixed": n_critic D steps per G step
    n_critic: int = 5  # fixed: D steps per G step; adaptive: D minibatches after a switch to D
    gp_weight: float = 10.0
    gp_every: int = 1  # wgan-gp: the penalty on every k-th critic step, k times as strong (lazy, as StyleGAN2's R1)
    clip_value: float = 0.1  # WGAN weight clipping (the tutorial's 0.1, larger than the paper's 0.01)
    optimizer: str | None = None  # None: the tutorial's choice for the loss
    lr_g: float | None = None
    lr_d: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    seed: int = 0
    device: str = "auto"
    bf16: bool = False  # bf16 autocast: CUDA, or a CPU with AVX512-BF16/AMX
    channels_last: bool = True
    sync_batchnorm: bool = False  # several CUDA processes: BatchNorm statistics over the whole minibatch
    world_size: int = 1  # training processes (set from torchrun's WORLD_SIZE); batch_size is split among them
    compile: str = "auto"  # cuda-graphs: the step as CUDA graphs, decided on the GPU; auto: where possible; off


@dataclass
class TrackingConfig:
    experiment: str = "facegan"
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    run_name: str | None = None
    checkpoint_every: int = 100  # epochs between generator checkpoints (the tutorial's 100)
    sample_every: int = 1  # epochs between sample grids
    resume_every: int = 10  # epochs between resume states (the tutorial's 10)
    num_samples: int = 100  # fixed latents in the sample grid
    send_timeout: float = 120.0  # seconds a finished run waits for a tracking store that is away


@dataclass
class EvaluateConfig:
    """Scoring checkpoints while training runs (``facegan train --evaluate``); off by default."""

    features: str = "none"  # none, or a feature space as `facegan evaluate --features` takes it
    num_samples: int = DEFAULT_NUM_SAMPLES  # samples per checkpoint, drawn from the engine's fixed latents
    inception_weights: str | None = None  # local Inception weights for features = "inception" offline
    dinov2_weights: str | None = None  # local DINOv2 weights for features = "dinov2" offline
    stop_on_collapse: bool = False  # stop once the collapse rule confirms an onset
    stop_patience: int | None = None  # stop after this many checkpoints in a row without a new best
    register: str | None = DEFAULT_REGISTERED_NAME  # registered name for the final choice; none: skip

    @property
    def enabled(self) -> bool:
        return self.features != NO_FEATURES

    def scoring(self, device: str) -> "ScoringOptions":
        """How ``train --evaluate`` scores: the options ``facegan evaluate`` takes, from this section."""
        return ScoringOptions(features=self.features, inception_weights=self.inception_weights,
                              dinov2_weights=self.dinov2_weights, num_samples=self.num_samples, device=device,
                              register=self.register)


@dataclass(frozen=True)
class ScoringOptions:
    """How checkpoints are scored, and where the choice is registered: one typed value from the
    CLI (``facegan evaluate``'s options, or ``train``'s ``[evaluate]`` section through
    :meth:`EvaluateConfig.scoring`) to :mod:`facegan.scoring`. Validated when made.

    Attributes:
        features: the feature space, as ``--features`` takes it (``inception``, ``random``,
            ``export:PATH``, ...); checked when the network is built, before any work.
        inception_weights, dinov2_weights: local weights files for offline machines.
        num_samples: samples per checkpoint; None: the count the source was scored with before
            in this space, else :data:`DEFAULT_NUM_SAMPLES`.
        device: where generators and the feature network run (``auto``, ``cpu``, ``cuda``).
        register: registered model name for the choice; None (``none`` on the command line): do not register.
        promote: the choice takes the registered model's aliases even when it is not better than
            their holders, or not comparable with them (a person overruling the registry's rule).
    """

    features: str = "inception"
    inception_weights: str | None = None
    dinov2_weights: str | None = None
    num_samples: int | None = None
    device: str = "auto"
    register: str | None = DEFAULT_REGISTERED_NAME
    promote: bool = False

    def __post_init__(self):
        if not self.features or self.features == NO_FEATURES:
            raise FaceganError("give a feature space to score in (e.g. --features random)")
        if self.num_samples is not None and self.num_samples < MIN_NUM_SAMPLES:
            raise FaceganError(f"--num-samples must be at least {MIN_NUM_SAMPLES}, got {self.num_samples}")
        object.__setattr__(self, "register", optional_name(self.register))


def optional_name(value: str | None) -> str | None:
    """A name that may be switched off: ``none`` (any case) and empty become None."""
    return None if value is None or value.strip().lower() in ("", NO_FEATURES) else value


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: NetworkConfig = field(default_factory=_model_defaults)  # validated by NetworkConfig.validate
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def to_flat_dict(self) -> dict[str, object]:
        """``{"train.loss": "wgan-gp", ...}``: the form logged as MLflow params."""
        return {
            f"{section.name}.{f.name}": getattr(getattr(self, section.name), f.name)
            for section in dataclasses.fields(self)
            for f in dataclasses.fields(getattr(self, section.name))
        }

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        cfg = cls()
        for section, values in data.items():
            for key, value in values.items():
                _assign(cfg, f"{section}.{key}", value)
        return cfg


def _sections(cfg: Config) -> dict[str, object]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def _field_types(obj) -> dict[str, object]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def _coerce(key: str, value, annotation):
    """Check ``value`` against a field's annotation; ints are accepted where floats are expected."""
    allowed = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, type(int | None)) else (annotation,)
    if value is None:
        if type(None) in allowed:
            return None
        raise FaceganError(f"{key} may not be empty")
    for t in allowed:
        if t is bool:
            if isinstance(value, bool):
                return value
        elif t is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif t is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif t is str:
            if isinstance(value, str):
                return value
    names = " or ".join("none" if t is type(None) else t.__name__ for t in allowed)
    raise FaceganError(f"{key} must be {names}, got {value!r}")


def _assign(cfg: Config, key: str, value) -> None:
    sections = _sections(cfg)
    section_name, _, name = key.partition(".")
    if section_name not in sections or not name:
        hint = difflib.get_close_matches(section_name, sections, n=1)
        raise FaceganError(
            f"unknown config key {key!r}; keys look like section.name with section one of "
            f"{', '.join(sections)}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )
    section = sections[section_name]
    types = _field_types(section)
    if name not in types:
        hint = difflib.get_close_matches(name, types, n=1)
        raise FaceganError(
            f"unknown config key {key!r}" + (f"; did you mean '{section_name}.{hint[0]}'?" if hint else "")
            + f" (valid keys in [{section_name}]: {', '.join(types)})"
        )
    value = _coerce(key, value, types[name])
    if isinstance(section, NetworkConfig):  # [model]: frozen, as the checkpoints' network description
        setattr(cfg, section_name, dataclasses.replace(section, **{name: value}))
    else:
        setattr(section, name, value)


def parse_override(text: str) -> tuple[str, object]:
    """Parse ``key=value`` from ``--set``; the value is read as TOML, bare words as strings."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise FaceganError(f"--set expects key=value (e.g. train.lr_g=2e-4), got {text!r}")
    if raw.lower() in ("none", "null", ""):
        return key, None
    try:
        return key, tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return key, raw


def load_config(path: str | Path | None = None, overrides: dict[str, object] | None = None) -> Config:
    """Defaults, then the TOML file, then ``overrides`` (``{"train.loss": "wgan"}``), then validation."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FaceganError(f"config file not found: {path}")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise FaceganError(f"config file {path} is not valid TOML: {exc}") from None
        for section, values in data.items():
            if not isinstance(values, dict):
                raise FaceganError(f"{path}: top-level key {section!r} must be a [section] table")
            for key, value in values.items():
                _assign(cfg, f"{section}.{key}", value)
    for key, value in (overrides or {}).items():
        _assign(cfg, key, value)
    return resolve(cfg)


def check_resumable(overrides: dict[str, object]) -> None:
    """Refuse overrides a resumed run cannot take (:data:`RESUMABLE_KEYS` lists what it can)."""
    fixed = sorted(set(overrides) - RESUMABLE_KEYS)
    if fixed:
        raise FaceganError(f"cannot change {', '.join(fixed)} when resuming; only --epochs and --device may change")


def with_overrides(cfg: Config, overrides: dict[str, object]) -> Config:
    """``cfg`` (e.g. a resumed run's) with ``overrides`` applied through the same checks as
    ``--set`` (known key, right type), then validated again; changes ``cfg`` in place. A resumed
    run first passes its overrides through :func:`check_resumable`."""
    for key, value in overrides.items():
        _assign(cfg, key, value)
    return resolve(cfg)


def _choice(key: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise FaceganError(f"{key} must be one of {', '.join(options)}; got {value!r}")


def _positive(key: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise FaceganError(f"{key} must be {'non-negative' if allow_zero else 'positive'}, got {value}")


def resolve(cfg: Config) -> Config:
    """Validate every value and fill the dependent defaults in place; returns ``cfg``."""
    t, d, k, e = cfg.train, cfg.data, cfg.tracking, cfg.evaluate
    _choice("train.loss", t.loss, LOSSES)
    _choice("train.schedule", t.schedule, SCHEDULES)
    _choice("train.device", t.device, DEVICES)
    _choice("train.compile", t.compile, COMPILE_MODES)
    # Image size, widths, norms and the critic's norm for the objective: NetworkConfig's own checks.
    cfg.model = cfg.model.resolve(t.loss)
    optimizer, lr, beta1, beta2 = TUTORIAL_OPTIMIZERS[t.loss]
    t.optimizer = t.optimizer or optimizer
    _choice("train.optimizer", t.optimizer, OPTIMIZERS)
    t.lr_g = lr if t.lr_g is None else t.lr_g
    t.lr_d = lr if t.lr_d is None else t.lr_d
    t.beta1 = beta1 if t.beta1 is None else t.beta1
    t.beta2 = beta2 if t.beta2 is None else t.beta2
    for key in ("epochs", "batch_size", "n_critic", "gp_every", "world_size"):
        _positive(f"train.{key}", getattr(t, key))
    for key in ("lr_g", "lr_d", "clip_value"):
        _positive(f"train.{key}", getattr(t, key))
    _positive("train.gp_weight", t.gp_weight, allow_zero=True)
    if t.gp_every != 1 and t.loss != "wgan-gp":
        raise FaceganError(f"train.gp_every applies to the wgan-gp penalty only; train.loss is {t.loss!r}")
    if t.compile == CAPTURED and t.world_size > 1:
        raise FaceganError(f"train.compile = {CAPTURED} runs on one process; under torchrun each rank trains "
                           "eagerly (leave train.compile at auto, or set it to off)")
    if t.batch_size % t.world_size:
        raise FaceganError(f"train.batch_size ({t.batch_size}) is the whole minibatch, split evenly among the "
                           f"{t.world_size} training processes: make it a multiple of {t.world_size}")
    for key, seed in (("train.seed", t.seed), ("data.seed", d.seed)):
        # torch's and numpy's generators take seeds in [0, 2^64); the training derives others from
        # these (per-rank streams, the fixed latents' seed + 1000003), so half that range is safe.
        if not 0 <= seed < 2**63:
            raise FaceganError(f"{key} must be in [0, 2^63), got {seed}")
    for key in ("beta1", "beta2"):
        if not 0 <= getattr(t, key) < 1:
            raise FaceganError(f"train.{key} must be in [0, 1), got {getattr(t, key)}")
    _positive("data.num_images", d.num_images)
    for key in ("checkpoint_every", "sample_every", "resume_every", "num_samples"):
        _positive(f"tracking.{key}", getattr(k, key))
    _positive("tracking.send_timeout", k.send_timeout, allow_zero=True)
    if not k.experiment:
        raise FaceganError("tracking.experiment may not be empty")
    # The feature space itself is checked when it is built, before any training (facegan.scoring).
    if not e.features:
        raise FaceganError("evaluate.features may not be empty; use none to train without scoring")
    if e.num_samples < MIN_NUM_SAMPLES:
        raise FaceganError(f"evaluate.num_samples must be at least {MIN_NUM_SAMPLES}, got {e.num_samples}")
    if e.stop_patience is not None:
        _positive("evaluate.stop_patience", e.stop_patience)
    if (e.stop_on_collapse or e.stop_patience is not None) and not e.enabled:
        raise FaceganError("stopping early needs the checkpoints scored: give --evaluate FEATURES "
                           "(e.g. --evaluate random) with --stop-on-collapse or --stop-patience")
    e.register = optional_name(e.register)
    return cfg
