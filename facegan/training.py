"""The training loop: schedules, D and G steps, sampling, checkpoint cadence, resume.

``facegan train`` builds a :class:`~facegan.config.Config`, loads the data once and calls
:func:`train`. One minibatch is one step of D or of G; which one is decided by the schedule:

- ``adaptive`` (the tutorial's balance): D and G are scored on the minibatch; D is trained when
  ``accuracy_g / 2 >= accuracy_d`` and then for ``n_critic - 1`` more minibatches, else G is.
- ``fixed``: ``n_critic`` D steps, then one G step.

No work is wasted: when a D step is known in advance the fake batch is generated without a graph,
G steps skip D's weight gradients, and a D step decided after scoring skips G's gradients.
"""

from __future__ import annotations

import inspect
import math
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from facegan.checkpoint import GENERATOR_FILE, generator_from_checkpoint, load_checkpoint, save_checkpoint
from facegan.common import enlarge_grid, error_text, images_to_grid, select_device
from facegan.config import CAPTURED, Config, TrainConfig
from facegan.dataset import Dataset
from facegan import distributed
from facegan.distributed import Processes
from facegan.errors import FaceganError
from facegan.losses import Objective, make_objective
from facegan.models import build_discriminator, build_generator
from facegan.run_tracker import STOP_REASON_TAG, STOPPED_EPOCH_TAG, STOPPED_TAG, checkpoint_name
from facegan.step_graphs import CaptureFailed, StepGraphs, conditional_nodes_missing, use_captured_steps

if TYPE_CHECKING:  # the loop only talks to the tracker interface; mlflow stays out of its imports
    from facegan.run_tracker import RunTracker

SAMPLE_KEY = "samples"


