"""The training step captured as CUDA graphs, the adaptive schedule decided on the GPU (``train.compile``).

The networks are small, so on a GPU the eager step is bound by the host: hundreds of kernel
launches per minibatch, and the adaptive schedule reads the two accuracies back to decide which
network trains (a sync that leaves the GPU idle until the next launches arrive). Here each kind of
step is captured once as a CUDA graph and replayed: one launch per minibatch, and nothing in an
epoch waits for the GPU. The epoch's sums stay on the device and are read once at its end.

The tutorial's rule is kept exactly: every minibatch whose step is not known in advance is scored,
and D trains when ``accuracy_g / 2 >= accuracy_d`` (then ``n_critic - 1`` more D minibatches),
else G. The decision is taken on the GPU: the schedule's state lives in device tensors, and the
graph branches through CUDA graph conditional nodes (an IF node per outcome; CUDA 12.4+), so the
host launches the same graph every minibatch without knowing what it will train.

What that costs, and why:

- Autograd runs a backward op on the stream of its forward op, and each conditional body is
  captured on a stream of its own; so a backward in a body must follow a forward in the same body.
  The decided branches therefore score again, with graphs, what the decision scored without
  (the same values: the same inputs and weights), and put BatchNorm's running statistics back
  afterwards so that they move once per forward, as in the eager step. The decided minibatches
  pay one more forward of D (and of G before a G step) than the eager step.
- Random numbers cannot be drawn inside conditional bodies (PyTorch refuses; some versions refuse
  any draw in a capture that has conditional nodes), so each minibatch's latents and penalty
  points are drawn on the device just before the adaptive graph is replayed, whether or not a D
  step uses the points. The stream of random numbers therefore differs from the eager step's
  (which draws the points only on D steps): the same rule on other random draws.
  ``experiments/RESULTS.md`` measures what that changes. The fixed schedule is known on the host:
  it replays one graph per kind of step and draws exactly what the eager step draws.

Where conditional nodes are missing (a PyTorch built with CUDA before 12.4, ROCm) or their capture
fails, the adaptive schedule is decided by the host between graphs (``decide_on="host"``): one
graph for the decision, one per step it can choose; the host reads each decision, a small sync per
decided minibatch, and the random numbers are drawn where the eager step draws them.

On the CPU (and in tests) the same step functions run uncaptured with the branches evaluated on
the host (``capture=False``); they then train bit for bit like :meth:`facegan.training.GAN.step`
given the same random draws (``tests/test_step_graphs.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from facegan.common import error_text
from facegan.config import CAPTURED
from facegan.errors import FaceganError

# Order of the sums and counts kept on the device.
_SUMS = ("loss_d", "loss_g", "penalty", "accuracy_g", "accuracy_d")
_COUNTS = ("d_steps", "g_steps", "scored", "penalty_steps")


def conditional_nodes_missing() -> str | None:
    """Why this PyTorch cannot capture a branch decided on the GPU (None when it can)."""
    if torch.version.hip is not None:
        return "ROCm builds of PyTorch have no CUDA graph conditional nodes"
    if not hasattr(torch.cuda.CUDAGraph, "begin_capture_to_if_node"):
        return f"PyTorch {torch.__version__} has no CUDA graph conditional nodes (CUDAGraph.begin_capture_to_if_node)"
    version = torch.version.cuda
    if version is None or tuple(int(x) for x in version.split(".")[:2]) < (12, 4):
        return f"CUDA graph conditional nodes need PyTorch built with CUDA 12.4 or later (this one: CUDA {version})"
    return None


def captured_steps_unavailable(device: torch.device, *, distributed: bool) -> str | None:
    """Why the training step cannot be captured here (None when it can)."""
    if device.type != "cuda":
        return f"CUDA graphs capture GPU work; this run trains on the {device.type.upper()}"
    if distributed:
        return ("several training processes run eagerly: their gradient all-reduce and the adaptive schedule's "
                "all-reduce of the accuracies are not captured")
    return None


def use_captured_steps(mode: str, device: torch.device, *, distributed: bool) -> bool:
    """Whether ``train.compile = mode`` captures the step here; an explicit ``cuda-graphs`` that
    cannot be honoured is an error, ``auto`` then trains eagerly."""
    if mode == "off":
        return False
    reason = captured_steps_unavailable(device, distributed=distributed)
    if mode == CAPTURED and reason is not None:
        raise FaceganError(f"train.compile = {CAPTURED} cannot be used here: {reason}; "
                           "use train.compile = auto (captured where possible) or off")
    return reason is None


class CaptureFailed(FaceganError):
    """The step could not be captured as CUDA graphs (nothing was trained by the attempt)."""


class DeviceTotals:
    """An epoch's sums and counts, kept on the device and added to inside the captured graphs.

    Adds in the same order and precision (float32) as :class:`facegan.training.EpochTotals`, so
    that the same steps give the same figures."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(len(_SUMS), device=device)
        self.counts = torch.zeros(len(_COUNTS), dtype=torch.int64, device=device)

    def zero_(self) -> None:
        self.sums.zero_()
        self.counts.zero_()

    def add_scores(self, accuracy_g, accuracy_d) -> None:
        self.sums[3].add_(accuracy_g)
        self.sums[4].add_(accuracy_d)
        self.counts[2].add_(1)

    def add_d_step(self, loss, penalty) -> None:
        if penalty is not None:
            self.sums[2].add_(penalty)
            self.counts[3].add_(1)
        self.sums[0].add_(loss)
        self.counts[0].add_(1)

    def add_g_step(self, loss) -> None:
        self.sums[1].add_(loss)
        self.counts[1].add_(1)


