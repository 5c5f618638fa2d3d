"""Generator checkpoints made by other code: the tutorial's run as it lies on disk, and any PyTorch generator.

What ``facegan evaluate --checkpoints PATTERN`` reads, as the evaluation engine's checkpoints
(:func:`checkpoint_sources`), and what it registers (:meth:`ImportedGenerator.facegan_checkpoint`):

- **Which files** (:func:`find_checkpoint_files`): a quoted glob (``'run/model.generation.epoch_*.pt'``)
  or a folder; each file's epoch is the last number in its name (``netG_epoch_24.pth`` -> 24). In a
  folder, files named as a generator's (``generat...``, ``netG``) are taken when there are any,
  so the tutorial's discriminator files and DCGAN's ``netD_epoch_N.pth`` beside them are left out.
- **Which formats**, told by content, never by name, and always read with
  ``torch.load(weights_only=True)``: the tutorial's gzip-compressed ``torch.save`` of a state
  dict; a plain ``torch.save`` of a state dict (pytorch/examples' DCGAN ``netG_epoch_N.pth``);
  facegan's own checkpoint files; ``torch.export`` programs (``.pt2``).
- **Which architectures**: a state dict of a DCGAN-style stack (ConvTranspose2d, BatchNorm2d or
  none, ReLU, ..., ConvTranspose2d, Tanh; kernel 4 or 5 first, then 4 with stride 2), under any
  module name (the tutorial's ``generator.``, DCGAN's ``main.``, facegan's ``net.``), is rebuilt
  as a facegan :class:`~facegan.models.Generator` from its shapes (image size, latent size,
  width, norm): the tutorial's 80 x 80 network and DCGAN's 64 x 64 ``netG`` are both facegan
  generators, so the choice can be registered and used by ``facegan generate`` and ``serve``.
  Strides and paddings are not in a state dict: a network with the same weight shapes and other
  strides would be misread; give it as your own architecture. Any other architecture is your own
  (:class:`GeneratorSpec`): a factory ``module:function`` returning the ``nn.Module`` each state
  dict is loaded into, or a ``torch.export`` program per checkpoint, with the latent shape and the
  output range stated.

The tutorial's layout: its ``image_to_tensor`` turns H x W x C into C x W x H (``transpose(0, 2)``,
not a permute) and its ``tensor_to_image`` undoes it, so its data and its generators' outputs are
transposed images. Every layer of its generator (square kernels, the same stride and padding on
both axes, per-channel BatchNorm, ReLU, Tanh) commutes with swapping the two spatial axes, so
swapping the two kernel axes of every convolution's weight gives a generator whose outputs are
the same images upright: the converted weights are a plain facegan generator. Gzip-compressed
files are the tutorial's (nothing else gzips a ``torch.save``) and are read transposed; say
``transposed`` to decide otherwise. The tutorial's ``data/`` folder of batches ``0.pt``, ``1.pt``,
... is read upright as a :class:`~facegan.dataset.Dataset` (:func:`load_tutorial_data`).

Example::

    checkpoints = checkpoint_sources("run/model.generation.epoch_*.pt")      # or a GeneratorSpec
    evaluation = evaluation.engine.evaluate(checkpoints, scorer)
    chosen = next(c for c in checkpoints if c.epoch == evaluation.best_epoch)
    save_checkpoint(load_generator_file(chosen.label).facegan_checkpoint(chosen.epoch), "best.pt")
"""

from __future__ import annotations

import glob
import gzip
import importlib
import io
import os
import pickle
import re
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from evaluation.features import ExportedProgramExtractor
from evaluation.sources import AdaptedGenerator, LoadingCheckpoint
from facegan.checkpoint import FORMAT, VERSION, generator_from_checkpoint
from facegan.common import error_text, file_sha256, network_file_format, to_uint8, torch_load_failure
from facegan.dataset import Dataset, make_manifest
from facegan.errors import FaceganError
from facegan.models import SUPPORTED_IMAGE_SIZES, NetworkConfig, build_generator

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".pt2", ".ckpt")
# Names that mark a generator's file in a folder: the tutorial's model.generation.epoch_N.pt,
# DCGAN's netG_epoch_N.pth, facegan's generator-epoch-0100.
_GENERATOR_NAME = re.compile(r"generat|netG", re.IGNORECASE)
_GZIP_MAGIC = b"\x1f\x8b"
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
# A key of a Sequential's layer: <prefix><index>.<name>, e.g. generator.0.weight, main.3.running_mean.
_LAYER_KEY = re.compile(r"^(?P<prefix>(?:.+\.)?)(?P<index>\d+)\.(?P<name>[A-Za-z_]+)$")
_BATCHNORM_KEYS = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