def make_optimizer(params, cfg: TrainConfig, lr: float, device: torch.device) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        # The fused CUDA kernel updates every tensor in one launch; small GANs are launch-bound.
        return torch.optim.Adam(params, lr=lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")
    return torch.optim.RMSprop(params, lr=lr)


def fixed_latents(num: int, latent_dim: int, seed: int) -> torch.Tensor:
    """The latents of the sample grid: the same on every device and in every resumed run."""
    return torch.randn(num, latent_dim, generator=torch.Generator().manual_seed(seed + 1_000_003))


def _state_copy(module_or_opt) -> dict:
    """A detached copy of a state_dict on its own device (a live state_dict aliases the training
    tensors). Taken every epoch for Ctrl-C, so it stays on the GPU: a device copy costs
    microseconds, a host copy a noticeable share of a short epoch. Files load with
    ``map_location="cpu"``, so where the tensors lived does not matter to readers.

    Strides are kept: optimiser moments must keep their parameters' (channels-last) layout, which
    the fused CUDA Adam checks on resume.
    """

    def copy(value):
        if isinstance(value, torch.Tensor):
            return value.detach().clone()
        if isinstance(value, dict):
            return {k: copy(v) for k, v in value.items()}
        if isinstance(value, list):
            return [copy(v) for v in value]
        return value

    return copy(module_or_opt.state_dict())


@dataclass
class EpochTotals:
    """Sums over one epoch's minibatches; tensors stay on the device until the epoch ends.

    The eager step adds to it as it trains (:meth:`add_scores`, :meth:`add_d_step`,
    :meth:`add_g_step`); the captured step (:mod:`facegan.step_graphs`) keeps its own sums on the
    device and hands over one of these, read once, at the end of the epoch.
    """

    loss_d: torch.Tensor | float = 0.0
    loss_g: torch.Tensor | float = 0.0
    penalty: torch.Tensor | float = 0.0
    penalty_steps: int = 0  # D steps that computed the penalty (all of them unless train.gp_every > 1)
    accuracy_g: torch.Tensor | float = 0.0
    accuracy_d: torch.Tensor | float = 0.0
    d_steps: int = 0
    g_steps: int = 0
    scored: int = 0  # minibatches whose accuracies were measured
    images: int = 0

    def add_scores(self, accuracy_g: torch.Tensor, accuracy_d: torch.Tensor) -> None:
        self.accuracy_g = self.accuracy_g + accuracy_g
        self.accuracy_d = self.accuracy_d + accuracy_d
        self.scored += 1

    def add_d_step(self, loss: torch.Tensor, penalty: torch.Tensor | None) -> None:
        if penalty is not None:
            self.penalty = self.penalty + penalty
            self.penalty_steps += 1
        self.loss_d = self.loss_d + loss
        self.d_steps += 1

    def add_g_step(self, loss: torch.Tensor) -> None:
        self.loss_g = self.loss_g + loss
        self.g_steps += 1

    def metrics(self, seconds: float) -> dict[str, float]:
        def mean(total, count):
            return float(total) / count if count else float("nan")

        out = {
            "loss_d": mean(self.loss_d, self.d_steps),
            "loss_g": mean(self.loss_g, self.g_steps),
            "accuracy_g": mean(self.accuracy_g, self.scored),
            "accuracy_d": mean(self.accuracy_d, self.scored),
            "d_steps": float(self.d_steps),
            "g_steps": float(self.g_steps),
            "images_per_s": self.images / seconds if seconds > 0 else float("nan"),
            "epoch_seconds": seconds,
            # nan (dropped below) when no step computed it: other objectives, or a lazy penalty's off-steps
            "gradient_penalty": mean(self.penalty, self.penalty_steps),
        }
        # MLflow rejects NaN in some stores and charts break on it: drop what was not measured.
        return {k: v for k, v in out.items() if not math.isnan(v)}


@dataclass
class Schedule:
    """Which network the next minibatch trains; its state is part of the resume state."""

    kind: str
    n_critic: int
    gp_every: int = 1  # the penalty on every gp_every-th D step (lazy regularisation)
    d_streak: int = 0  # adaptive: D minibatches still owed after a switch to D
    cycle: int = 0  # fixed: position in the n_critic D steps + 1 G step cycle
    penalty_phase: int = 0  # D steps since the last one with the penalty, modulo gp_every

    def forced(self) -> str | None:
        """"d" or "g" when the next step is known before scoring the minibatch, else None."""
        if self.kind == "fixed":
            return "d" if self.cycle < self.n_critic else "g"
        return "d" if self.d_streak > 0 else None

    def penalty_due(self) -> bool:
        """Whether the D step about to run adds the penalty (always when gp_every is 1)."""
        return self.penalty_phase == 0

    def penalty_scale(self) -> float:
        """What the next D step's penalty is multiplied by: ``gp_every`` when it is due, else 0 (none)."""
        return float(self.gp_every) if self.penalty_due() else 0.0

    def done(self, trained: str, *, switched_to_d: bool = False) -> None:
        if trained == "d":
            self.penalty_phase = (self.penalty_phase + 1) % self.gp_every
        if self.kind == "fixed":
            self.cycle = (self.cycle + 1) % (self.n_critic + 1)
        elif switched_to_d:
            self.d_streak = self.n_critic - 1
        elif trained == "d":
            self.d_streak -= 1

    def state(self) -> dict:
        return {"d_streak": self.d_streak, "cycle": self.cycle, "penalty_phase": self.penalty_phase}

    def restore(self, state: dict) -> None:
        self.d_streak, self.cycle = state["d_streak"], state["cycle"]
        self.penalty_phase = state.get("penalty_phase", 0) % self.gp_every  # absent before train.gp_every


class Totals(Protocol):
    """Where a step books what it did: :class:`EpochTotals`, or the captured step's sums on the device."""

    def add_scores(self, accuracy_g: torch.Tensor, accuracy_d: torch.Tensor) -> None: ...
    def add_d_step(self, loss: torch.Tensor, penalty: torch.Tensor | None) -> None: ...
    def add_g_step(self, loss: torch.Tensor) -> None: ...


class DrawnNoise:
    """The step's random inputs drawn from the device's default generator at the moment the step
    asks for them: the latents of each minibatch's fakes, and the penalty's mixing weights on the D
    steps that compute it. The stream of draws is what every facegan version before the captured
    step drew (one process is reproducible from ``train.seed``)."""

    def latents(self, n: int, latent_dim: int, device: torch.device) -> torch.Tensor:
        return torch.randn(n, latent_dim, device=device)

    def mix_weights(self, real: torch.Tensor) -> torch.Tensor:
        """``a ~ U[0, 1]`` per sample, N x 1 x 1 x 1 (see :func:`facegan.losses.gradient_penalty`)."""
        return torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)


DRAWN = DrawnNoise()


