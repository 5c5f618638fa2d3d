"""Feature extractors: images in, one float64 feature vector per image out.

The feature spaces, chosen with :func:`get_extractor` by a spec string:

- ``inception``: the standard FID network, the TensorFlow-ported Inception-v3
  (``pt_inception-2015-12-05``) as used by torchmetrics and torch-fidelity, 2048-d pool features.
  Its numbers are comparable with published FIDs (at equal sample counts and real sets).
- ``random``: a small CNN whose weights are drawn from a fixed numpy seed, so it is identical on
  every machine and torch version and needs no download. Its numbers rank checkpoints within one
  study; they are not comparable with published FIDs.
- ``dinov2``: DINOv2 ViT-B/14 class-token features (timm), as Stein et al. (2023) recommend.
- ``export:PATH``: any network saved with ``torch.export`` (a ``.pt2`` file, e.g. a face-recognition
  embedding, or what ``facegan encoder`` writes).
- ``torchscript:PATH``: the same for a network saved with TorchScript (deprecated by PyTorch).

Resizing, the same rule for every extractor: the uint8 image is converted to float (values kept in
0..255) and resized to the network's square input size with
``torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=True)``.
This is exactly what torchmetrics' ``FrechetInceptionDistance`` does by default
(``antialias=True``), so ``inception`` features equal torchmetrics' FID features. (torch-fidelity
and the original TensorFlow code resize with TensorFlow 1's bilinear rule instead, which samples
half a pixel off; when upsampling small faces to 299 the two differ slightly.) Non-square images
are stretched to the square input.

Example:
    >>> extractor = get_extractor("random")
    >>> images = torch.randint(0, 256, (8, 3, 80, 80), dtype=torch.uint8)
    >>> extractor.extract(images).shape
    (8, 992)
"""

from __future__ import annotations

import abc
import inspect
import io
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from facegan.common import (
    EXPORT_PROGRAM, TORCHSCRIPT_PROGRAM, error_text, file_sha256, network_file_format, select_device,
    torch_load_failure,
)
from facegan.errors import FaceganError

__all__ = [
    "FeatureExtractor",
    "DinoV2Extractor",
    "ExportedProgramExtractor",
    "InceptionExtractor",
    "RandomCNNExtractor",
    "TorchScriptExtractor",
    "extractor_specs",
    "get_extractor",
    "register_extractor",
    "resize_images",
]

Images = torch.Tensor | Iterable[torch.Tensor]