# ----------------------------------------------------------------------------------------------
# Which files


@dataclass(frozen=True)
class CheckpointFile:
    """One generator checkpoint file and its epoch (the last number in its name)."""

    epoch: int
    path: Path


def epoch_of(path: str | Path) -> int | None:
    """The last number in a file's name without its suffix, or None.

    Example:
        >>> epoch_of("run/model.generation.epoch_99.pt"), epoch_of("netG_epoch_24.pth"), epoch_of("best.pt")
        (99, 24, None)
    """
    numbers = re.findall(r"\d+", Path(path).stem)
    return int(numbers[-1]) if numbers else None


def find_checkpoint_files(pattern: str) -> list[CheckpointFile]:
    """The generator checkpoint files ``pattern`` names, in epoch order.

    Args:
        pattern: a glob (quote it in the shell: ``'run/model.generation.epoch_*.pt'``; ``**``
            descends into folders), one file, or a folder. A glob's every match must hold a
            number. A folder's files with a checkpoint suffix (.pt, .pth, .pt2, .ckpt) and a number
            in their name count, and of those only the ones named as a generator's when there
            are any (the tutorial's ``model.generation.epoch_N.pt``, DCGAN's ``netG_epoch_N.pth``).

    Raises:
        FaceganError: nothing matches, a matched file has no number in its name, or two files
            have one epoch.
    """
    root = Path(os.path.expanduser(pattern))
    if root.is_dir():
        candidates = [p for p in sorted(root.iterdir()) if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES]
        numbered = [p for p in candidates if epoch_of(p) is not None]
        if not numbered:
            raise FaceganError(f"--checkpoints {pattern}: no checkpoint files with an epoch number in their name "
                               f"({', '.join(CHECKPOINT_SUFFIXES)}) in this folder")
        generators = [p for p in numbered if _GENERATOR_NAME.search(p.name)]
        files = generators or numbered
        left = len(candidates) - len(files)
        if left:
            print(f"warning: --checkpoints {pattern}: reading {len(files)} files"
                  + (" named as a generator's" if generators else "")
                  + f", leaving out {left} other file{'s' if left > 1 else ''} (give a glob to choose)", file=sys.stderr)
    else:
        files = [Path(p) for p in sorted(glob.glob(os.path.expanduser(pattern), recursive=True)) if Path(p).is_file()]
        if not files:
            raise FaceganError(f"--checkpoints {pattern}: no such file or folder, and no file matches it as a glob")
        unnumbered = [p for p in files if epoch_of(p) is None]
        if unnumbered:
            raise FaceganError(f"--checkpoints {pattern}: {unnumbered[0]} has no number in its name, so no epoch; "
                               "the epoch is the last number in each file's name: give a glob that matches only "
                               "numbered checkpoints")
    by_epoch: dict[int, list[Path]] = {}
    for path in files:
        by_epoch.setdefault(epoch_of(path), []).append(path)
    for epoch, paths in sorted(by_epoch.items()):
        if len(paths) > 1:
            raise FaceganError(f"--checkpoints {pattern}: {len(paths)} files at epoch {epoch} "
                               f"({', '.join(p.name for p in paths[:3])}); give a glob that matches one file per "
                               "epoch, e.g. 'run/model.generation.epoch_*.pt'")
    return [CheckpointFile(epoch, paths[0]) for epoch, paths in sorted(by_epoch.items())]


# ----------------------------------------------------------------------------------------------
# How to run a generator of your own architecture


def parse_latent_shape(text: str) -> tuple[int, ...]:
    """``"128"`` -> ``(128,)``, ``"100x1x1"`` (or ``100,1,1``) -> ``(100, 1, 1)``; a clear error otherwise.

    Example:
        >>> parse_latent_shape("100x1x1")
        (100, 1, 1)
    """
    parts = [p.strip() for p in re.split(r"[x,]", str(text).strip().lower())]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise FaceganError(f"a latent shape is positive whole numbers, e.g. 128 or 100x1x1; got {text!r}")
    return tuple(int(p) for p in parts)