@dataclass
class DrawnFirst:
    """Random inputs drawn before the step's branches (no draws inside a conditional node)."""

    z: torch.Tensor
    alpha: torch.Tensor | None

    def latents(self, n: int, latent_dim: int, device) -> torch.Tensor:
        return self.z

    def mix_weights(self, real: torch.Tensor) -> torch.Tensor:
        return self.alpha


@dataclass
class _Latents:
    """Given latents; the penalty points drawn when asked, as the eager step draws them."""

    z: torch.Tensor

    def latents(self, n: int, latent_dim: int, device) -> torch.Tensor:
        return self.z

    def mix_weights(self, real: torch.Tensor) -> torch.Tensor:
        return torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)  # as DrawnNoise


class _OnHost:
    """Branches decided on the host (a sync per decision): uncaptured runs, the CPU, tests."""

    def when(self, predicate: torch.Tensor, body: Callable[[], None]) -> None:
        if bool(predicate):
            body()


class _Every:
    """Every branch runs: the warm-up before a capture, which must meet every kernel once."""

    def when(self, predicate: torch.Tensor, body: Callable[[], None]) -> None:
        body()


class _ConditionalNodes:
    """Branches captured as CUDA graph IF nodes: the GPU decides at each replay."""

    def when(self, predicate: torch.Tensor, body: Callable[[], None]) -> None:
        graph = torch.cuda.CUDAGraph.get_currently_capturing_graph()
        graph.begin_capture_to_if_node(predicate)
        try:
            body()
        finally:
            graph.end_capture_to_conditional_node()


class _RestoredBuffers:
    """Saves modules' buffers (BatchNorm's running statistics) and puts them back, in place."""

    def __init__(self, modules: Iterable[nn.Module]):
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for m in modules:
            for b in m.buffers():
                by_dtype.setdefault(b.dtype, []).append(b)
        # One list per dtype (running means and variances; batch counters): one launch each way.
        self.groups = [(group, [torch.empty_like(b) for b in group]) for group in by_dtype.values()]

    @contextmanager
    def kept(self):
        for buffers, saved in self.groups:
            torch._foreach_copy_(saved, buffers)
        try:
            yield
        finally:
            for buffers, saved in self.groups:
                torch._foreach_copy_(buffers, saved)


def _initialise_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Make the optimiser's state now, as its first ``step()`` would, so that no capture allocates
    it (state made inside a graph would be zeroed again at every replay).

    One step with zero gradients and learning rate 0 leaves the weights and the moments at their
    values (zeros for fresh moments); its step counter is then set back to 0.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if all(p in optimizer.state and optimizer.state[p] for p in params):
        return
    grads = [p.grad for p in params]
    lrs = [group["lr"] for group in optimizer.param_groups]
    try:
        for p in params:
            p.grad = torch.zeros_like(p)
        for group in optimizer.param_groups:
            group["lr"] = 0.0
        optimizer.step()
    finally:
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        for p, g in zip(params, grads):
            p.grad = g
    for p in params:
        step = optimizer.state[p].get("step")
        if isinstance(step, torch.Tensor):
            step.zero_()
        elif step is not None:
            optimizer.state[p]["step"] = 0


