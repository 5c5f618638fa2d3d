"""Training on several processes with PyTorch's own engine (``torchrun ... -m facegan train``).

torchrun starts one process per GPU (or N on the CPU) and tells each its place through the
environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``). Here:

- :class:`Processes` reads that place; a plain ``facegan train`` is one process of rank 0, and
  every helper below is then a no-op, so the one-process path stays exactly as it was.
- :func:`start` joins the process group: NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``),
  gloo on the CPU.
- the small collectives the loop needs: sums of a few figures, "does any rank want to stop",
  and rank 0's Python objects (a resume state, a stop decision) sent to every rank.

Only rank 0 talks to MLflow and writes files; the others train and keep quiet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from facegan.errors import FaceganError

# How long a rank waits for the others at one collective. Rank 0 may score a checkpoint
# (Inception on the CPU: minutes) while the others wait at the next minibatch, so it is long;
# a rank that dies is noticed at once anyway (its sockets close, and torchrun ends the rest).
COLLECTIVE_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs to MLflow, writes checkpoints and samples, and judges."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> "Processes":
        """The place torchrun gave this process; one process when started without torchrun."""
        env = os.environ if environ is None else environ
        values = {}
        for key, name in (("WORLD_SIZE", "world_size"), ("RANK", "rank"), ("LOCAL_RANK", "local_rank")):
            text = env.get(key)
            if text is None:
                continue
            try:
                values[name] = int(text)
            except ValueError:
                raise FaceganError(f"the environment variable {key}={text!r} is not an integer "
                                   "(torchrun sets it; unset it to train on one process)") from None
        procs = cls(**values)
        if procs.world_size < 1 or not 0 <= procs.rank < procs.world_size or procs.local_rank < 0:
            raise FaceganError(f"inconsistent torchrun environment: WORLD_SIZE={procs.world_size}, RANK={procs.rank}, "
                               f"LOCAL_RANK={procs.local_rank}")
        return procs

    def device_name(self, requested: str) -> str:
        """The device this rank trains on: ``requested`` on one process; on several, its own GPU
        (``cuda:LOCAL_RANK``) when CUDA is asked for or ``auto`` finds it, else the CPU."""
        if not self.distributed:
            return requested
        if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
            if not torch.cuda.is_available():
                raise FaceganError("--device cuda was asked for, but PyTorch sees no CUDA device; use --device cpu")
            if self.local_rank >= torch.cuda.device_count():
                raise FaceganError(f"LOCAL_RANK {self.local_rank} has no GPU: this machine has "
                                   f"{torch.cuda.device_count()}; start at most that many processes per machine")
            return f"cuda:{self.local_rank}"
        return "cpu"

    def seed(self, seed: int) -> int:
        """This rank's seed for everything that should differ between ranks (latents, penalty
        points): rank 0 keeps the run's seed, so one process trains exactly as before; the
        others get independent streams derived from the run's seed."""
        if self.rank == 0:
            return seed
        return int(np.random.SeedSequence([seed, self.rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


class ReportedByMain(FaceganError):
    """Rank 0's error, raised on the other ranks too: rank 0 reports it, they only exit."""


def start(procs: Processes) -> None:
    """Join the process group (nothing to do on one process).

    gloo carries the CPU's collectives and NCCL the GPU's (``cpu:gloo,cuda:nccl`` where CUDA is
    present), so the group is the same whichever device the run trains on; each rank's current
    GPU is its ``LOCAL_RANK``.
    """
    if not procs.distributed or dist.is_initialized():
        return
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise FaceganError(f"WORLD_SIZE={procs.world_size} is set but MASTER_ADDR/MASTER_PORT are not: "
                           "start distributed training with torchrun (see README, 'Several GPUs')")
    cuda = torch.cuda.is_available()
    if cuda and procs.local_rank < torch.cuda.device_count():
        torch.cuda.set_device(procs.local_rank)
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)


def stop(procs: Processes) -> None:
    """Leave the process group (at the end of training, or after an error)."""
    if procs.distributed and dist.is_initialized():
        dist.destroy_process_group()


def sum_over_ranks(values: torch.Tensor, procs: Processes) -> torch.Tensor:
    """``values`` summed over every rank (in place, and returned)."""
    if procs.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def any_rank(flag: bool, procs: Processes, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (a Ctrl-C seen by some ranks only)."""
    if not procs.distributed:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def from_main(value, procs: Processes):
    """Rank 0's ``value`` on every rank (any picklable object; ``value`` is ignored elsewhere)."""
    if not procs.distributed:
        return value
    box = [value if procs.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_all(value, procs: Processes) -> list:
    """Every rank's ``value``, in rank order, on every rank."""
    if not procs.distributed:
        return [value]
    out = [None] * procs.world_size
    dist.all_gather_object(out, value)
    return out


def on_main(compute, procs: Processes, *, share: bool = False):
    """Run ``compute()`` on rank 0 only; a FaceganError raised there is raised on every rank, so
    that no rank waits for work that will never come. Returns its result on rank 0, and on the
    other ranks too when ``share`` (it must then pickle), else None there."""
    if not procs.distributed:
        return compute()
    result, error = None, None
    if procs.is_main:
        try:
            result = compute()
        except FaceganError as exc:
            error = str(exc)
    error = from_main(error, procs)
    if error is not None:
        raise (FaceganError if procs.is_main else ReportedByMain)(error)
    if share:
        return from_main(result, procs)
    return result