def parse_output_range(text: str) -> tuple[float, float]:
    """``"-1,1"`` -> ``(-1.0, 1.0)``, ``"0,1"`` -> ``(0.0, 1.0)``; a clear error otherwise.

    Example:
        >>> parse_output_range("0,1")
        (0.0, 1.0)
    """
    parts = str(text).split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise FaceganError(f"an output range is two numbers low,high, e.g. -1,1 or 0,1; got {text!r}") from None
    if not low < high:
        raise FaceganError(f"an output range needs low < high, e.g. -1,1 or 0,1; got {text!r}")
    return low, high


@dataclass(frozen=True)
class GeneratorSpec:
    """How to read and run generators that are not facegan-shaped state dicts.

    Attributes:
        factory: ``"module:function"``: imported (the working folder is importable, as with
            ``python -m``), called with no arguments for each checkpoint; it returns the
            ``nn.Module`` the checkpoint's state dict is loaded into (strictly; a ``module.``
            prefix that ``DataParallel`` adds is dropped). None: state dicts must be of a
            facegan-shaped architecture, and ``.pt2`` programs need no factory.
        latent_shape: one latent's shape, e.g. ``(100,)`` or DCGAN's ``(100, 1, 1)``: needed with
            a factory; a ``torch.export`` program states its own (given, it must agree).
        output_range: what the network's outputs span: ``(-1, 1)`` after a Tanh, ``(0, 1)`` after
            a sigmoid.
        transposed: the outputs are the tutorial's C x W x H; None: so for gzip-compressed files
            (the tutorial's), upright otherwise.

    Example (pytorch/examples' DCGAN, its ``Generator`` class copied into ``dcgan_generator.py``
    beside ``def make(): return Generator(ngpu=1)``; its ``main.py`` cannot be imported, since it
    starts training when it is):

        >>> spec = GeneratorSpec(factory="dcgan_generator:make", latent_shape=(100, 1, 1))
    """

    factory: str | None = None
    latent_shape: tuple[int, ...] | None = None
    output_range: tuple[float, float] = (-1.0, 1.0)
    transposed: bool | None = None

    def __post_init__(self):
        if self.factory is not None and not _FACTORY.match(self.factory):
            raise FaceganError(f"a factory is module:function (e.g. dcgan_generator:make), got {self.factory!r}")
        if self.factory is not None and self.latent_shape is None:
            raise FaceganError(f"factory {self.factory}: state the generator's latent shape too (e.g. 128, or "
                               "100x1x1 for DCGAN's netG)")
        if self.latent_shape is not None:
            object.__setattr__(self, "latent_shape", tuple(int(n) for n in self.latent_shape))
        object.__setattr__(self, "output_range", tuple(float(v) for v in self.output_range))


def _import_factory(factory: str) -> Callable[[], torch.nn.Module]:
    """The function ``module:function`` names, imported with the working folder importable."""
    module_name, _, function_name = factory.partition(":")
    here = os.getcwd()
    added = here not in sys.path and "" not in sys.path  # as `python -m` runs: a module beside the user is found
    if added:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise FaceganError(f"factory {factory}: cannot import {module_name} ({error_text(exc)}); run from the folder "
                           f"that holds {module_name.replace('.', '/')}.py, or put that folder on PYTHONPATH") from None
    except SystemExit:
        raise FaceganError(f"factory {factory}: importing {module_name} ran a program (it exited); put the generator "
                           "class and the factory function in a module that only defines them") from None
    except Exception as exc:  # noqa: BLE001 - whatever the user's module raises while it is imported
        raise FaceganError(f"factory {factory}: importing {module_name} failed: {error_text(exc, with_type=True)}") from None
    finally:
        if added and here in sys.path:
            sys.path.remove(here)
    function = getattr(module, function_name, None)
    if not callable(function):
        raise FaceganError(f"factory {factory}: {module_name} has no function {function_name}")
    return function


# ----------------------------------------------------------------------------------------------
# Reading one file