def _steps_on_device(optimizer: torch.optim.Optimizer) -> None:
    """Step counters on their parameters' device (float32), where a captured ``step()`` counts."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and "step" in state:
                step = state["step"]
                if not isinstance(step, torch.Tensor) or step.device != p.device:
                    state["step"] = torch.as_tensor(float(step), dtype=torch.float32).to(p.device)


@contextmanager
def _capturable(optimizers: Iterable[torch.optim.Optimizer]):
    """``capturable=True`` while a graph is captured: the flag only chooses which code ``step()``
    records (device-side step counters, no host reads). Saved optimiser states keep the flag off,
    so that they load anywhere."""
    groups = [g for o in optimizers for g in o.param_groups]
    before = [g.get("capturable", False) for g in groups]
    for g in groups:
        g["capturable"] = True
    try:
        yield
    finally:
        for g, flag in zip(groups, before):
            g["capturable"] = flag


def _hyperparameters(optimizers: Iterable[torch.optim.Optimizer]) -> list:
    """What a captured ``step()`` baked in (learning rates and the like): a change needs a new capture."""
    return [{k: v for k, v in g.items() if k not in ("params", "capturable")} for o in optimizers for g in o.param_groups]


class StepGraphs:
    """Trains epochs with the step captured as CUDA graphs (``capture=True``), or the same step
    functions run uncaptured with the branches decided on the host (``capture=False``).

    Args:
        gan: the networks and optimisers (:class:`facegan.training.GAN`, one process).
        schedule_kind, n_critic, gp_every: the schedule (``train.schedule`` etc.).
        image_shape: one image's shape, channels first (3, S, S).
        device: the training device.
        capture: capture CUDA graphs (CUDA only); else run the step functions as they are.
        decide_on: the adaptive schedule's decisions: ``"device"``, in the graph (conditional
            nodes; no sync, latents and penalty points drawn before each minibatch), or
            ``"host"``: one graph per part of the step (decision, D step, G step) and the host
            reads each decision (one small sync per decided minibatch; the random numbers are
            drawn where the eager step draws them, so it trains as the eager step does). The
            fallback where conditional nodes are missing or fail.

    Example (on a GPU)::

        graphs = StepGraphs(gan, "adaptive", 5, 1, (3, 80, 80), torch.device("cuda"), capture=True)
        totals = graphs.run_epoch(images_uint8_on_gpu, torch.randperm(n), 64, schedule)
    """

    def __init__(self, gan, schedule_kind: str, n_critic: int, gp_every: int, image_shape: tuple[int, ...],
                 device: torch.device, *, capture: bool, decide_on: str = "device"):
        if capture and device.type != "cuda":
            raise FaceganError(f"CUDA graphs capture GPU work; this run trains on the {device.type.upper()}")
        if decide_on not in ("device", "host"):
            raise ValueError(f"decide_on must be device or host, got {decide_on!r}")
        self.gan, self.kind, self.n_critic, self.gp_every = gan, schedule_kind, n_critic, gp_every
        self.decide_on = decide_on if schedule_kind == "adaptive" else "host"
        self.image_shape, self.device, self.capture = tuple(image_shape), device, capture
        self.penalty = gan.objective.needs_penalty
        self.lazy = self.penalty and gp_every > 1  # some D steps skip the penalty
        self.totals = DeviceTotals(device)
        # adaptive: [D minibatches owed, D steps since the last penalty]; the host's Schedule holds
        # the same between epochs.
        self.state = torch.zeros(2, dtype=torch.int64, device=device)
        self.to_d = torch.zeros((), dtype=torch.bool, device=device)
        self._host_state: tuple[int, int] | None = None  # what self.state holds, as last exchanged
        self._batches: dict[int, torch.Tensor] = {}  # static uint8 input per minibatch size
        self._noise: dict[int, DrawnFirst] = {}  # adaptive: static latents and penalty points per size
        self._fakes: dict[int, torch.Tensor] = {}  # decided on the host: the decision's fakes, per size
        self._graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self._captured_with: list | None = None
        self._savers: dict[tuple[int, ...], _RestoredBuffers] = {}
        # Made now, outside any capture: their tensors must not live in one graph's memory pool.
        self._kept_buffers(gan.discriminator)
        self._kept_buffers(gan.generator, gan.discriminator)

    # -- the steps --------------------------------------------------------------------------------

    def _kept_buffers(self, *modules: nn.Module):
        """Running statistics of ``modules`` put back after the block (one saver per set of modules)."""
        key = tuple(id(m) for m in modules)
        if key not in self._savers:
            self._savers[key] = _RestoredBuffers(modules)
        return self._savers[key].kept()

    def _draw(self, n: int) -> None:
        """The adaptive step's random inputs for the next minibatch, drawn eagerly outside the graph."""
        noise = self._noise[n]
        torch.randn(noise.z.shape, device=self.device, out=noise.z)
        if noise.alpha is not None:
            torch.rand(noise.alpha.shape, device=self.device, out=noise.alpha)

    def _real(self, n: int) -> torch.Tensor:
        batch = self._batches[n]
        return (batch.float() / 127.5 - 1.0).contiguous(memory_format=self.gan.memory_format)

    def _count_d_step(self) -> None:
        if self.lazy:
            phase = self.state[1]
            phase.copy_((phase + 1) % self.gp_every)

    def _adaptive_step(self, n: int, branches) -> None:
        """One minibatch under the tutorial's rule, every decision on the device."""
        gan, state = self.gan, self.state
        real = self._real(n)
        noise = self._noise[n]
        # Every predicate is computed before any body changes the state it was computed from.
        forced = state[0] > 0
        scored = torch.logical_not(forced)
        due = state[1] == 0 if self.lazy else None
        if self.lazy:
            forced_due, forced_off = torch.logical_and(forced, due), torch.logical_and(forced, torch.logical_not(due))
        else:
            forced_due, forced_off = forced, None

        def forced_d(penalty_scale: float):
            gan.forced_d(real, self.totals, penalty_scale=penalty_scale, noise=noise)
            state[0].sub_(1)
            self._count_d_step()

        branches.when(forced_due, lambda: forced_d(float(self.gp_every)))
        if forced_off is not None:
            branches.when(forced_off, lambda: forced_d(0.0))

        decided = {}

        def decide():
            with torch.no_grad():
                fake = gan.generate(n, self.device, noise)
                scores_real, scores_fake = gan.score(real), gan.score(fake)
            acc_g, acc_d = gan.record_scores(scores_real, scores_fake, self.totals)
            self.to_d.copy_(acc_g / 2 >= acc_d)
            decided["fake"] = fake

        branches.when(scored, decide)
        to_d = torch.logical_and(scored, self.to_d)
        to_g = torch.logical_and(scored, torch.logical_not(self.to_d))
        if self.lazy:
            to_d_due, to_d_off = torch.logical_and(to_d, due), torch.logical_and(to_d, torch.logical_not(due))
        else:
            to_d_due, to_d_off = to_d, None

        def switch_to_d(penalty_scale: float):
            fake = decided["fake"]
            # The decision already moved the running statistics; put them back after the backward
            # (BatchNorm's backward holds them, and would refuse them changed before it ran).
            with self._kept_buffers(gan.discriminator):
                scores_real, scores_fake = gan.score(real), gan.score(fake)
                gan.d_update(real, fake, scores_real, scores_fake, self.totals, graph_into_g=False,
                             penalty_scale=penalty_scale, noise=noise)
            state[0].fill_(self.n_critic - 1)
            self._count_d_step()

        def g_step():
            with self._kept_buffers(gan.generator, gan.discriminator):
                gan.forced_g(n, self.device, self.totals, noise=noise)

        branches.when(to_d_due, lambda: switch_to_d(float(self.gp_every)))
        if to_d_off is not None:
            branches.when(to_d_off, lambda: switch_to_d(0.0))
        branches.when(to_g, g_step)

    def _host_decision(self, n: int) -> None:
        """The decision's part of a decided minibatch (``decide_on="host"``): draws the latents,
        scores without graphs, books the accuracies and leaves the outcome in ``self.to_d``."""
        gan = self.gan
        real = self._real(n)
        z = self._noise[n].z
        with torch.no_grad():
            z.copy_(torch.randn(n, gan.latent_dim, device=self.device))
            fake = gan.generate(n, self.device, _Latents(z))
            self._fakes[n] = fake
            scores_real, scores_fake = gan.score(real), gan.score(fake)
        acc_g, acc_d = gan.record_scores(scores_real, scores_fake, self.totals)
        self.to_d.copy_(acc_g / 2 >= acc_d)

    def _host_switch_to_d(self, n: int, penalty_scale: float) -> None:
        gan, real, fake = self.gan, self._real(n), self._fakes[n]
        with self._kept_buffers(gan.discriminator):
            scores_real, scores_fake = gan.score(real), gan.score(fake)
            gan.d_update(real, fake, scores_real, scores_fake, self.totals, graph_into_g=False,
                         penalty_scale=penalty_scale)

    def _host_g_step(self, n: int) -> None:
        gan = self.gan
        with self._kept_buffers(gan.generator, gan.discriminator):
            gan.forced_g(n, self.device, self.totals, noise=_Latents(self._noise[n].z))

    def _fixed_step(self, n: int, kind: str, penalty_scale: float) -> None:
        """One minibatch of the fixed schedule, whose kind the host knows: no branches, and the
        random numbers drawn where the eager step draws them."""
        real = self._real(n)
        if kind == "d":
            self.gan.forced_d(real, self.totals, penalty_scale=penalty_scale)
        else:
            self.gan.forced_g(n, self.device, self.totals)

    def _body(self, key: tuple, branches) -> Callable[[], None]:
        part, n = key[0], key[1]
        if part == "adaptive":
            return lambda: self._adaptive_step(n, branches)
        if part == "decision":
            return lambda: self._host_decision(n)
        if part == "switch_to_d":
            return lambda: self._host_switch_to_d(n, key[2])
        if part == "g_after_decision":
            return lambda: self._host_g_step(n)
        return lambda: self._fixed_step(n, key[2], key[3])

    # -- capture ----------------------------------------------------------------------------------

    def _keys(self, sizes: Iterable[int]) -> list[tuple]:
        keys = []
        for n in sizes:
            if self.kind == "adaptive" and self.decide_on == "device":
                keys.append(("adaptive", n))
            elif self.kind == "adaptive":  # decided on the host: the forced D steps, and each part of a decided one
                keys += [("fixed", n, "d", float(self.gp_every))] + ([("fixed", n, "d", 0.0)] if self.lazy else [])
                keys += [("decision", n), ("switch_to_d", n, float(self.gp_every))]
                keys += [("switch_to_d", n, 0.0)] if self.lazy else []
                keys.append(("g_after_decision", n))
            else:
                keys += [("fixed", n, "d", float(self.gp_every))] + ([("fixed", n, "d", 0.0)] if self.lazy else [])
                keys.append(("fixed", n, "g", 0.0))
        return keys

    def _warm_up(self, key: tuple) -> None:
        """Run every branch of ``key``'s step once, eagerly, on a copy of the networks and
        optimisers: kernels are chosen (cuDNN's autotuner), handles and autograd's threads made,
        before a capture, where none of that may happen. The run's own state and random stream
        are left as they were."""
        rng = torch.cuda.get_rng_state(self.device)
        original, savers, state, fakes = self.gan, dict(self._savers), self.state.clone(), dict(self._fakes)
        twin = copy.deepcopy(original)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        try:
            self.gan = twin
            with torch.cuda.stream(stream):
                if key[0] in ("switch_to_d", "g_after_decision"):
                    self._host_decision(key[1])  # what these parts start from
                self._body(key, _Every())()
            torch.cuda.current_stream(self.device).wait_stream(stream)
            torch.cuda.synchronize(self.device)
        finally:
            self.gan, self._savers, self._fakes = original, savers, fakes
            torch.cuda.set_rng_state(rng, self.device)
            self.state.copy_(state)
            self.totals.zero_()

    def _capture(self, sizes: Iterable[int]) -> None:
        gan = self.gan
        optimizers = (gan.opt_g, gan.opt_d)
        for optimizer in optimizers:
            _initialise_optimizer_state(optimizer)
            _steps_on_device(optimizer)
        graphs, self._graphs, self._fakes = {}, {}, {}
        for key in self._keys(sizes):
            self._warm_up(key)
            graph = torch.cuda.CUDAGraph()
            try:
                with _capturable(optimizers), torch.cuda.graph(graph):
                    self._body(key, _ConditionalNodes())()
            except Exception as exc:
                raise CaptureFailed(f"capturing the training step as a CUDA graph failed ({error_text(exc)})") from exc
            finally:
                for p in gan.g_params + gan.d_params:  # gradients made in the capture live in its memory pool
                    p.grad = None
            graphs[key] = graph
        # The later parts of a decided minibatch were captured reading the fakes the decision
        # graph writes (kept alive here: they live in that graph's memory pool).
        self._graphs = graphs
        self._captured_with = _hyperparameters(optimizers)

    def reset(self) -> None:
        """Forget the captured graphs (after the optimisers' state tensors were replaced, e.g. on resume)."""
        self._graphs, self._fakes = {}, {}
        self._captured_with = None
        self._host_state = None

    def prepare(self, sizes: Iterable[int]) -> None:
        """Make the static inputs for these minibatch sizes and capture their graphs (again if the
        optimisers' hyperparameters changed since the last capture)."""
        sizes = sorted(set(sizes))
        for n in sizes:
            if n not in self._batches:
                self._batches[n] = torch.zeros((n, *self.image_shape), dtype=torch.uint8, device=self.device)
                self._noise[n] = DrawnFirst(
                    torch.zeros(n, self.gan.latent_dim, device=self.device),
                    torch.zeros(n, 1, 1, 1, device=self.device) if self.penalty else None)
        if not self.capture:
            return
        wanted = set(self._keys(sizes))
        optimizers = (self.gan.opt_g, self.gan.opt_d)
        if self._captured_with != _hyperparameters(optimizers) or not wanted <= set(self._graphs):
            self._capture(sorted({key[1] for key in wanted | set(self._graphs)}))

    # -- running ----------------------------------------------------------------------------------

    def _load_state(self, schedule) -> None:
        host = (schedule.d_streak, schedule.penalty_phase)
        if host != self._host_state:
            self.state.copy_(torch.tensor(host, dtype=torch.int64))
            self._host_state = host

    def step(self, batch: torch.Tensor, schedule) -> None:
        """Train one minibatch of uint8 images on the device (the dataset's format), outside
        :meth:`run_epoch` (benchmarks); call :meth:`prepare` with its size first. The device keeps
        the adaptive schedule's state: ``schedule`` is not updated from it here."""
        n = batch.shape[0]
        if self.decide_on == "device":
            self._load_state(schedule)
        self._batches[n].copy_(batch)
        self._run(n, schedule)

    def _replay(self, key: tuple) -> None:
        if self.capture:
            self._graphs[key].replay()
        else:
            self._body(key, _OnHost())()

    def _run(self, n: int, schedule) -> None:
        if self.kind == "adaptive" and self.decide_on == "device":
            self._draw(n)
            self._replay(("adaptive", n))
            return
        kind = schedule.forced()
        if kind is None:  # decided on the host: the decision, one read, then the step it chose
            scale = schedule.penalty_scale()
            self._replay(("decision", n))
            if bool(self.to_d):
                self._replay(("switch_to_d", n, scale))
                schedule.done("d", switched_to_d=True)
            else:
                self._replay(("g_after_decision", n))
                schedule.done("g")
            return
        self._replay(("fixed", n, kind, schedule.penalty_scale() if kind == "d" else 0.0))
        schedule.done(kind)

    def run_epoch(self, images: torch.Tensor, order: torch.Tensor, batch_size: int, schedule,
                  stop=None):
        """One pass over ``images`` (uint8, N x C x S x S, on the training device) in the order
        ``order`` (a CPU permutation) and minibatches of ``batch_size``; returns the epoch's
        :class:`facegan.training.EpochTotals`, read from the device once, and leaves ``schedule``
        where the device's schedule ended."""
        from facegan.training import EpochTotals

        total = images.shape[0]
        sizes = {min(batch_size, total - start) for start in range(0, total, batch_size)}
        self.prepare(sizes)
        if self.decide_on == "device":
            self._load_state(schedule)
        self.totals.zero_()
        on_device = images.device == self.device
        if on_device and self.device.type == "cuda":
            order = order.pin_memory().to(self.device, non_blocking=True)  # pageable memory would wait for the GPU
        for start in range(0, total, batch_size):
            index = order[start:start + batch_size]
            n = index.shape[0]
            if on_device:
                torch.index_select(images, 0, index, out=self._batches[n])
            else:  # a dataset too large for the GPU, in pinned host memory
                self._batches[n].copy_(images.index_select(0, index), non_blocking=True)
            self._run(n, schedule)
            if stop is not None:
                stop.check()
        # The epoch's one read: sums, counts and the schedule's state together.
        values = torch.cat([self.totals.sums.double(), self.totals.counts.double(), self.state.double()]).tolist()
        sums = dict(zip(_SUMS, values[:len(_SUMS)]))
        counts = dict(zip(_COUNTS, (int(v) for v in values[len(_SUMS):len(_SUMS) + len(_COUNTS)])))
        if self.decide_on == "device":
            schedule.d_streak, schedule.penalty_phase = (int(v) for v in values[-2:])
            self._host_state = (schedule.d_streak, schedule.penalty_phase)
        return EpochTotals(**sums, **counts, images=total)
