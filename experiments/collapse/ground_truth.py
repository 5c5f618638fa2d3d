"""Ground truth for the collapse benchmark: classify every sample into its mode and count modes.

Two datasets whose modes are known, as in the mode-collapse literature (Unrolled GAN, VEEGAN,
PacGAN):

* **faces**: facegan's synthetic faces; a mode is one of the 96 attribute combinations
  (skin x hair x mouth x glasses). :class:`FaceClassifier` is a small CNN with one head per
  attribute, trained on freshly rendered faces.
* **digits**: stacked digits, three of scikit-learn's bundled 8x8 digits (offline) upsampled to
  32 x 32, one in each colour channel; a mode is one of the 1000 digit triples.
  :class:`DigitClassifier` is an RBF SVM on each channel pooled back to 8 x 8.

For any sample set :func:`count_modes` reports the three numbers of that protocol: modes captured
(modes hit by at least one *confidently* classified sample, so unrecognisable noise does not
count as a captured mode), the KL divergence of the generated mode histogram (all samples, as the
papers) from the true, uniform one, and the share of confidently classified samples (a sample is
confident when every head's top probability reaches ``FACE_CONFIDENCE`` or
``DIGIT_CONFIDENCE``).

Trained face-classifier weights are cached under ``experiments/results/classifiers/`` keyed by a hash
of everything that determines them, so reruns load them in a second.

Example:
    >>> classifier = FaceClassifier.load_or_train()  # doctest: +SKIP
    >>> report = classifier.count_modes(synthetic_faces(500, 32, seed=3).images)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from experiments import RESULTS_DIR
from facegan.synthetic import SYNTHETIC_ATTRIBUTES, render_faces

CLASSIFIER_DIR = RESULTS_DIR / "classifiers"
IMAGE_SIZE = 32
FACE_CONFIDENCE = 0.9  # every head's top softmax probability must reach this for a "confident" sample
NUM_DIGIT_MODES = 1000
DIGIT_CONFIDENCE = 0.6  # see DigitClassifier
DIGIT_CHANNELS = ("red", "green", "blue")
_CACHE_VERSION = 1  # bump when the architecture or the training recipe changes


# --------------------------------------------------------------------------------------------
# Mode counting
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModeReport:
    """Ground-truth numbers of one sample set.

    Attributes:
        modes: modes hit by at least one confidently classified sample.
        num_modes: how many modes the data has.
        kl: KL(generated mode histogram || true histogram) in nats, over all samples.
        confident_share: share of samples classified confidently (the papers' "quality").
        num_samples: samples classified.
    """

    modes: int
    num_modes: int
    kl: float
    confident_share: float
    num_samples: int

    def to_dict(self) -> dict:
        return asdict(self)


def count_modes(
    mode_ids: np.ndarray, confident: np.ndarray, num_modes: int, true_histogram: np.ndarray | None = None
) -> ModeReport:
    """Modes captured, KL to the true histogram and confident share of classified samples.

    Args:
        mode_ids: predicted mode of each sample, ints in [0, num_modes).
        confident: whether each sample's classification is confident.
        num_modes: number of modes.
        true_histogram: the real data's mode probabilities (default uniform).

    Returns:
        A :class:`ModeReport`.
    """
    mode_ids = np.asarray(mode_ids, dtype=np.int64)
    confident = np.asarray(confident, dtype=bool)
    if mode_ids.shape != confident.shape or mode_ids.ndim != 1 or mode_ids.size == 0:
        raise ValueError("mode_ids and confident must be non-empty 1-D arrays of one length")
    if mode_ids.min() < 0 or mode_ids.max() >= num_modes:
        raise ValueError(f"mode ids must lie in [0, {num_modes})")
    truth = np.full(num_modes, 1.0 / num_modes) if true_histogram is None else np.asarray(true_histogram, float)
    generated = np.bincount(mode_ids, minlength=num_modes) / mode_ids.size
    present = generated > 0
    kl = float(np.sum(generated[present] * np.log(generated[present] / truth[present])))
    return ModeReport(
        modes=int(np.unique(mode_ids[confident]).size),
        num_modes=num_modes,
        kl=kl,
        confident_share=float(confident.mean()),
        num_samples=int(mode_ids.size),
    )


# --------------------------------------------------------------------------------------------
# Classifier network and training
# --------------------------------------------------------------------------------------------


class MultiHeadCNN(nn.Module):
    """Three conv blocks, global max pooling, one linear head per attribute.

    Max rather than average pooling: mouth and glasses cover a few pixels at 32 x 32, and an
    average over the whole image dilutes them (mouth accuracy stalled near 90% with it).
    """

    def __init__(self, in_channels: int, heads: dict[str, int], width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.BatchNorm2d(4 * width), nn.ReLU(),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(4 * width, size) for name, size in heads.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.body(x)
        return {name: head(hidden) for name, head in self.heads.items()}


@dataclass(frozen=True)
class TrainSettings:
    """How a classifier is trained; every field enters the cache key."""

    num_images: int
    epochs: int
    batch_size: int = 128
    lr: float = 2e-3
    width: int = 32
    seed: int = 0


# 100% held-out on skin, hair and mouth, 99.95% on glasses; ~2 minutes on two busy cores, so the
# weights are kept in the repository (CLASSIFIER_DIR). Smaller settings did not reach 98%: 1500
# images x 3 epochs at width 8 gave mouth 70%.
FACE_SETTINGS = TrainSettings(num_images=6000, epochs=5, batch_size=64, lr=3e-3, width=16)


def _to_input(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 N x C x S x S -> float in [-1, 1] at ``IMAGE_SIZE``."""
    x = torch.as_tensor(images).float().div_(127.5).sub_(1.0)
    if x.shape[-1] != IMAGE_SIZE:
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False, antialias=True)
    return x