@dataclass
class ImportedGenerator:
    """A generator read from a checkpoint file, ready for the engine.

    Attributes:
        generator: eval mode, on the CPU, with ``latent_dim``, drawing upright images in [-1, 1]:
            a facegan :class:`~facegan.models.Generator` (facegan's checkpoints, facegan-shaped state
            dicts, the tutorial's converted) or an :class:`~evaluation.sources.AdaptedGenerator`.
        kind: what the file was, in words (``the tutorial's generator``, ``a torch.export program``, ...).
        path: the file.
        network: the facegan architecture it was rebuilt as, or None (your own architecture).
        payload: a facegan checkpoint's own contents (config, dataset, ...), else None.
    """

    generator: torch.nn.Module
    kind: str
    path: Path
    network: NetworkConfig | None = None
    payload: dict | None = field(default=None, repr=False)

    def facegan_checkpoint(self, epoch: int) -> dict:
        """A facegan generator checkpoint payload of these weights (:func:`facegan.checkpoint.save_checkpoint`
        writes it; ``facegan generate``/``serve`` and the pyfunc model read it), with where it came from.

        Raises:
            FaceganError: the generator is of the user's own architecture, which facegan cannot rebuild.
        """
        if self.payload is not None:
            return self.payload
        if self.network is None:
            raise FaceganError(f"{self.path} holds {self.kind}, which facegan cannot rebuild: only generators of "
                               "facegan's architectures (facegan's own, the tutorial's, DCGAN's netG) can become "
                               "facegan models")
        return {"kind": "generator", "epoch": int(epoch), "network": self.network.to_dict(),
                "generator": {k: v.clone() for k, v in self.generator.state_dict().items()},
                "imported_from": {"file": str(self.path), "kind": self.kind, "sha256": file_sha256(self.path)}}


def load_generator_file(path: str | Path, spec: GeneratorSpec | None = None) -> ImportedGenerator:
    """Read one generator checkpoint file (format told by its content; ``weights_only=True``).

    Raises:
        FaceganError: missing, damaged, holding Python objects beyond plain data, not a generator, a
            state dict of an architecture facegan does not know (and no factory given), or a
            factory or program that does not fit the file. One sentence naming the file.
    """
    path = Path(path)
    spec = spec or GeneratorSpec()
    if not path.is_file():
        raise FaceganError(f"checkpoint not found: {path}")
    found = network_file_format(path)
    if found == "export":
        return _exported(path, spec)
    if found == "torchscript":
        raise FaceganError(f"{path} is a TorchScript module; save your generator as a torch.export program (.pt2) "
                           "or its state dict instead")
    payload, gzipped = _read(path)
    transposed = gzipped if spec.transposed is None else spec.transposed
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        if payload.get("version") != VERSION:
            raise FaceganError(f"{path} has checkpoint version {payload.get('version')}; this facegan reads {VERSION}")
        generator = generator_from_checkpoint(payload, source=str(path))
        return ImportedGenerator(generator, "a facegan checkpoint", path, NetworkConfig(**payload["network"]), payload)
    if not (isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values())):
        raise FaceganError(f"{path} is not a generator checkpoint: it holds {_describe(payload)}, not a state dict "
                           "(names to tensors) nor a facegan checkpoint")
    if spec.factory is not None:
        return _from_factory(path, payload, spec, transposed)
    try:
        network, state = infer_network(payload)
    except _Unsupported as exc:
        raise FaceganError(f"{path} is a state dict of an architecture facegan cannot rebuild from its weights "
                           f"({exc}); for a generator of your own, give its factory (module:function returning the "
                           "network) and latent shape, or a torch.export program per checkpoint") from None
    generator = build_generator(network)
    if transposed:
        state = {k: v.transpose(2, 3).contiguous() if v.ndim == 4 else v for k, v in state.items()}
    generator.load_state_dict(state)
    kind = "the tutorial's generator" if gzipped and transposed else f"a {network.image_size}x{network.image_size} generator state dict"
    return ImportedGenerator(generator.eval(), kind, path, network)


def _read(path: Path) -> tuple[object, bool]:
    """``torch.load(weights_only=True)`` of a file, gunzipped first when it is gzip-compressed (the
    tutorial's ``save_tensor``); returns (contents, whether it was gzipped)."""
    with path.open("rb") as handle:
        gzipped = handle.read(2) == _GZIP_MAGIC
    if not gzipped:
        try:
            return torch.load(path, map_location="cpu", weights_only=True), False
        except Exception as exc:  # noqa: BLE001 - torch raises many types for truncated or foreign files
            raise FaceganError(f"{path} cannot be read: {torch_load_failure(path, exc)}") from None
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise FaceganError(f"{path} is a damaged gzip file ({error_text(exc)})") from None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), True
    except Exception as exc:  # noqa: BLE001 - as above
        raise FaceganError(f"{path} is gzip-compressed, but what it holds cannot be read: {_bytes_failure(data, exc)}") from None