INCEPTION_WEIGHTS_ENV = "FACEGAN_INCEPTION_WEIGHTS"
# torch-fidelity's release of the FID weights; torchmetrics downloads the same file.
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
# Names under which the same weights may already sit in torch hub's cache: torch-fidelity's and
# pytorch-fid's (pt_inception-...); both are state_dicts of this architecture.
_INCEPTION_CACHE_NAMES = (
    "weights-inception-2015-12-05-6726825d.pth",
    "pt_inception-2015-12-05-6726825d.pth",
)
_INCEPTION_FILE_NAMES = f"{_INCEPTION_CACHE_NAMES[0]} (also published as {_INCEPTION_CACHE_NAMES[1]})"


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a float image batch to ``size`` x ``size``, the one rule all extractors use.

    Args:
        images: N x C x H x W floating-point tensor (any value range; 0..255 here).
        size: side of the square output.

    Returns:
        N x C x size x size tensor; the input itself when it already has that size.
    """
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class FeatureExtractor(abc.ABC):
    """Base class: batching, validation, device handling and progress for every extractor.

    Subclasses set the attributes below in their constructor and implement :meth:`_embed`.

    Attributes:
        name: the spec that selects this extractor (``"random"``, ``"torchscript:/x/net.pt"``).
        dim: length of each feature vector.
        input_size: side of the square image the network sees (see :func:`resize_images`).
        comparable_to_published: whether FIDs in this space can be compared with published ones.
        note: one line for users on what the numbers mean; print it beside the results.
        identity: a string that changes whenever the features would change (architecture
            version, seed, hash of the weights file); use it in cache keys for real features.
        device: torch device the network runs on.
        default_batch_size: images per forward pass when :meth:`extract` is not told.
    """

    name: str
    dim: int
    input_size: int
    comparable_to_published: bool
    note: str
    identity: str
    device: torch.device
    # Large batches amortise per-call overhead on the CPU; Inception's activations (~5 MB an
    # image) cap its batch.
    default_batch_size: ClassVar[int] = 64

    def extract(self, images: Images, *, batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """Compute features for a batch of images or a stream of batches.

        Args:
            images: a uint8 tensor N x 3 x H x W with values 0..255, or an iterable of such
                tensors (e.g. batches from a generator), so callers never hold all images; only
                the features are kept.
            batch_size: images per forward pass (default: the extractor's ``default_batch_size``);
                larger streamed batches are split.
            progress: show a progress bar on stderr.

        Returns:
            float64 array of shape N x ``dim`` (0 x ``dim`` for no images).

        Raises:
            FaceganError: an input batch is not a uint8 N x 3 x H x W tensor.
        """
        batch_size = self.default_batch_size if batch_size is None else batch_size
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        total = images.shape[0] if isinstance(images, torch.Tensor) else None
        chunks: list[np.ndarray] = []
        with torch.inference_mode(), tqdm(
            total=total, disable=not progress, unit="img", desc=f"features ({self.name})", file=sys.stderr
        ) as bar:
            for batch in _split_batches(images, batch_size):
                features = self._embed(self._prepare(batch.to(self.device)))
                chunks.append(features.reshape(batch.shape[0], -1).to(torch.float64).cpu().numpy())
                bar.update(batch.shape[0])
        if not chunks:
            return np.empty((0, self.dim))
        return np.concatenate(chunks)

    def _prepare(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 batch on the device -> float 0..255 at the network's input size."""
        return resize_images(batch.float(), self.input_size)

    @abc.abstractmethod
    def _embed(self, batch: torch.Tensor) -> torch.Tensor:
        """Network forward pass on a prepared batch; any output shape with N leading."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, input_size={self.input_size})"


def _split_batches(images: Images, batch_size: int) -> Iterator[torch.Tensor]:
    batches = [images] if isinstance(images, torch.Tensor) else images
    for batch in batches:
        is_rgb_uint8 = (
            isinstance(batch, torch.Tensor) and batch.dtype == torch.uint8 and batch.dim() == 4 and batch.shape[1] == 3
        )
        if not is_rgb_uint8:
            described = (
                f"{batch.dtype} tensor of shape {tuple(batch.shape)}"
                if isinstance(batch, torch.Tensor)
                else type(batch).__name__
            )
            raise FaceganError(f"images must be uint8 tensors of shape N x 3 x H x W (RGB, 0..255), got {described}")
        if batch.shape[0]:
            yield from batch.split(batch_size)


# --- registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Registration:
    cls: type[FeatureExtractor]
    argument: str | None  # placeholder shown in usage, e.g. "PATH"; None: the kind takes none


_REGISTRY: dict[str, _Registration] = {}
_E = TypeVar("_E", bound=type[FeatureExtractor])


def register_extractor(kind: str, *, argument: str | None = None) -> Callable[[_E], _E]:
    """Class decorator: make a :class:`FeatureExtractor` subclass selectable as ``kind``.

    The registry checks what it registers, so a mistake fails at import, not at a user's run:
    the kind must be a new lowercase name, the class a concrete FeatureExtractor whose
    constructor takes a keyword-only ``device``, and, when ``argument`` is given (the spec is
    ``kind:ARGUMENT``), one positional parameter for it.

    Args:
        kind: the spec's name, e.g. ``"random"``.
        argument: placeholder for a required argument, e.g. ``"PATH"`` for ``torchscript:PATH``.
    """
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", kind):
        raise ValueError(f"extractor kind must be a lowercase name, got {kind!r}")

    def decorate(cls: _E) -> _E:
        if not (isinstance(cls, type) and issubclass(cls, FeatureExtractor)) or inspect.isabstract(cls):
            raise TypeError(f"{cls!r} is not a concrete FeatureExtractor subclass")
        if kind in _REGISTRY:
            raise ValueError(f"feature extractor {kind!r} is already registered ({_REGISTRY[kind].cls.__name__})")
        params = list(inspect.signature(cls).parameters.values())
        if not any(p.name == "device" and p.kind is p.KEYWORD_ONLY for p in params):
            raise TypeError(f"{cls.__name__} must take a keyword-only 'device' argument")
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if (argument is not None) != (len(positional) == 1):
            raise TypeError(
                f"{cls.__name__} must take {'one positional argument' if argument else 'no positional arguments'}"
            )
        _REGISTRY[kind] = _Registration(cls, argument)
        return cls

    return decorate


def extractor_specs() -> list[str]:
    """The valid spec forms, e.g. ``["export:PATH", "inception", "random", "torchscript:PATH"]``."""
    return [kind if reg.argument is None else f"{kind}:{reg.argument}" for kind, reg in sorted(_REGISTRY.items())]


def get_extractor(
    spec: str, *, inception_weights: str | os.PathLike | None = None, dinov2_weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> FeatureExtractor:
    """Build the feature extractor that ``spec`` names.

    Args:
        spec: ``"inception"``, ``"dinov2"``, ``"random"``, ``"export:PATH"`` or
            ``"torchscript:PATH"`` (see :func:`extractor_specs`).
        inception_weights: local file with the FID Inception weights (``--inception-weights``);
            only valid with ``inception``.
        dinov2_weights: local file with the DINOv2 weights (``--dinov2-weights``); only valid with
            ``dinov2``.
        device: torch device to run the network on, e.g. ``"cpu"``, ``"cuda"`` or ``"auto"``
            (:func:`facegan.common.select_device`).

    Raises:
        FaceganError: unknown spec, missing or extra argument, unusable device, or the
            extractor cannot be built (missing weights, bad network file).
    """
    kind, has_argument, argument = spec.partition(":")
    registration = _REGISTRY.get(kind)
    if registration is None:
        raise FaceganError(f"unknown feature space {spec!r}; choose one of: {', '.join(extractor_specs())}")
    if registration.argument is None and has_argument:
        raise FaceganError(f"feature space {kind!r} takes no argument, got {spec!r}")
    if registration.argument is not None and not argument:
        raise FaceganError(f"feature space {kind!r} needs an argument: {kind}:{registration.argument}")
    kwargs: dict[str, object] = {"device": select_device(device)}
    for option, network, weights in (("--inception-weights", "inception", inception_weights),
                                     ("--dinov2-weights", "dinov2", dinov2_weights)):
        if weights is not None:
            if kind != network:
                raise FaceganError(f"{option} applies only to --features {network}, not {spec!r}")
            kwargs["weights_path"] = weights
    args = (argument,) if registration.argument is not None else ()
    return registration.cls(*args, **kwargs)


def _file_digest(path: Path) -> str:
    """A weights file's part of an extractor's identity (the real-feature cache key)."""
    return file_sha256(path)[:16]


# --- random -----------------------------------------------------------------------------------


@register_extractor("random")
class RandomCNNExtractor(FeatureExtractor):
    """A randomly initialised CNN with weights from ``np.random.RandomState(seed)``.

    Four 4x4 convolutions with stride 2 (3 -> 16 -> 32 -> 64 -> 128 channels, LeakyReLU 0.2,
    He-normal weights, no bias) on a 64 x 64 input scaled to [-1, 1]. The features are the
    per-channel spatial mean and standard deviation of every layer (480 values; colour and texture)
    and the last layer's means over the four image quadrants (512 values; layout), 992 in all: the
    quadrant means are what lets it see where things sit, not only which colours and textures
    there are (experiments/RESULTS.md, "Figures behind the docstrings"). numpy's legacy
    ``RandomState`` stream is frozen, so the weights are the same on every machine and torch
    version. CUDA's TF32 convolutions move the features slightly, so extract real and generated
    features on the same kind of device.

    Args:
        seed: numpy seed for the weights.
        device: torch device.
    """

    ARCHITECTURE_VERSION: ClassVar[int] = 2  # bump when the architecture, feature layout or arithmetic changes
    CHANNELS: ClassVar[tuple[int, ...]] = (3, 16, 32, 64, 128)
    INPUT_SIZE: ClassVar[int] = 64
    # Small batches keep each layer's activations in cache, which made extraction faster on the CPU
    # than large ones (same features to the bit; experiments/RESULTS.md).
    default_batch_size: ClassVar[int] = 32
    NEGATIVE_SLOPE: ClassVar[float] = 0.2

    def __init__(self, *, seed: int = 0, device: str | torch.device = "cpu") -> None:
        self.name = "random"
        self.input_size = self.INPUT_SIZE
        self.dim = 2 * sum(self.CHANNELS[1:]) + 4 * self.CHANNELS[-1]
        self.comparable_to_published = False
        self.note = (
            "random-CNN features: the numbers rank checkpoints within one study and are not "
            "comparable with published FIDs"
        )
        self.identity = f"random-v{self.ARCHITECTURE_VERSION}-seed{seed}"
        self.device = torch.device(device)
        rng = np.random.RandomState(seed)
        gain = np.sqrt(2.0 / (1.0 + self.NEGATIVE_SLOPE**2))
        self._weights = []
        for c_in, c_out in zip(self.CHANNELS[:-1], self.CHANNELS[1:]):
            fan_in = c_in * 4 * 4
            weight = rng.standard_normal((c_out, c_in, 4, 4)) * (gain / np.sqrt(fan_in))
            self._weights.append(torch.from_numpy(weight.astype(np.float32)).to(self.device)
                                 .contiguous(memory_format=torch.channels_last))

    def _embed(self, batch: torch.Tensor) -> torch.Tensor:
        # Channels-last convolutions take oneDNN's faster kernels on the CPU (features move by ~1e-6
        # relative, hence version 2 of the architecture's identity).
        x = (batch / 127.5 - 1.0).contiguous(memory_format=torch.channels_last)
        pooled = []
        for weight in self._weights:
            x = F.leaky_relu(F.conv2d(x, weight, stride=2, padding=1), self.NEGATIVE_SLOPE)
            std, mean = _spatial_std_mean(x)
            pooled += [mean, std]
        pooled.append(F.adaptive_avg_pool2d(x, 2).flatten(1))
        return torch.cat(pooled, dim=1)


def _spatial_std_mean(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel standard deviation (ddof=1) and mean over the image, as ``torch.std_mean(x, (2, 3))``.

    Written out because torch's reduction over small maps (4 x 4 to 32 x 32, many channels) is
    several times slower on the CPU than these three passes.
    """
    flat = x.contiguous().flatten(2)
    mean = flat.mean(2)
    std = ((flat - mean[..., None]).square().sum(2) / (flat.shape[2] - 1)).sqrt()
    return std, mean


# --- inception --------------------------------------------------------------------------------


@register_extractor("inception")
class InceptionExtractor(FeatureExtractor):
    """The standard FID Inception-v3 (torch-fidelity's port of ``pt_inception-2015-12-05``).

    The network is torchmetrics' ``NoTrainInceptionV3`` (torch-fidelity's
    ``FeatureExtractorInceptionV3`` kept in eval mode) and the features its 2048-d pool layer,
    identical to what ``torchmetrics.image.fid.FrechetInceptionDistance`` uses. It takes uint8
    images and resizes them to 299 with the rule in :func:`resize_images`.

    Weights are taken from, in order: ``weights_path``; the file named by the environment variable
    ``FACEGAN_INCEPTION_WEIGHTS``; torch hub's cache (``<torch hub dir>/checkpoints/``, where
    torchmetrics and torch-fidelity download it); a download into that cache. Files are read with
    ``torch.load(weights_only=True)``, so a weights file cannot run code.

    Args:
        weights_path: local copy of ``weights-inception-2015-12-05-6726825d.pth`` (also published
            as ``pt_inception-2015-12-05-6726825d.pth``).
        device: torch device.

    Attributes:
        weights_path: the file the weights were read from.

    Raises:
        FaceganError: the file is missing, unreadable or not these weights; or no file was given
            and the download failed (e.g. offline).
    """

    INPUT_SIZE: ClassVar[int] = 299
    default_batch_size: ClassVar[int] = 32
    FEATURE_LAYER: ClassVar[str] = "2048"

    def __init__(self, *, weights_path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> None:
        path = self._locate_weights(weights_path)
        state_dict = _load_inception_state(path)
        self.name = "inception"
        self.input_size = self.INPUT_SIZE
        self.dim = 2048
        self.comparable_to_published = True
        self.note = (
            "Inception-v3 FID features (pt_inception-2015-12-05), as torchmetrics and torch-fidelity; "
            "FIDs are comparable with published ones at equal sample counts and real data"
        )
        self.identity = f"inception-2015-12-05-{self.FEATURE_LAYER}-{_file_digest(path)}"
        self.device = torch.device(device)
        self.weights_path = path
        self._network = _build_inception(state_dict, path).to(self.device)

    @staticmethod
    def _locate_weights(weights_path: str | os.PathLike | None) -> Path:
        if weights_path is not None:
            return Path(weights_path)
        from_env = os.environ.get(INCEPTION_WEIGHTS_ENV)
        if from_env:
            return Path(from_env)
        cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
        for name in _INCEPTION_CACHE_NAMES:
            if (cache_dir / name).is_file():
                return cache_dir / name
        target = cache_dir / _INCEPTION_CACHE_NAMES[0]
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(INCEPTION_WEIGHTS_URL, str(target), progress=True)
        except Exception as error:  # urllib, http and filesystem errors all mean the same to the user
            raise FaceganError(
                f"cannot download the Inception FID weights ({type(error).__name__}: {error}). "
                f"Offline, give a local copy of {_INCEPTION_FILE_NAMES} with --inception-weights FILE "
                f"or the environment variable {INCEPTION_WEIGHTS_ENV}, or use --features random "
                f"(works offline; its numbers are not comparable with published FIDs)"
            ) from None
        return target

    def _prepare(self, batch: torch.Tensor) -> torch.Tensor:
        # NoTrainInceptionV3 insists on uint8 and applies the resize rule of resize_images itself
        # (F.interpolate bilinear, align_corners=False, antialias=True on float 0..255).
        return batch

    def _embed(self, batch: torch.Tensor) -> torch.Tensor:
        return self._network(batch)


def _load_inception_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FaceganError(f"Inception weights file not found: {path}")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise FaceganError(
            f"cannot read Inception weights {path}: {torch_load_failure(path, error)}. "
            f"Expected the FID Inception-v3 state_dict {_INCEPTION_FILE_NAMES}"
        ) from None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise FaceganError(f"{path} is not a state_dict of tensors; expected {_INCEPTION_FILE_NAMES}")
    return state_dict


def _build_inception(state_dict: dict[str, torch.Tensor], path: Path) -> torch.nn.Module:
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError as error:
        raise FaceganError(f"inception features need torchmetrics and torch-fidelity: {error}") from None
    # The constructor loads weights with torch.load(weights_only=False); handing it the already
    # validated tensors through a buffer keeps untrusted pickles out of that call.
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    try:
        return NoTrainInceptionV3(
            name="inception-v3-compat", features_list=[InceptionExtractor.FEATURE_LAYER],
            feature_extractor_weights_path=buffer, antialias=True,
        )
    except ModuleNotFoundError as error:
        raise FaceganError(f"inception features need torch-fidelity (pip install torch-fidelity): {error}") from None
    except RuntimeError as error:
        raise FaceganError(
            f"{path} does not hold the FID Inception-v3 weights ({error_text(error)}); "
            f"expected {_INCEPTION_FILE_NAMES}"
        ) from None


# --- dinov2 -----------------------------------------------------------------------------------

DINOV2_WEIGHTS_ENV = "FACEGAN_DINOV2_WEIGHTS"
DINOV2_MODEL = "vit_base_patch14_dinov2.lvd142m"  # timm's DINOv2 ViT-B/14 (Oquab et al. 2023)
DINOV2_HUB_REPO, DINOV2_HUB_FILE = "timm/vit_base_patch14_dinov2.lvd142m", "model.safetensors"
DINOV2_FILES = f"{DINOV2_HUB_FILE} of huggingface.co/{DINOV2_HUB_REPO}, or Meta's dinov2_vitb14_pretrain.pth"


@register_extractor("dinov2")
class DinoV2Extractor(FeatureExtractor):
    """DINOv2 ViT-B/14 features: the class token after the last norm (768-d), at 224 x 224.

    Stein et al. (NeurIPS 2023) found Inception features unfair to modern generators and recommend
    DINOv2 ViT features for the Fréchet distance and the other metrics; their dgm-eval uses ViT-L/14
    for final numbers and ViT-B/14 for tracking during training, with 224 x 224 inputs and ImageNet
    normalisation. facegan uses ViT-B/14 through timm (``vit_base_patch14_dinov2.lvd142m``; its
    position embeddings resampled once from the published 518 grid to 224). Images are resized with
    the rule of :func:`resize_images` (dgm-eval resizes with bicubic PIL), so FDs here match
    other DINOv2 FDs only approximately.

    Weights are taken from, in order: ``weights_path``; ``FACEGAN_DINOV2_WEIGHTS``; a download
    from the Hugging Face hub (or its local cache). A ``.safetensors`` file, or a ``.pth`` read with
    ``weights_only=True``, so a weights file cannot run code.

    Args:
        weights_path: local weights (``model.safetensors`` of ``timm/vit_base_patch14_dinov2.lvd142m``,
            or Meta's ``dinov2_vitb14_pretrain.pth``).
        device: torch device.

    Raises:
        FaceganError: timm is missing, the file is missing or not these weights, or no file was given
            and the download failed (e.g. offline).
    """

    INPUT_SIZE: ClassVar[int] = 224
    MEAN: ClassVar[tuple[float, ...]] = (0.485, 0.456, 0.406)
    STD: ClassVar[tuple[float, ...]] = (0.229, 0.224, 0.225)
    default_batch_size: ClassVar[int] = 32

    def __init__(self, *, weights_path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> None:
        try:
            import timm
        except ImportError as error:
            raise FaceganError(f"dinov2 features need timm (pip install timm): {error}") from None
        given = weights_path if weights_path is not None else os.environ.get(DINOV2_WEIGHTS_ENV) or None
        if given is not None and not Path(given).is_file():
            raise FaceganError(f"DINOv2 weights file not found: {given}")
        path = Path(given) if given is not None else _dinov2_hub_file()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # position-embedding resampling notices
                network = timm.create_model(DINOV2_MODEL, pretrained=True, img_size=self.INPUT_SIZE, num_classes=0,
                                            pretrained_cfg_overlay={"file": str(path)})
        except Exception as error:  # torch, safetensors and state-dict errors all mean the same to the user
            raise FaceganError(f"{path} does not hold the DINOv2 ViT-B/14 weights ({error_text(error, with_type=True)}); expected "
                               f"{DINOV2_FILES}") from None
        self.name = "dinov2"
        self.input_size = self.INPUT_SIZE
        self.dim = network.num_features
        self.comparable_to_published = False
        self.note = ("DINOv2 ViT-B/14 features (Stein et al. 2023's recommendation for FD): comparable with FDs "
                     "from the same network and resizing only, not with Inception FIDs")
        self.identity = f"dinov2-vitb14-{self.INPUT_SIZE}-{_file_digest(path)}"
        self.weights_path = path
        self.device = torch.device(device)
        self._network = network.eval().to(self.device)
        self._mean = torch.tensor(self.MEAN, device=self.device).view(1, 3, 1, 1) * 255
        self._std = torch.tensor(self.STD, device=self.device).view(1, 3, 1, 1) * 255

    def _prepare(self, batch: torch.Tensor) -> torch.Tensor:
        return (resize_images(batch.float(), self.input_size) - self._mean) / self._std

    def _embed(self, batch: torch.Tensor) -> torch.Tensor:
        return self._network(batch)


def _dinov2_hub_file() -> Path:
    """The hub's DINOv2 weights file: from the local Hugging Face cache, else downloaded into it.

    Offline (no route to the hub, or ``HF_HUB_OFFLINE`` set) this fails at once with the options,
    instead of the hub client's minute of retries.
    """
    def offline(reason: str) -> FaceganError:
        return FaceganError(
            f"cannot download the DINOv2 weights ({reason}). Offline, give a local copy ({DINOV2_FILES}) with "
            f"--dinov2-weights FILE or the environment variable {DINOV2_WEIGHTS_ENV}, or use --features random "
            f"(works offline; its numbers rank checkpoints within one study only)")

    try:
        import huggingface_hub
    except ImportError as error:
        raise offline(f"huggingface_hub is not installed: {error}") from None
    cached = huggingface_hub.try_to_load_from_cache(DINOV2_HUB_REPO, DINOV2_HUB_FILE)
    if isinstance(cached, str):
        return Path(cached)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise offline("HF_HUB_OFFLINE is set and the file is not in the local Hugging Face cache")
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=5).close()
    except OSError as error:
        raise offline(f"huggingface.co cannot be reached: {error}") from None
    try:
        return Path(huggingface_hub.hf_hub_download(DINOV2_HUB_REPO, DINOV2_HUB_FILE))
    except Exception as error:  # hub, HTTP and file errors: the same to the user
        raise offline(f"{type(error).__name__}: {error}") from None


# --- your own network: torch.export programs and TorchScript ----------------------------------

# What a network file is, told by its content (both formats are zip archives under one root folder).
_EXPORT, _TORCHSCRIPT = EXPORT_PROGRAM, TORCHSCRIPT_PROGRAM
_EXPORT_LOGGER = "torch.export"  # torch.export.load logs a failed read there, traceback included


class _NetworkFileExtractor(FeatureExtractor):
    """What both file formats share: inputs in [0, 1], ``dim`` from a probe, the file's digest."""

    DEFAULT_INPUT_SIZE: ClassVar[int] = 224
    _KIND: ClassVar[str]
    _FORMAT_NAME: ClassVar[str]

    def _finish(self, path: str | os.PathLike, file: Path, size: int) -> None:
        self.name = f"{self._KIND}:{path}"
        self.input_size = size
        self.comparable_to_published = False
        self.note = (
            f"features of the {self._FORMAT_NAME} network {file.name}: the numbers rank checkpoints within one "
            f"study and are not comparable with published FIDs"
        )
        self.identity = f"{self._KIND}-{_file_digest(file)}"
        try:
            with torch.inference_mode():
                probe = self._embed(torch.zeros(1, 3, size, size, device=self.device))
        except Exception as error:  # whatever the user's network raises
            raise FaceganError(f"{file}: the network failed on a 1 x 3 x {size} x {size} image: "
                               f"{_first_line(error)}") from None
        self.dim = probe.reshape(1, -1).shape[1]

    def _embed(self, batch: torch.Tensor) -> torch.Tensor:
        return self._network(batch / 255.0)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _positive_int(value: object) -> int | None:
    """``value`` as a positive int (an int, or a string of digits), else None."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value


@register_extractor("export", argument="PATH")
class ExportedProgramExtractor(_NetworkFileExtractor):
    """Any network saved with ``torch.export.export`` and ``torch.export.save`` (a ``.pt2`` file).

    The program receives float32 images N x 3 x S x S with values in [0, 1] (RGB); put any other
    normalisation inside the exported module, and export it in eval mode (``module.eval()``) on the
    CPU. Its batch dimension must be dynamic, e.g.
    ``dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)``. S is, in order: the archive's extra
    file ``input_size`` (a string of digits, as TorchScript's integer attribute ``input_size``:
    ``torch.export.save(program, path, extra_files={"input_size": "112"})``); the program's own
    input size when it was exported with a fixed square S x S; else 224. Its output, whatever its
    shape, is flattened to one vector per image. The program is run once on a blank image at
    construction to learn ``dim``. ``facegan encoder --out FILE.pt2`` writes one. As with TorchScript,
    loading unpickles parts of the file: use files you trust.

    Args:
        path: the ``.pt2`` file (any name; the format is told by the content).
        device: torch device; the program is moved there with ``torch.export.passes.move_to_device_pass``.

    Raises:
        FaceganError: the file is missing, not a torch.export program (TorchScript files are named
            as such), unreadable by this PyTorch, has a fixed batch size or a bad ``input_size``, or
            the program fails on an image.
    """

    _KIND = _EXPORT
    _FORMAT_NAME = "torch.export"

    def __init__(self, path: str | os.PathLike, *, device: str | torch.device = "cpu") -> None:
        file = Path(path)
        if not file.is_file():
            raise FaceganError(f"torch.export program not found: {file}")
        self.device = torch.device(device)
        found = network_file_format(file)
        if found == _TORCHSCRIPT:
            raise FaceganError(f"{file} is a TorchScript module, not a torch.export program; use the feature "
                               f"space torchscript:{path}")
        if found is None:
            raise FaceganError(f"{file} is not a torch.export program (a complete .pt2 archive written by "
                               f"torch.export.save); is it truncated or another kind of file?")
        program, extra = self.load_program(file)
        self._check_batch_is_dynamic(file, program)
        size = self._input_size(file, program, extra)
        if self.device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, self.device)
        self._network = program.module()
        self._finish(path, file, size)

    @staticmethod
    def load_program(file: Path) -> tuple[torch.export.ExportedProgram, dict[str, str | None]]:
        """A ``.pt2`` file's program and its extra files (``input_size``); a clear error for a bad file."""
        # torch.export.load logs a failed read with its traceback before raising a vaguer error
        # ("check the warnings above"); that one record becomes this error's reason instead.
        failures: list[logging.LogRecord] = []

        def keep_failure(record: logging.LogRecord) -> bool:
            if record.exc_info and record.getMessage().startswith("Ran into the following error"):
                failures.append(record)
                return False
            return True

        logger = logging.getLogger(_EXPORT_LOGGER)
        # torch.export.load fills in the archive's extra files only into a non-empty dict.
        extra: dict[str, str | None] = {"input_size": None}
        logger.addFilter(keep_failure)
        try:
            # An open file, not the name: torch warns about names that do not end in .pt2.
            with file.open("rb") as handle:
                program = torch.export.load(handle, extra_files=extra)
        except Exception as error:  # RuntimeError, zip, json and schema errors by what is wrong
            cause = failures[0].exc_info[1] if failures and failures[0].exc_info else error
            raise FaceganError(
                f"cannot load the torch.export program {file} (damaged, or written by another PyTorch than this "
                f"one, {torch.__version__}): {type(cause).__name__}: {_first_line(cause)}"
            ) from None
        finally:
            logger.removeFilter(keep_failure)
        return program, extra

    @staticmethod
    def input_shape(program: torch.export.ExportedProgram) -> tuple | None:
        """The shape (ints and symbols) of the program's one tensor input, None when it has not one."""
        names = list(program.graph_signature.user_inputs)
        if len(names) != 1:
            return None
        node = next((n for n in program.graph.nodes if n.op == "placeholder" and n.name == names[0]), None)
        value = node.meta.get("val") if node is not None else None
        return tuple(value.shape) if isinstance(value, torch.Tensor) else None

    def _check_batch_is_dynamic(self, file: Path, program: torch.export.ExportedProgram) -> None:
        shape = self.input_shape(program)
        if shape and isinstance(shape[0], int):
            raise FaceganError(
                f"{file}: the program takes a fixed batch of {shape[0]} images; export it with a dynamic batch "
                f"dimension: torch.export.export(module, (images,), dynamic_shapes=({{0: torch.export.Dim("
                f"'batch', min=1)}},))"
            )

    def _input_size(self, file: Path, program: torch.export.ExportedProgram, extra: dict[str, str | None]) -> int:
        if extra.get("input_size") is not None:
            size = _positive_int(extra["input_size"])
            if size is None:
                raise FaceganError(f"{file}: extra file input_size must hold a positive integer, got "
                                   f"{extra['input_size']!r}")
            return size
        shape = self.input_shape(program)
        if shape and len(shape) == 4 and isinstance(shape[2], int) and shape[2] == shape[3]:
            return shape[2]
        return self.DEFAULT_INPUT_SIZE


@register_extractor("torchscript", argument="PATH")
class TorchScriptExtractor(_NetworkFileExtractor):
    """Any network exported with ``torch.jit.script``/``torch.jit.trace`` and ``torch.jit.save``.

    TorchScript is deprecated in PyTorch (2.11+ warns on ``torch.jit.load``; that warning is shown);
    ``export:PATH`` (:class:`ExportedProgramExtractor`) takes its successor, torch.export programs.
    The network receives float32 images N x 3 x S x S with values in [0, 1] (RGB); put any other
    normalisation inside the exported module. S is the module's integer attribute ``input_size``
    when it has one, else 224. Its output, whatever its shape, is flattened to one vector per
    image. The network is run once on a blank image at construction to learn ``dim``.

    Args:
        path: the TorchScript file.
        device: torch device.

    Raises:
        FaceganError: the file is missing, not TorchScript (torch.export programs are named as
            such), or the network fails on an image.
    """

    _KIND = _TORCHSCRIPT
    _FORMAT_NAME = "TorchScript"

    def __init__(self, path: str | os.PathLike, *, device: str | torch.device = "cpu") -> None:
        file = Path(path)
        if not file.is_file():
            raise FaceganError(f"TorchScript file not found: {file}")
        self.device = torch.device(device)
        if network_file_format(file) == _EXPORT:
            raise FaceganError(f"{file} is a torch.export program, not TorchScript; use the feature space "
                               f"export:{path}")
        try:
            self._network = torch.jit.load(str(file), map_location=self.device).eval()
        except Exception as error:  # torch.jit.load raises RuntimeError or zipfile/pickle errors
            raise FaceganError(
                f"{file} is not a TorchScript module (save one with torch.jit.save), or one written by a newer "
                f"PyTorch than this one ({torch.__version__}): {type(error).__name__}"
            ) from None
        size = getattr(self._network, "input_size", self.DEFAULT_INPUT_SIZE)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise FaceganError(f"{file}: attribute input_size must be a positive int, got {size!r}")
        self._finish(path, file, size)