def _fit(model: MultiHeadCNN, inputs: torch.Tensor, targets: dict[str, torch.Tensor], settings: TrainSettings,
         augment) -> None:
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    steps = settings.epochs * math.ceil(len(inputs) / settings.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.lr, total_steps=steps)
    model.train()
    for _ in range(settings.epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(inputs), settings.batch_size):
            index = order[start:start + settings.batch_size]
            outputs = model(augment(inputs[index], generator))
            loss = sum(F.cross_entropy(outputs[name], target[index]) for name, target in targets.items())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()


def _pixel_noise(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # GAN samples carry high-frequency artefacts that clean renders lack; mild noise makes the
    # classifier rely on the attributes, not on pixel-perfect edges.
    return x + 0.08 * torch.randn(x.shape, generator=generator)


def _predict(model: MultiHeadCNN, images: torch.Tensor | np.ndarray, batch_size: int = 512) -> dict[str, np.ndarray]:
    """Softmax probabilities per head, N x classes, for uint8 images; scaled on the model's device."""
    images = torch.as_tensor(images)
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in model.heads}
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            for name, logits in model(_to_input(images[start:start + batch_size].to(device))).items():
                chunks[name].append(logits.softmax(dim=1).cpu())
    return {name: torch.cat(parts).numpy() for name, parts in chunks.items()}


def _cache_path(kind: str, settings: TrainSettings) -> Path:
    key = hashlib.sha256(json.dumps([kind, _CACHE_VERSION, asdict(settings)]).encode()).hexdigest()[:16]
    return CLASSIFIER_DIR / f"{kind}-{key}.pt"


def _load_cached(path: Path, model: MultiHeadCNN) -> dict | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(payload["state_dict"])
    except Exception:  # noqa: BLE001 - a damaged or stale cache file is retrained, never fatal
        return None
    model.eval()
    return payload["accuracy"]


def _save_cached(path: Path, model: MultiHeadCNN, accuracy: dict) -> None:
    from facegan.common import atomic_write

    atomic_write(path, lambda f: torch.save({"state_dict": model.state_dict(), "accuracy": accuracy}, f))


# --------------------------------------------------------------------------------------------
# Faces
# --------------------------------------------------------------------------------------------


def _attribute_sizes() -> dict[str, int]:
    return {name: len(values) for name, values in SYNTHETIC_ATTRIBUTES.items()}


def face_mode_ids(attributes: dict[str, np.ndarray]) -> np.ndarray:
    """Mode (attribute combination) of each face, mixed radix in ``SYNTHETIC_ATTRIBUTES`` order."""
    index = np.zeros(len(next(iter(attributes.values()))), dtype=np.int64)
    for name, size in _attribute_sizes().items():
        index = index * size + np.asarray(attributes[name], dtype=np.int64)
    return index