def _bytes_failure(data: bytes, exc: BaseException) -> str:
    """:func:`facegan.common.torch_load_failure` for bytes in memory (a gunzipped file)."""
    if not data:
        return "it is empty"
    pickled = data.startswith((b"PK\x03\x04", b"\x80"))  # torch.save's zip, or a bare pickle
    if not pickled:
        return "it is not a PyTorch file"
    if isinstance(exc, pickle.UnpicklingError) and "weights_only" in str(exc):
        return "it holds Python objects besides tensors and plain data, which are refused (loading them could run code)"
    return f"it is damaged ({error_text(exc)})"


def _describe(payload: object) -> str:
    if isinstance(payload, dict):
        keys = list(payload)[:4]
        marker = f" with format {payload['format']!r}" if isinstance(payload.get("format"), str) else ""
        return f"a dict{marker} (keys {', '.join(map(repr, keys))}{', ...' if len(payload) > 4 else ''})"
    if isinstance(payload, torch.Tensor):
        return f"a tensor of shape {tuple(payload.shape)}"
    return f"a {type(payload).__name__}"


class _Unsupported(Exception):
    """Why a state dict is no facegan-shaped generator (the words go into a FaceganError)."""


def infer_network(state: dict[str, torch.Tensor]) -> tuple[NetworkConfig, dict[str, torch.Tensor]]:
    """The facegan generator a state dict is, from its shapes, and the state dict under facegan's names.

    The layers must be a ``Sequential``'s (``<module>.<index>.<name>``, one module name for all):
    transposed convolutions without bias at every third index (0, 3, 6, ...), each but the last
    followed by a BatchNorm2d (or by nothing that has weights), the first with a 4 x 4 or 5 x 5
    kernel from the latent, the last drawing 3 channels; the widths halving from layer to layer.

    Raises:
        _Unsupported: why not, in words.
    """
    layers: dict[int, dict[str, torch.Tensor]] = {}
    prefixes = set()
    for key, value in state.items():
        match = _LAYER_KEY.match(key)
        if match is None:
            raise _Unsupported(f"its key {key!r} is not a layer of a Sequential")
        prefixes.add(match["prefix"])
        layers.setdefault(int(match["index"]), {})[match["name"]] = value
    if len(prefixes) > 1:
        raise _Unsupported(f"its layers lie under {len(prefixes)} modules ({', '.join(sorted(p or '(top)' for p in prefixes)[:3])})")
    prefix = prefixes.pop()
    convs = sorted(i for i, params in layers.items() if params.get("weight") is not None and params["weight"].ndim == 4)
    if not convs:
        raise _Unsupported("it has no convolution weights")
    first, last = layers[convs[0]]["weight"], layers[convs[-1]]["weight"]
    if first.shape[1] == 3 and last.shape[0] == 1:
        raise _Unsupported("it looks like a discriminator's: its first layer takes 3-channel images")
    if convs != list(range(0, 3 * len(convs), 3)):
        raise _Unsupported(f"its convolutions are layers {convs[:6]}, not every third layer from 0 as in a "
                           "ConvTranspose2d, BatchNorm2d, ReLU stack")
    for i, params in layers.items():
        if i in convs:
            if set(params) != {"weight"}:
                raise _Unsupported(f"layer {i} has {', '.join(sorted(set(params) - {'weight'}))} beside its weight "
                                   "(facegan's convolutions have no bias)")
        elif i % 3 != 1 or i > convs[-1] or set(params) != _BATCHNORM_KEYS:
            raise _Unsupported(f"layer {i} ({', '.join(sorted(params))}) is neither a transposed convolution nor a "
                               "BatchNorm2d after one")
    norms = [i for i in layers if i not in convs]
    if norms and len(norms) != len(convs) - 1:
        raise _Unsupported("only some of its convolutions are followed by a BatchNorm2d")
    latent_dim, _, kernel_h, kernel_w = first.shape
    doublings = len(convs) - 1
    image_size = kernel_h * 2**doublings
    if kernel_h != kernel_w or kernel_h not in (4, 5) or image_size not in SUPPORTED_IMAGE_SIZES:
        sizes = ", ".join(map(str, SUPPORTED_IMAGE_SIZES))
        raise _Unsupported(f"a first kernel of {kernel_h}x{kernel_w} and {doublings} doublings make "
                           f"{image_size}-pixel images; facegan's generators draw {sizes}")
    if last.shape[1] != 3:
        raise _Unsupported(f"it draws {last.shape[1]}-channel images; facegan's generators draw 3 (RGB)")
    network = NetworkConfig(image_size=image_size, latent_dim=int(latent_dim), g_width=int(last.shape[0]),
                            g_norm="batch" if norms else "none")
    renamed = {f"net.{key[len(prefix):]}": value for key, value in state.items()}
    expected = {k: tuple(v.shape) for k, v in build_generator(network).state_dict().items()}
    wrong = [f"{k[4:]} is {tuple(renamed[k].shape)}, expected {shape}" for k, shape in expected.items()
             if k in renamed and tuple(renamed[k].shape) != shape]
    missing = sorted(set(expected) - set(renamed))
    if wrong or missing:
        raise _Unsupported("its layers' sizes do not halve as a DCGAN-style generator's do: "
                           + "; ".join(wrong[:2] + [f"no {k[4:]}" for k in missing[:2]]))
    return network, renamed