@dataclass
class GAN:
    """Both networks, their optimisers and the objective: everything a step touches.

    ``generator`` and ``discriminator`` are the networks themselves (their weights are what is
    checkpointed and sampled); the steps call them through ``g_forward`` and ``d_forward``, which
    are the same modules on one process and their DistributedDataParallel wrappers on several, so
    that every gradient a step computes is averaged over the ranks before the optimiser uses it.

    :meth:`step` trains one minibatch eagerly, deciding on the host. Its parts (:meth:`forced_d`,
    :meth:`forced_g`, :meth:`d_update`, :meth:`g_update`) are also what
    :class:`facegan.step_graphs.StepGraphs` captures as CUDA graphs.
    """

    generator: nn.Module
    discriminator: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    objective: Objective
    latent_dim: int
    autocast: object = field(default_factory=lambda: nullcontext)
    memory_format: torch.memory_format = torch.contiguous_format
    g_forward: nn.Module | None = None
    d_forward: nn.Module | None = None
    processes: Processes = field(default_factory=Processes)

    def __post_init__(self):
        self.g_params = list(self.generator.parameters())
        self.d_params = list(self.discriminator.parameters())
        self.g_forward = self.g_forward or self.generator
        self.d_forward = self.d_forward or self.discriminator

    def generate(self, n: int, device, noise: DrawnNoise = DRAWN) -> torch.Tensor:
        """``n`` fakes from fresh latents (with G's graph unless called under ``torch.no_grad``)."""
        z = noise.latents(n, self.latent_dim, device)
        with self.autocast():
            fake = self.g_forward(z)
        # float32 like the real images: the penalty mixes both, and D's autocast casts anyway.
        return fake.float().contiguous(memory_format=self.memory_format)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """D's raw scores (float32)."""
        with self.autocast():
            return self.d_forward(images).float()

    def record_scores(self, scores_real, scores_fake, totals: Totals) -> tuple[torch.Tensor, torch.Tensor]:
        """The tutorial's two accuracies of this minibatch, booked in ``totals``; ``(acc_g, acc_d)``."""
        acc_g, acc_d = self.objective.accuracies(scores_real.detach(), scores_fake.detach())
        totals.add_scores(acc_g, acc_d)
        return acc_g, acc_d

    def d_update(self, real, fake, scores_real, scores_fake, totals: Totals, *, graph_into_g: bool,
                 penalty_scale: float = 1.0, noise: DrawnNoise = DRAWN) -> None:
        """One critic update. ``penalty_scale`` > 0 adds the gradient penalty times that factor
        (``train.gp_every`` on the D steps that carry the lazy penalty, so that it weighs as much
        as a penalty on every step); 0 leaves it out."""
        loss = self.objective.d_loss(scores_real, scores_fake)
        penalty = None
        if self.objective.needs_penalty and penalty_scale > 0:
            alpha = noise.mix_weights(real)
            with self.autocast():
                penalty = self.objective.penalty(self.d_forward, real, fake.detach(), alpha=alpha).float()
            loss = loss + (penalty * penalty_scale if penalty_scale != 1 else penalty)
        self.opt_d.zero_grad(set_to_none=True)
        # When the fakes still hang on G's graph, restrict backward to D's weights: G's
        # gradients would be computed only to be thrown away.
        loss.backward(inputs=self.d_params if graph_into_g else None)
        self.opt_d.step()
        self.objective.after_d_step(self.discriminator)
        totals.add_d_step(loss.detach(), None if penalty is None else penalty.detach())

    def g_update(self, scores_fake, totals: Totals) -> None:
        """One generator update from D's scores of fakes that hang on G's graph."""
        loss = self.objective.g_loss(scores_fake)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward(inputs=self.g_params)
        self.opt_g.step()
        totals.add_g_step(loss.detach())

    def forced_d(self, real, totals: Totals, *, penalty_scale: float, noise: DrawnNoise = DRAWN) -> None:
        """A D step known in advance: the fakes are made without G's graph."""
        with torch.no_grad():
            fake = self.generate(real.shape[0], real.device, noise)
        scores_real, scores_fake = self.score(real), self.score(fake)
        self.record_scores(scores_real, scores_fake, totals)
        self.d_update(real, fake, scores_real, scores_fake, totals, graph_into_g=False,
                      penalty_scale=penalty_scale, noise=noise)

    def forced_g(self, n: int, device, totals: Totals, *, noise: DrawnNoise = DRAWN) -> None:
        """A G step known in advance: D scores the fakes without computing its own weight gradients."""
        self.discriminator.requires_grad_(False)
        try:
            self.g_update(self.score(self.generate(n, device, noise)), totals)
        finally:
            self.discriminator.requires_grad_(True)

    def step(self, real: torch.Tensor, schedule: Schedule, totals: EpochTotals, noise: DrawnNoise = DRAWN) -> None:
        """Train D or G on one minibatch of real images (float, [-1, 1], on the device); on several
        processes, ``real`` is this rank's part of the minibatch."""
        n = real.shape[0]  # a short last minibatch gets as many fakes as it has reals
        totals.images += n
        forced = schedule.forced()
        penalty_scale = schedule.penalty_scale()
        if forced == "d":
            self.forced_d(real, totals, penalty_scale=penalty_scale, noise=noise)
            schedule.done("d")
        elif forced == "g":
            self.forced_g(n, real.device, totals, noise=noise)
            schedule.done("g")
        else:  # adaptive: score first, then decide (the tutorial's rule)
            fake = self.generate(n, real.device, noise)
            scores_real, scores_fake = self.score(real), self.score(fake)
            accuracies = torch.stack(self.record_scores(scores_real, scores_fake, totals))
            if self.processes.distributed:
                # Every rank takes the same decision, from the accuracies over the whole minibatch
                # (this rank's share of it times the world size is the minibatch).
                accuracies = distributed.sum_over_ranks(accuracies.float(), self.processes) / self.processes.world_size
            acc_g, acc_d = accuracies.tolist()  # one host sync for both
            if acc_g / 2 >= acc_d:
                self.d_update(real, fake, scores_real, scores_fake, totals, graph_into_g=True,
                              penalty_scale=penalty_scale, noise=noise)
                schedule.done("d", switched_to_d=True)
            else:
                self.g_update(scores_fake, totals)
                schedule.done("g")


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 convolutions natively here (AVX512-BF16 or AMX): only then does
    bf16 autocast pay off on the CPU (``experiments/bench_train.py`` measures it; figures in
    ``experiments/RESULTS.md``)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def _data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` wrapped so that its gradients are averaged over the ranks in every backward.

    Buffers (BatchNorm's running statistics) are not broadcast at every forward: each rank keeps
    its own, rank 0's are the ones checkpointed, and no forward becomes a collective that every
    rank would have to reach (only rank 0 draws the sample grid).
    """
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # torch 2.14 renamed broadcast_buffers (buffers are still made equal once, at the start).
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else {"broadcast_buffers": False})
    return DistributedDataParallel(module, device_ids=ids, output_device=device.index if ids else None, **no_sync)


def check_device_options(cfg: Config, device: torch.device) -> None:
    """Refuse the options this device cannot run, before a run is started for them."""
    if cfg.train.bf16 and device.type == "cpu" and not cpu_has_native_bf16():
        raise FaceganError("train.bf16 on the CPU needs native bf16 instructions (AVX512-BF16 or AMX), "
                           "which this CPU lacks; without them bf16 autocast is slower, not faster")
    if cfg.train.sync_batchnorm and device.type != "cuda":
        raise FaceganError("train.sync_batchnorm needs CUDA: PyTorch's SyncBatchNorm has no CPU implementation; "
                           "train on GPUs or leave it off (each rank then normalises its own part of the minibatch)")
    # An explicit train.compile = cuda-graphs that cannot be honoured here is an error now, not a surprise later.
    use_captured_steps(cfg.train.compile, device, distributed=cfg.train.world_size > 1)


def training_device(cfg: Config, processes: Processes | None = None) -> torch.device:
    """The device this process trains on, with the config's device-bound options checked."""
    device = select_device((processes or Processes()).device_name(cfg.train.device))
    check_device_options(cfg, device)
    return device


def build_gan(cfg: Config, device: torch.device, processes: Processes | None = None) -> GAN:
    """Both networks, their optimisers and the objective on ``device``; on several processes,
    each network wrapped in its own DistributedDataParallel (their parameters start from rank 0's)."""
    t = cfg.train
    processes = processes or Processes()
    net = cfg.model.network()
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    generator = build_generator(net)
    discriminator = build_discriminator(net)
    check_device_options(cfg, device)
    if t.sync_batchnorm and processes.distributed:  # one process: BatchNorm already sees the whole minibatch
        generator = nn.SyncBatchNorm.convert_sync_batchnorm(generator)
        discriminator = nn.SyncBatchNorm.convert_sync_batchnorm(discriminator)
    generator = generator.to(device=device, memory_format=memory_format)
    discriminator = discriminator.to(device=device, memory_format=memory_format)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if t.bf16 else nullcontext()

    return GAN(
        generator=generator,
        discriminator=discriminator,
        opt_g=make_optimizer(generator.parameters(), t, t.lr_g, device),
        opt_d=make_optimizer(discriminator.parameters(), t, t.lr_d, device),
        objective=make_objective(t.loss, gp_weight=t.gp_weight, clip_value=t.clip_value),
        latent_dim=net.latent_dim,
        autocast=autocast,
        memory_format=memory_format,
        g_forward=_data_parallel(generator, device) if processes.distributed else None,
        d_forward=_data_parallel(discriminator, device) if processes.distributed else None,
        processes=processes,
    )


def _place_dataset(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images on the training device when they fit comfortably, else pinned host memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if images.nbytes < free // 4:
            return images.to(device)
        return images.pin_memory()
    return images


@contextmanager
def _no_interrupts():
    """Hold Ctrl-C while a resume state is written, so a second Ctrl-C cannot truncate it."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _StopRequest:
    """Ctrl-C during training: the first one asks the loop to stop after the current minibatch.

    Stopping there, not wherever the signal lands, keeps an MLflow (sqlite) write from being cut
    in half; a second Ctrl-C interrupts at once, as usual.
    """

    def __init__(self, processes: Processes | None = None, device: torch.device | None = None):
        self.requested = False
        self._previous = None
        self._previous_term = None
        self.processes = processes or Processes()
        self.device = device or torch.device("cpu")

    def __enter__(self) -> "_StopRequest":
        try:
            self._previous = signal.signal(signal.SIGINT, self._on_signal)
            if self.processes.distributed:
                # torchrun passes Ctrl-C on as SIGINT, and SIGTERM to the survivors of a rank that
                # died: both become a request that every rank honours at the same minibatch.
                self._previous_term = signal.signal(signal.SIGTERM, self._on_signal)
        except ValueError:  # not the main thread: no handler, KeyboardInterrupt as usual
            self._previous = None
        return self

    def _on_signal(self, signum, frame):
        first = not self.requested
        self.requested = True
        if not self.processes.distributed:
            signal.signal(signal.SIGINT, self._previous)  # the next Ctrl-C is immediate
            print("\nstopping after this minibatch (Ctrl-C again to stop at once)...", file=sys.stderr)
        elif first and self.processes.is_main:
            # Several processes stop together or not at all (a rank stopping alone would leave the
            # others waiting in a collective), so later signals are not "stop at once" here.
            print("\nstopping all training processes after this minibatch...", file=sys.stderr)

    def check(self) -> None:
        """Raise KeyboardInterrupt once a stop was requested (on any rank, when there are several:
        a collective, so every rank calls it at the same point)."""
        if distributed.any_rank(self.requested, self.processes, self.device):
            raise KeyboardInterrupt

    def check_here(self) -> None:
        """Raise KeyboardInterrupt once this process was asked to stop (no collective: for work
        that rank 0 does alone, such as scoring a checkpoint)."""
        if self.requested:
            raise KeyboardInterrupt

    def __exit__(self, exc_type, exc, tb):
        if self._previous is not None and signal.getsignal(signal.SIGINT) == self._on_signal:
            signal.signal(signal.SIGINT, self._previous)
        if self._previous_term is not None and signal.getsignal(signal.SIGTERM) == self._on_signal:
            # Leaving on an error (another rank died, so torchrun is about to send SIGTERM): let
            # this process record the failure and say why before it exits, instead of dying mid-way.
            signal.signal(signal.SIGTERM, signal.SIG_IGN if exc_type is not None else self._previous_term)
        return False


class CheckpointHook(Protocol):
    """What the loop hands every generator checkpoint to, right after writing it.

    ``facegan train --evaluate`` passes :class:`evaluation.online.TrainingJudge`; the loop knows
    nothing else of scoring.
    """

    def checkpoint_written(self, epoch: int, generator: nn.Module, *, label: str, model_id: str | None,
                           interrupt: Callable[[], None]) -> tuple[str, str] | None:
        """Judge the checkpoint; ``(kind, reason)`` to stop training after it, else None.

        ``interrupt`` raises KeyboardInterrupt once Ctrl-C was pressed: call it between pieces of
        work so that a long scoring stops as promptly as a minibatch does.
        """

    def status(self) -> dict[str, str]:
        """Short figures for the progress bar (latest FID, diversity, best epoch)."""

    def finish(self) -> str | None:
        """Training ended (all epochs, or stopped early): record the result; returns what was registered."""


class Trainer:
    """Runs (or resumes) one training run and logs it through a tracker."""

    def __init__(self, cfg: Config, dataset: Dataset, tracker: RunTracker, *, progress: bool = True,
                 judge: CheckpointHook | None = None, processes: Processes | None = None):
        """On several processes (``processes`` from torchrun), every rank builds a Trainer with the
        same config and data; only rank 0's ``tracker`` and ``judge`` are used."""
        self.cfg, self.dataset, self.tracker = cfg, dataset, tracker
        self.processes = processes = processes or Processes()
        self.progress = progress and processes.is_main
        self.judge = judge if processes.is_main else None
        self.stopped: tuple[str, str] | None = None  # (kind, reason) when the judge stopped training
        if cfg.train.world_size != processes.world_size:
            raise FaceganError(f"train.world_size is {cfg.train.world_size} but {processes.world_size} "
                               "training process(es) are running")
        self.device = training_device(cfg, processes)
        if dataset.images.shape[-1] != cfg.model.image_size:
            raise FaceganError(
                f"the data is {dataset.images.shape[-1]}x{dataset.images.shape[-1]} but model.image_size is "
                f"{cfg.model.image_size}; prepare the data at that size or set --image-size"
            )
        self.data_digest = dataset.digest  # a sha256 over the whole tensor: compute it once
        if len(set(distributed.gather_to_all(self.data_digest, processes))) > 1:
            raise FaceganError("the training processes loaded different data (their dataset digests differ); "
                               "give every machine the same --data file")
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
        self.gan = build_gan(cfg, self.device, processes)
        if processes.rank > 0:  # each rank its own latents and penalty points
            torch.manual_seed(processes.seed(cfg.train.seed))
        self.schedule = Schedule(cfg.train.schedule, cfg.train.n_critic, cfg.train.gp_every)
        # The same order on every rank: each takes its own slice of every minibatch.
        self.shuffle_rng = torch.Generator().manual_seed(cfg.train.seed)
        self.latents = fixed_latents(cfg.tracking.num_samples, self.gan.latent_dim, cfg.train.seed).to(self.device)
        self.images = _place_dataset(dataset.images, self.device)
        # train.compile: the step captured as CUDA graphs (None: the eager step, GAN.step).
        self.step_graphs: StepGraphs | None = None
        if use_captured_steps(cfg.train.compile, self.device, distributed=processes.distributed):
            # The adaptive schedule is decided on the GPU where CUDA graph conditional nodes exist,
            # else by the host between graphs (one small sync per decided minibatch).
            decide_on = "device" if conditional_nodes_missing() is None else "host"
            self.step_graphs = self._step_graphs(decide_on)
        self.epoch = 0
        self.snapshot: dict | None = None
        # On resume: steps logged before an interruption are not logged again.
        self.logged_metric_steps: set[int] = set()
        self.logged_image_steps: set[int] = set()
        self.logged_checkpoints: set[int] = set()

    def _step_graphs(self, decide_on: str) -> StepGraphs:
        t = self.cfg.train
        return StepGraphs(self.gan, t.schedule, t.n_critic, t.gp_every, tuple(self.dataset.images.shape[1:]),
                          self.device, capture=True, decide_on=decide_on)

    # -- state --------------------------------------------------------------------------------

    def dataset_info(self) -> dict:
        manifest = self.dataset.manifest
        return {
            "name": f"facegan-{Path(str(manifest.get('source', 'data'))).stem}-{self.data_digest[:8]}",
            "digest": self.data_digest,
            "source": manifest.get("source", self.cfg.data.source),
            "shape": list(self.dataset.images.shape),
        }

    def _common(self) -> dict:
        return {
            "epoch": self.epoch,
            "network": self.cfg.model.network().to_dict(),
            "config": self.cfg.to_dict(),
            "dataset": {"digest": self.data_digest, "source": self.cfg.data.source,
                        "num_images": int(self.dataset.images.shape[0]), "image_size": self.cfg.model.image_size},
        }

    def _rng_state(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def resume_payload(self) -> dict | None:
        """Everything needed to continue training (rank 0's; None on the other ranks, which hand
        their random states to rank 0 for it)."""
        states = distributed.gather_to_all(self._rng_state(), self.processes)
        if not self.processes.is_main:
            return None
        rng = {**states[0], "shuffle": self.shuffle_rng.get_state()}
        if self.processes.distributed:
            rng["ranks"] = states  # rank r continues from states[r]
        return {
            **self._common(),
            "kind": "resume",
            "generator": _state_copy(self.gan.generator),
            "discriminator": _state_copy(self.gan.discriminator),
            "optimizer_g": _state_copy(self.gan.opt_g),
            "optimizer_d": _state_copy(self.gan.opt_d),
            "rng": rng,
            "schedule": self.schedule.state(),
        }

    def restore(self, payload: dict) -> None:
        if payload["dataset"]["digest"] != self.data_digest:
            raise FaceganError(
                "the data differs from the data this run was trained on (digest "
                f"{self.data_digest[:12]} vs {payload['dataset']['digest'][:12]}); resume with the same --data"
            )
        try:
            self.gan.generator.load_state_dict(payload["generator"])
            self.gan.discriminator.load_state_dict(payload["discriminator"])
            self.gan.opt_g.load_state_dict(payload["optimizer_g"])
            self.gan.opt_d.load_state_dict(payload["optimizer_d"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise FaceganError(f"the resume state does not fit this run's networks: {error_text(exc)}") from None
        rng = payload["rng"]
        ranks = rng.get("ranks", [rng])
        if len(ranks) != self.processes.world_size:
            raise FaceganError(f"this run was trained on {len(ranks)} process(es); resume it on as many "
                               f"(it has {self.processes.world_size})")
        own = ranks[self.processes.rank]
        torch.set_rng_state(own["torch"])
        self.shuffle_rng.set_state(rng["shuffle"])
        if "cuda" in own and self.device.type == "cuda":
            torch.cuda.set_rng_state(own["cuda"], self.device)
        self.schedule.restore(payload["schedule"])
        if self.step_graphs is not None:  # the optimisers' state tensors were replaced: capture again
            self.step_graphs.reset()
        self.epoch = int(payload["epoch"])
        self.snapshot = payload if self.processes.is_main else None

    def note_logged_steps(self) -> None:
        """On resume: steps logged before the interruption are not logged a second time."""
        self.logged_metric_steps = self.tracker.logged_metric_steps("d_steps")  # logged every epoch
        self.logged_image_steps = self.tracker.logged_image_steps(SAMPLE_KEY)
        self.logged_checkpoints = self.tracker.checkpoint_epochs()

    # -- logging ------------------------------------------------------------------------------

    def _log_samples(self, epoch: int) -> None:
        if epoch in self.logged_image_steps or not self.processes.is_main:
            return
        g = self.gan.generator
        g.eval()
        with torch.no_grad():
            images = g(self.latents)
        g.train()
        # MLflow shows the grid at its own size: small faces are enlarged so that they are visible.
        self.tracker.log_image(SAMPLE_KEY, enlarge_grid(images_to_grid(images)), epoch)

    def _log_checkpoint(self, epoch: int) -> tuple[str | None, dict] | None:
        """Write the generator checkpoint; ``(model id, payload)``, or None when it was logged before."""
        if epoch in self.logged_checkpoints or not self.processes.is_main:
            return None
        # CPU tensors: a checkpoint is a file people move between machines.
        weights = {name: t.detach().cpu() for name, t in self.gan.generator.state_dict().items()}
        payload = {**self._common(), "kind": "generator", "generator": weights}
        with tempfile.TemporaryDirectory() as tmp:
            path = save_checkpoint(payload, Path(tmp) / GENERATOR_FILE)
            return self.tracker.log_checkpoint(path, epoch), payload

    def _judge(self, epoch: int, written: tuple[str | None, dict], stop: _StopRequest) -> None:
        model_id, payload = written
        # Rebuilt from the checkpoint's own weights, as `facegan evaluate` would load the file: the
        # same scores, and the training networks are left untouched.
        generator = generator_from_checkpoint(payload).to(self.device)
        self.stopped = self.judge.checkpoint_written(epoch, generator, label=checkpoint_name(epoch),
                                                     model_id=model_id, interrupt=stop.check_here)

    def _save_resume(self, payload: dict | None) -> None:
        if payload is None:  # not rank 0
            return
        with _no_interrupts(), tempfile.TemporaryDirectory() as tmp:
            self.tracker.save_resume_state(save_checkpoint(payload, Path(tmp) / "state.pt"))

    # -- the loop -----------------------------------------------------------------------------

    def run_epoch(self, stop: _StopRequest | None = None) -> EpochTotals:
        """One pass over the data in minibatches of ``train.batch_size`` (on several processes,
        each rank trains on its slice of every minibatch: together they see every image once)."""
        cfg = self.cfg.train
        world, rank = self.processes.world_size, self.processes.rank
        n = self.images.shape[0]
        order = torch.randperm(n, generator=self.shuffle_rng)
        while self.step_graphs is not None:
            try:
                return self.step_graphs.run_epoch(self.images, order, cfg.batch_size, self.schedule, stop)
            except CaptureFailed as exc:  # raised before the epoch's first minibatch: nothing was trained
                if self.step_graphs.decide_on == "device" and cfg.schedule == "adaptive":
                    print(f"warning: {exc}; deciding the adaptive schedule on the host between graphs instead",
                          file=sys.stderr)
                    self.step_graphs = self._step_graphs("host")
                elif cfg.compile == CAPTURED:
                    raise FaceganError(f"train.compile = {CAPTURED}: {exc}; train with --set train.compile=off") from exc
                else:
                    print(f"warning: {exc}; training without CUDA graphs (train.compile = off)", file=sys.stderr)
                    self.step_graphs = None
        totals = EpochTotals()
        for start in range(0, n, cfg.batch_size):
            index = order[start : start + cfg.batch_size]
            if world > 1:
                if index.numel() < world:  # a last minibatch too short to give every rank an image
                    break
                index = index.tensor_split(world)[rank]
            batch = self.images.index_select(0, index.to(self.images.device)).to(self.device, non_blocking=True)
            real = (batch.float() / 127.5 - 1.0).contiguous(memory_format=self.gan.memory_format)
            self.gan.step(real, self.schedule, totals)
            if stop is not None:
                stop.check()
        return totals

    def _over_ranks(self, totals: EpochTotals) -> EpochTotals:
        """The epoch's figures over every rank: mean losses and accuracies, total images."""
        if not self.processes.distributed:
            return totals
        names = ("loss_d", "loss_g", "penalty", "accuracy_g", "accuracy_d")
        values = torch.stack([torch.as_tensor(getattr(totals, k), dtype=torch.float32, device=self.device).reshape(())
                              for k in names] + [torch.tensor(float(totals.images), device=self.device)])
        values = distributed.sum_over_ranks(values, self.processes)
        for k, value in zip(names, values[:-1] / self.processes.world_size):
            if isinstance(getattr(totals, k), torch.Tensor):  # a float 0.0 means "not measured"
                setattr(totals, k, value)
        totals.images = int(values[-1].item())
        return totals

    def fit(self) -> None:
        """Train from ``self.epoch`` to ``train.epochs``; Ctrl-C saves resume state and re-raises."""
        cfg = self.cfg
        if self.epoch == 0:
            self._log_samples(0)
        bar = tqdm(total=cfg.train.epochs, initial=self.epoch, desc="train", unit="epoch",
                   disable=not self.progress, dynamic_ncols=True, file=sys.stderr)
        try:
            with _StopRequest(self.processes, self.device) as stop:
                self._epochs(stop, bar)
        except BaseException:
            # Ctrl-C or a crash: keep what the last complete epoch reached, so --resume works
            # (rank 0 holds it; the other ranks have nothing to save).
            if self.snapshot is not None and self.snapshot["epoch"] > 0:
                try:
                    self._save_resume(self.snapshot)
                except Exception as exc:  # never hide the original error behind this one
                    print(f"warning: could not save the resume state: {exc}", file=sys.stderr)
            raise
        finally:
            bar.close()

    def _epochs(self, stop: _StopRequest, bar) -> None:
        cfg, track = self.cfg, self.cfg.tracking
        for epoch in range(self.epoch + 1, cfg.train.epochs + 1):
            started = time.perf_counter()
            totals = self._over_ranks(self.run_epoch(stop))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            metrics = totals.metrics(time.perf_counter() - started)
            self.epoch = epoch
            last = epoch == cfg.train.epochs
            if epoch not in self.logged_metric_steps and self.processes.is_main:
                self.tracker.log_metrics(metrics, epoch)
            if epoch % track.sample_every == 0 or last:
                self._log_samples(epoch)
            written = self._log_checkpoint(epoch) if epoch % track.checkpoint_every == 0 or last else None
            self.snapshot = self.resume_payload()
            saved = epoch % track.resume_every == 0 or last
            if saved:
                self._save_resume(self.snapshot)
            bar.update(1)
            interrupted = False
            if written is not None and self.judge is not None:
                try:
                    self._judge(epoch, written, stop)
                except KeyboardInterrupt:  # Ctrl-C while scoring
                    if not self.processes.distributed:
                        raise
                    interrupted = True  # the others wait below: stop together
            # Rank 0 judges for all; the other ranks wait for its verdict here.
            self.stopped, interrupted = distributed.from_main((self.stopped, interrupted), self.processes)
            if interrupted:
                raise KeyboardInterrupt
            bar.set_postfix({  # in this order: tqdm sorts keyword arguments
                "loss_d": f"{metrics.get('loss_d', float('nan')):.3f}",
                "loss_g": f"{metrics.get('loss_g', float('nan')):.3f}",
                "img_s": f"{metrics['images_per_s']:.0f}",
                **(self.judge.status() if self.judge is not None else {}),
            })
            if self.stopped is not None:
                if not saved:  # a stopped run can be continued with --resume
                    self._save_resume(self.snapshot)
                return
            stop.check()


def fetch_resume_payload(tracker: RunTracker) -> dict:
    """The run's last resume state (networks, optimisers, epoch, RNG, schedule, config)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = tracker.fetch_resume_state(Path(tmp))
        if path is None:
            raise FaceganError(f"run {tracker.run_id} has no resume state to continue from")
        return load_checkpoint(path, kind="resume")


def train(
    cfg: Config,
    dataset: Dataset,
    tracker: RunTracker | None,
    *,
    resume_payload: dict | None = None,
    progress: bool = True,
    trainer_class: Callable[..., Trainer] | None = None,
    judge: CheckpointHook | None = None,
    processes: Processes | None = None,
) -> Trainer:
    """Train one run, or continue it from ``resume_payload``; marks it FINISHED, KILLED or FAILED.

    ``trainer_class`` (default :class:`Trainer`) lets experiments change the loop, e.g. the
    collapse benchmark's designed collapse, with the same logging and run lifecycle. ``judge``
    scores every checkpoint as it is written and may stop training early: the run is then
    FINISHED, with run tags saying why and at which epoch, and resumable with ``--resume``.

    On several processes every rank calls this with the same config, data and resume state;
    only rank 0 has a ``tracker`` (the others pass None) and a ``judge``.
    """
    processes = processes or Processes()
    main = processes.is_main
    if main and tracker is None:
        raise ValueError("rank 0 needs a tracker")
    trainer = (trainer_class or Trainer)(cfg, dataset, tracker, progress=progress, judge=judge, processes=processes)
    if resume_payload is not None:
        trainer.restore(resume_payload)
        if trainer.epoch >= cfg.train.epochs:
            raise FaceganError(
                f"run {tracker.run_id if main else ''} already reached epoch {trainer.epoch} of {cfg.train.epochs}; "
                "pass a larger --epochs to continue it"
            )
        if main:
            trainer.note_logged_steps()
            tracker.mark_running()
    elif main:
        tracker.log_params(cfg.to_flat_dict())
        tracker.log_dataset(trainer.dataset_info())
    try:
        trainer.fit()
    except KeyboardInterrupt:
        if main:
            tracker.finish("KILLED")
        raise
    except BaseException as exc:
        if main:
            tracker.finish("FAILED")
        if processes.distributed and isinstance(exc, RuntimeError):
            # A collective failed: in practice another rank ended (a crash, a kill, a lost machine).
            resume = f"continue it with torchrun ... facegan train --resume {tracker.run_id}" if main else "see rank 0"
            raise FaceganError(f"rank {processes.rank}: training stopped because another training process ended "
                               f"({error_text(exc)}); the run keeps its last resume state: {resume}") from exc
        raise
    if not main:  # the other ranks only train
        return trainer
    if trainer.stopped is not None:
        kind, reason = trainer.stopped
        tracker.set_tags({STOPPED_TAG: kind, STOPPED_EPOCH_TAG: str(trainer.epoch), STOP_REASON_TAG: reason})
    elif judge is not None:
        tracker.set_tags({STOPPED_TAG: "no"})
    if judge is not None:
        try:
            judge.finish()
        except Exception as exc:  # the training itself is done and saved: say so, do not fail it
            print(f"warning: could not record the evaluation of run {tracker.run_id} ({exc}); "
                  f"run `facegan evaluate --run {tracker.run_id}` to record it", file=sys.stderr)
    tracker.finish("FINISHED")
    return trainer