def face_attributes_of_modes(mode_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Inverse of :func:`face_mode_ids`."""
    rest = np.asarray(mode_ids, dtype=np.int64).copy()
    attributes = {}
    for name, size in reversed(list(_attribute_sizes().items())):
        attributes[name] = rest % size
        rest //= size
    return {name: attributes[name] for name in SYNTHETIC_ATTRIBUTES}


def num_face_modes() -> int:
    return math.prod(_attribute_sizes().values())


def render_face_modes(mode_ids: np.ndarray, seed: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 N x 3 x size x size faces of the given modes, continuous variation drawn from ``seed``."""
    return render_faces(face_attributes_of_modes(mode_ids), size, np.random.default_rng(seed))


class FaceClassifier:
    """Attribute classifier for synthetic faces: one head per attribute.

    Attributes:
        model: the network (eval mode).
        accuracy: held-out accuracy per attribute, measured on fresh renders after training.
        seconds: training time (0 when loaded from the cache).
    """

    num_modes = property(lambda self: num_face_modes())

    def __init__(self, model: MultiHeadCNN, accuracy: dict[str, float], seconds: float):
        self.model, self.accuracy, self.seconds = model, accuracy, seconds

    @classmethod
    def load_or_train(cls, *, settings: TrainSettings = FACE_SETTINGS, cache: bool = True) -> "FaceClassifier":
        """The cached classifier for ``settings``, or a freshly trained one (then cached)."""
        torch.manual_seed(settings.seed)
        model = MultiHeadCNN(3, _attribute_sizes(), settings.width)
        path = _cache_path("faces", settings)
        accuracy = _load_cached(path, model) if cache else None
        if accuracy is not None:
            return cls(model, accuracy, 0.0)
        started = time.perf_counter()
        rng = np.random.default_rng(settings.seed)
        modes = rng.integers(0, num_face_modes(), settings.num_images)
        inputs = _to_input(render_face_modes(modes, settings.seed))
        targets = {name: torch.from_numpy(values) for name, values in face_attributes_of_modes(modes).items()}
        _fit(model, inputs, targets, settings, _pixel_noise)
        seconds = time.perf_counter() - started
        accuracy = cls(model, {}, seconds).held_out_accuracy(seed=settings.seed + 1_000_003)
        if cache:
            _save_cached(path, model, accuracy)
        return cls(model, accuracy, seconds)

    def held_out_accuracy(self, num_images: int = 2000, *, seed: int, size: int = IMAGE_SIZE) -> dict[str, float]:
        """Accuracy per attribute on ``num_images`` fresh renders drawn with ``seed``, rendered at
        ``size`` (larger faces are scaled down to the classifier's 32 x 32, as samples are)."""
        modes = np.random.default_rng(seed).integers(0, num_face_modes(), num_images)
        probabilities = _predict(self.model, render_face_modes(modes, seed, size))
        truth = face_attributes_of_modes(modes)
        return {name: float((p.argmax(1) == truth[name]).mean()) for name, p in probabilities.items()}

    def to(self, device: str | torch.device) -> "FaceClassifier":
        """Classify on ``device`` (a GPU classifies the 80 x 80 benchmark's samples in seconds)."""
        self.model.to(device)
        return self

    def classify(self, images: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(mode_ids, confident)`` for uint8 N x 3 x S x S images."""
        probabilities = _predict(self.model, images)
        attributes = {name: p.argmax(1) for name, p in probabilities.items()}
        confident = np.all([p.max(1) >= FACE_CONFIDENCE for p in probabilities.values()], axis=0)
        return face_mode_ids(attributes), confident

    def count_modes(self, images: torch.Tensor | np.ndarray) -> ModeReport:
        return count_modes(*self.classify(images), num_face_modes())


# --------------------------------------------------------------------------------------------
# Stacked digits
# --------------------------------------------------------------------------------------------


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 8x8 digits (bundled, offline) as uint8 0..255 and their labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


def _digit_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the digits the classifier trains on (80%) and of the held-out ones (20%)."""
    labels = _digits()[1]
    order = np.random.default_rng(seed).permutation(len(labels))
    cut = int(0.8 * len(labels))
    return np.sort(order[:cut]), np.sort(order[cut:])


def _upsample(images8: np.ndarray) -> np.ndarray:
    """uint8 N x 8 x 8 -> uint8 N x 32 x 32, bilinear."""
    x = torch.from_numpy(images8).float()[:, None]
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return x[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


@functools.lru_cache(maxsize=1)
def _upsampled_digits() -> np.ndarray:
    return _upsample(_digits()[0])


def stacked_digits(num_images: int, seed: int, *, modes: np.ndarray | None = None,
                   digit_pool: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stacked-digit images: a random digit image of each chosen class in each colour channel.

    Args:
        num_images: how many images.
        seed: seed for the modes (when not given) and for which digit image shows each class.
        modes: mode of each image (``100 * red + 10 * green + blue``); default uniform over 1000.
        digit_pool: indices into scikit-learn's digits to draw images from (default all).

    Returns:
        ``(images, modes)``: uint8 N x 3 x 32 x 32 and int N.
    """
    images8, labels = _digits()
    upsampled = _upsampled_digits()
    pool = np.arange(len(labels)) if digit_pool is None else np.asarray(digit_pool)
    rng = np.random.default_rng(seed)
    if modes is None:
        modes = rng.integers(0, NUM_DIGIT_MODES, num_images)
    modes = np.asarray(modes, dtype=np.int64)
    by_class = [pool[labels[pool] == digit] for digit in range(10)]
    sizes = np.array([len(members) for members in by_class])
    out = np.empty((len(modes), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for channel, place in enumerate((100, 10, 1)):
        digit = (modes // place) % 10
        slot = (rng.random(len(modes)) * sizes[digit]).astype(np.int64)
        picks = np.array([by_class[d][i] for d, i in zip(digit, slot)], dtype=np.int64)
        out[:, channel] = upsampled[picks]
    return out, modes


class DigitClassifier:
    """Digit classifier applied to each colour channel of stacked digits.

    Each 32 x 32 channel is average-pooled back to 8 x 8 (which also discards a generator's
    high-frequency artefacts) and classified by an RBF support-vector machine with calibrated
    probabilities, trained on 80% of scikit-learn's digits in a few seconds; ``accuracy`` is
    measured on the other 20%. A channel is confident when its top probability reaches
    ``DIGIT_CONFIDENCE``: Platt-calibrated SVM probabilities are modest, and at 0.6 every held-out
    real digit counts as confident while blurs between two digits do not.
    """

    num_modes = NUM_DIGIT_MODES

    def __init__(self, model, accuracy: dict[str, float], seconds: float):
        self.model, self.accuracy, self.seconds = model, accuracy, seconds

    @classmethod
    def train(cls, *, seed: int = 0) -> "DigitClassifier":
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.svm import SVC

        started = time.perf_counter()
        labels = _digits()[1]
        train_index, test_index = _digit_split(seed)
        upsampled = _upsampled_digits()
        model = CalibratedClassifierCV(SVC(C=10.0, gamma="scale"), ensemble=False, cv=5)
        model.fit(_pool_digits(upsampled[train_index]), labels[train_index])
        seconds = time.perf_counter() - started
        predicted = model.predict(_pool_digits(upsampled[test_index]))
        return cls(model, {"digit": float((predicted == labels[test_index]).mean())}, seconds)

    def classify(self, images: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(mode_ids, confident)`` for uint8 N x 3 x S x S stacked-digit images."""
        images = torch.as_tensor(images)
        n = images.shape[0]
        probabilities = self.model.predict_proba(_pool_digits(images.reshape(n * 3, *images.shape[-2:])))
        probabilities = probabilities.reshape(n, 3, 10)
        confident = (probabilities.max(2) >= DIGIT_CONFIDENCE).all(axis=1)
        return probabilities.argmax(2) @ np.array([100, 10, 1]), confident

    def count_modes(self, images: torch.Tensor | np.ndarray) -> ModeReport:
        return count_modes(*self.classify(images), NUM_DIGIT_MODES)


def _pool_digits(channels: torch.Tensor | np.ndarray) -> np.ndarray:
    """uint8 N x S x S single channels -> N x 64 features in [0, 1] (8 x 8 average pooling)."""
    x = torch.as_tensor(channels).float()[:, None]
    x = F.adaptive_avg_pool2d(x, 8)
    return x.reshape(len(x), 64).numpy() / 255.0