def _from_factory(path: Path, state: dict, spec: GeneratorSpec, transposed: bool) -> ImportedGenerator:
    network = _import_factory(spec.factory)()
    if not isinstance(network, torch.nn.Module):
        raise FaceganError(f"factory {spec.factory} returned a {type(network).__name__}, not a torch.nn.Module")
    try:
        _load_state(network, state)
    except RuntimeError as exc:
        raise FaceganError(f"{path} does not fit the network factory {spec.factory} returns: "
                           f"{_load_mismatch(exc)}") from None
    generator = AdaptedGenerator(network, spec.latent_shape, output_range=spec.output_range,
                                 transposed=transposed).eval()
    return ImportedGenerator(generator.check(str(path)), f"a state dict for {spec.factory}", path)


def _load_state(network: torch.nn.Module, state: dict) -> None:
    try:
        network.load_state_dict(state)
    except RuntimeError:
        # A state dict saved from a DataParallel/DistributedDataParallel wrapper has every key under "module.".
        if state and all(k.startswith("module.") for k in state):
            network.load_state_dict({k[len("module."):]: v for k, v in state.items()})
        else:
            raise


def _load_mismatch(exc: RuntimeError) -> str:
    """load_state_dict's error, as one line: its first two complaints."""
    lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
    text = " ".join(lines) or error_text(exc)
    return text if len(text) < 300 else text[:297] + "..."


class _ExportedNetwork(torch.nn.Module):
    """A torch.export program as a module. Its mode was fixed when it was exported, and its graph
    may hold device constants, so it is moved with torch.export's own pass to the device of the
    latents it is given. Its modules are not submodules: a wrapper's ``train()`` (which an exported
    module refuses) and ``to()`` pass them by."""

    def __init__(self, program: torch.export.ExportedProgram):
        super().__init__()
        self._program = program
        self._by_device: dict[torch.device, torch.nn.Module] = {}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        module = self._by_device.get(z.device)
        if module is None:
            program = self._program
            if z.device.type != "cpu":
                from torch.export.passes import move_to_device_pass

                program = move_to_device_pass(program, z.device)
            module = self._by_device[z.device] = program.module()
        return module(z)


def _exported(path: Path, spec: GeneratorSpec) -> ImportedGenerator:
    program, _ = ExportedProgramExtractor.load_program(path)
    shape = ExportedProgramExtractor.input_shape(program)
    if shape is None:
        raise FaceganError(f"{path}: the program must take one tensor, the latents")
    if isinstance(shape[0], int):
        raise FaceganError(f"{path}: the program takes a fixed batch of {shape[0]} latents; export it with a dynamic "
                           "batch dimension: torch.export.export(generator, (z,), dynamic_shapes=({0: "
                           "torch.export.Dim('batch', min=1)},))")
    latent_shape = tuple(shape[1:])
    if not latent_shape or not all(isinstance(n, int) for n in latent_shape):
        raise FaceganError(f"{path}: the program's latent shape {latent_shape} is not fixed")
    if spec.latent_shape is not None and spec.latent_shape != latent_shape:
        raise FaceganError(f"{path}: the program takes latents of shape {'x'.join(map(str, latent_shape))}, "
                           f"not the {'x'.join(map(str, spec.latent_shape))} stated")
    generator = AdaptedGenerator(_ExportedNetwork(program), latent_shape, output_range=spec.output_range,
                                 transposed=bool(spec.transposed)).eval()
    return ImportedGenerator(generator.check(str(path)), "a torch.export program", path)


