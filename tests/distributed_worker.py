"""One rank of the distributed tests, started by ``torchrun`` from ``tests/test_distributed.py``.

``torchrun --standalone --nproc_per_node=2 tests/distributed_worker.py OUT`` (one launch for all of it:
starting two processes costs more than the work):

- trains small GANs (:data:`TRAININGS`) with the real loop (``facegan.training.train``) on the
  built-in faces and writes each rank's final weights to ``OUT/train-LOSS-SCHEDULE-rank<r>.pt``;
- one WGAN-GP critic backward (loss and gradient penalty, the double-backward path) on this rank's
  half of fixed real, fake and penalty-point tensors, through DistributedDataParallel; writes the
  averaged gradients to ``OUT/critic-rank<r>.pt``. The test compares them with one process on the
  whole batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from facegan import distributed
from facegan.config import load_config
from facegan.distributed import Processes
from facegan.losses import gradient_penalty, make_objective
from facegan.models import build_discriminator
from facegan.run_tracker import MemoryTracker
from facegan.synthetic import synthetic_faces
from facegan.training import _data_parallel, train

SMALL = {"model.image_size": 32, "model.g_width": 8, "model.d_width": 8, "model.latent_dim": 16,
         "train.device": "cpu", "data.num_images": 96, "train.batch_size": 16}


def critic_batch(total: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed real images, fakes and penalty mixing weights for the whole (global) batch."""
    g = torch.Generator().manual_seed(1234)
    real = torch.rand(total, 3, size, size, generator=g) * 2 - 1
    fake = torch.rand(total, 3, size, size, generator=g) * 2 - 1
    alpha = torch.rand(total, 1, 1, 1, generator=g)
    return real, fake, alpha


def critic_loss(critic, real, fake, alpha) -> torch.Tensor:
    """The WGAN-GP critic loss of :class:`facegan.losses.WGANGPObjective` with given penalty points."""
    objective = make_objective("wgan-gp")
    return objective.d_loss(critic(real), critic(fake)) + gradient_penalty(critic, real, fake, 10.0, alpha=alpha)


def critic_network():
    cfg = load_config(None, {**SMALL, "train.loss": "wgan-gp"})
    torch.manual_seed(0)
    return build_discriminator(cfg.model.network())


TRAININGS = [("wgan-gp", "adaptive"), ("dcgan", "fixed")]
CRITIC_BATCH_PER_RANK = 8


def main(out: str) -> None:
    procs = Processes.from_environment()
    distributed.start(procs)
    out_dir = Path(out)
    for loss, schedule in TRAININGS:
        cfg = load_config(None, {**SMALL, "train.loss": loss, "train.schedule": schedule, "train.epochs": 3,
                                 "train.world_size": procs.world_size, "tracking.checkpoint_every": 3})
        dataset = synthetic_faces(cfg.data.num_images, cfg.model.image_size, seed=0)
        trainer = train(cfg, dataset, MemoryTracker() if procs.is_main else None, progress=False, processes=procs)
        weights = {"generator": trainer.gan.generator.state_dict(), "discriminator": trainer.gan.discriminator.state_dict(),
                   "d_steps": trainer.gan.opt_d.state_dict()["state"][0]["step"]}
        torch.save(weights, out_dir / f"train-{loss}-{schedule}-rank{procs.rank}.pt")

    critic = critic_network()
    wrapped = _data_parallel(critic, torch.device("cpu"))
    real, fake, alpha = (t.tensor_split(procs.world_size)[procs.rank]
                         for t in critic_batch(CRITIC_BATCH_PER_RANK * procs.world_size))
    critic_loss(wrapped, real, fake, alpha).backward()
    torch.save({name: p.grad for name, p in critic.named_parameters()}, out_dir / f"critic-rank{procs.rank}.pt")
    dist.barrier()
    distributed.stop(procs)


if __name__ == "__main__":
    main(*sys.argv[1:])