# ----------------------------------------------------------------------------------------------
# The engine's checkpoints


def checkpoint_sources(pattern: str, spec: GeneratorSpec | None = None) -> list[LoadingCheckpoint]:
    """The engine's checkpoints for the files ``pattern`` names (:func:`find_checkpoint_files`),
    each read only when it is scored.

    The first file is read now, so a pattern of foreign files, a bad factory or a wrong latent
    shape is one error before any scoring; a later file that cannot be read is reported and
    skipped by the engine, as a damaged checkpoint of a run is.

    Raises:
        FaceganError: as :func:`find_checkpoint_files`, and as :func:`load_generator_file` for the first file.
    """
    spec = spec or GeneratorSpec()
    files = find_checkpoint_files(pattern)
    load_generator_file(files[0].path, spec)
    return [LoadingCheckpoint(f.epoch, str(f.path), partial(_engine_generator, f.path, spec)) for f in files]


def _engine_generator(path: Path, spec: GeneratorSpec) -> torch.nn.Module:
    return load_generator_file(path, spec).generator


# ----------------------------------------------------------------------------------------------
# The tutorial's data/ folder


def is_tutorial_data(folder: str | Path) -> bool:
    """Whether ``folder`` is the tutorial's prepared data: batches ``0.pt``, ``1.pt``, ... ."""
    return (Path(folder) / "0.pt").is_file()


def load_tutorial_data(folder: str | Path, *, transposed: bool = True) -> Dataset:
    """The tutorial's ``data/`` folder as a dataset: its batches ``0.pt``, ``1.pt``, ... (gzip-compressed
    float tensors N x 3 x W x H in [-1, 1]; plain ``torch.save`` files too), read up to the first
    missing number as the tutorial's ``read_batches`` does, made upright (``transposed=False`` for
    batches already C x H x W) and uint8 (:func:`facegan.common.to_uint8`).

    Raises:
        FaceganError: no ``0.pt``, a batch that cannot be read, is not a float tensor N x 3 x S x S,
            or holds values outside [-1, 1].
    """
    folder = Path(folder)
    paths = []
    while (folder / f"{len(paths)}.pt").is_file():
        paths.append(folder / f"{len(paths)}.pt")
    if not paths:
        raise FaceganError(f"{folder} holds no 0.pt: it is not the tutorial's data folder (batches 0.pt, 1.pt, ...)")
    batches = []
    for path in paths:
        tensor, _ = _read(path)
        if not (isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.ndim == 4
                and tensor.shape[1] == 3 and tensor.shape[2] == tensor.shape[3] and tensor.shape[0] > 0):
            raise FaceganError(f"{path} holds {_describe(tensor) if not isinstance(tensor, torch.Tensor) else f'a {tensor.dtype} tensor of shape {tuple(tensor.shape)}'}; "
                               "the tutorial's batches are float tensors N x 3 x S x S")
        low, high = float(tensor.min()), float(tensor.max())
        if low < -1.001 or high > 1.001:  # float rounding of (x / 255) * 2 - 1 stays far inside this
            raise FaceganError(f"{path} holds values from {low:.3g} to {high:.3g}; the tutorial's batches are in [-1, 1]")
        batches.append(to_uint8(tensor.transpose(-1, -2) if transposed else tensor))
    ignored = sorted(p.name for p in folder.glob("*.pt") if p not in paths and p.stem.isdigit())
    if ignored:
        print(f"warning: {folder}: read batches 0.pt to {len(paths) - 1}.pt; {', '.join(ignored[:3])} "
              "lie beyond a missing number and are left out, as the tutorial's training leaves them", file=sys.stderr)
    images = torch.cat(batches)
    manifest = make_manifest(images, str(folder), {"layout": "the tutorial's batches" + (" (C x W x H)" if transposed else "")},
                             source_files=[str(p) for p in paths])
    return Dataset(images, manifest)


__all__ = [
    "CheckpointFile", "GeneratorSpec", "ImportedGenerator", "checkpoint_sources", "epoch_of", "find_checkpoint_files",
    "infer_network", "is_tutorial_data", "load_generator_file", "load_tutorial_data", "parse_latent_shape",
    "parse_output_range",
]
