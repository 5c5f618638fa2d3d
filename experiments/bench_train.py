"""Training speed: facegan's steps against a tutorial-faithful reference loop, side by side.

The reference loop reproduces the tutorial's per-minibatch work (our own code, the tutorial's
networks and settings): minibatch 20, contiguous memory, every minibatch generates fakes with
a graph and scores reals and fakes, reads both accuracies back to the host, and backpropagates
the chosen loss through everything (a D step also computes G's gradients, which are then
zeroed); WGAN-GP's penalty as the tutorial computes it. Both loops follow the same sequence of steps
(5 D steps, then 1 G step) so neither gains from a different mix. facegan's eager step runs at its
default minibatch and, for information, at the tutorial's 20, with bf16 autocast where the device
has native bf16 (a CUDA GPU, or a CPU with AVX512-BF16/AMX), and on a GPU at minibatch 256.
WGAN-GP also runs with the lazy penalty (``train.gp_every = 4``: the penalty on every 4th critic
step, 4 times as strong); ``experiments/bench_lazy_penalty.py`` checks what that costs in quality.

On a GPU, facegan's step captured as CUDA graphs (``train.compile = cuda-graphs``,
:mod:`facegan.step_graphs`) runs at minibatches 20, 64 (the default) and 256 with the same 5:1
mix, beside the eager step; and at 64 with the adaptive schedule (the mix the tutorial's rule
chooses, reported as the share of D steps), decided on the GPU and, for comparison, by the host
between graphs. The captured step takes the dataset's
uint8 minibatches and converts them inside its graph; the eager step is handed float minibatches
converted beforehand (as ``run_epoch`` does outside the step).

Usage:
    python -m experiments.bench_train [--device auto|cpu|cuda] [--seconds 20] [--losses wgan-gp,...]
        [--batch-sizes 20,64,256]

Prints a table and, as the last line, a JSON object with every figure (``tutorial_images_per_s``:
the reference loop; ``facegan_*``: the eager step; ``captured_*``: the CUDA graphs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from torch import nn

from experiments import provenance
from facegan.common import select_device
from facegan.config import load_config
from facegan.errors import FaceganError
from facegan.step_graphs import StepGraphs, conditional_nodes_missing
from facegan.synthetic import synthetic_faces
from facegan.training import EpochTotals, Schedule, build_gan, cpu_has_native_bf16

TUTORIAL_BATCH = 20
N_CRITIC = 5
LAZY_GP_EVERY = 4


def _use_pytorch_instance_norm(model: nn.Module) -> None:
    from facegan.models import InstanceNorm2d

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, InstanceNorm2d):
                setattr(module, name, nn.InstanceNorm2d(child.num_features, affine=True).to(child.weight.device))


class TutorialReference:
    """The tutorial's per-minibatch work, following a fixed D/G sequence."""

    def __init__(self, loss: str, device: torch.device):
        from facegan.models import Discriminator, Generator

        self.loss, self.device = loss, device
        self.g = Generator().to(device)
        self.d = Discriminator(norm="instance" if loss == "wgan-gp" else "batch").to(device)
        _use_pytorch_instance_norm(self.d)  # the tutorial's nn.InstanceNorm2d, not facegan's faster form
        if loss == "dcgan":
            self.d = nn.Sequential(self.d, nn.Sigmoid()).to(device)  # the tutorial's sigmoid + BCE
        if loss == "dcgan":
            self.opt_g = torch.optim.Adam(self.g.parameters(), 2e-4, betas=(0.5, 0.999))
            self.opt_d = torch.optim.Adam(self.d.parameters(), 2e-4, betas=(0.5, 0.999))
        elif loss == "wgan":
            self.opt_g = torch.optim.RMSprop(self.g.parameters(), 5e-5)
            self.opt_d = torch.optim.RMSprop(self.d.parameters(), 5e-5)
        else:
            self.opt_g = torch.optim.Adam(self.g.parameters(), 1e-4, betas=(0.0, 0.999))
            self.opt_d = torch.optim.Adam(self.d.parameters(), 1e-4, betas=(0.0, 0.999))
        self.last_real_mean = 0.5

    def _penalty(self, real, fake):
        # As the tutorial: normal mixing weights, norm over channels, graph kept for backward.
        rate = torch.randn(real.shape[0], 1, 1, 1, device=self.device).expand_as(real)
        mixed = rate * real + (1 - rate) * fake
        scores = self.d(mixed)
        (grad,) = torch.autograd.grad(scores, mixed, torch.ones_like(scores), create_graph=True, retain_graph=True)
        return ((grad.norm(2, dim=1) - 1) ** 2).mean() * 10

    def step(self, real: torch.Tensor, train_d: bool) -> None:
        n = real.shape[0]
        fake = self.g(torch.randn(n, 128, device=self.device))
        p_real, p_fake = self.d(real), self.d(fake)
        if self.loss == "dcgan":
            acc_g = (p_fake >= 0.5).float().mean().item()
            acc_d = (((p_fake <= 0.5).float().mean() + (p_real > 0.5).float().mean()) / 2).item()
        else:
            acc_g = (p_fake >= self.last_real_mean).float().mean().item()
            self.last_real_mean = p_real.mean().item()
            acc_d = (p_real > p_fake).float().mean().item()
        _ = acc_g / 2 >= acc_d  # the tutorial's decision, computed every minibatch
        if train_d:
            if self.loss == "dcgan":
                bce = nn.functional.binary_cross_entropy
                loss = bce(p_fake, torch.zeros_like(p_fake)) + bce(p_real, torch.ones_like(p_real))
            else:
                loss = p_fake.mean() - p_real.mean()
                if self.loss == "wgan-gp":
                    loss = loss + self._penalty(real, fake)
            loss.backward()
            self.opt_d.step()
            if self.loss == "wgan":
                for p in self.d.parameters():
                    p.data.clamp_(-0.1, 0.1)
        else:
            if self.loss == "dcgan":
                loss = nn.functional.binary_cross_entropy(p_fake, torch.ones_like(p_fake))
            else:
                loss = -p_fake.mean()
            loss.backward()
            self.opt_g.step()
        self.opt_g.zero_grad()
        self.opt_d.zero_grad()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(step, batches, device, seconds: float, warmup: int = 2) -> float:
    """Run ``step`` over the batches (cycling) for about ``seconds``; real images per second."""
    for i in range(warmup):
        step(batches[i % len(batches)], i)
    _sync(device)
    done, images, started = 0, 0, time.perf_counter()
    while True:
        batch = batches[(warmup + done) % len(batches)]
        step(batch, warmup + done)
        images += batch.shape[0]
        done += 1
        # Whole D/G cycles only, so both loops measure the same mix of steps.
        if done % (N_CRITIC + 1) == 0:
            _sync(device)
            if time.perf_counter() - started >= seconds:
                return images / (time.perf_counter() - started)


def _config(loss: str, batch_size: int, device: torch.device, *, schedule: str = "fixed", bf16: bool = False,
            gp_every: int = 1):
    return load_config(overrides={"train.loss": loss, "train.schedule": schedule, "train.n_critic": N_CRITIC,
                                  "train.batch_size": batch_size, "train.device": device.type, "train.bf16": bf16,
                                  "train.gp_every": gp_every})


def eager_images_per_second(loss, batch_size, device, seconds, images, *, bf16=False, gp_every=1) -> float:
    """facegan's eager step (``GAN.step``) on float minibatches, the fixed 5:1 mix."""
    cfg = _config(loss, batch_size, device, bf16=bf16, gp_every=gp_every)
    torch.manual_seed(0)
    gan = build_gan(cfg, device)
    schedule, totals = Schedule("fixed", N_CRITIC, gp_every), EpochTotals()
    batches = [b.to(device).contiguous(memory_format=gan.memory_format) for b in images.float().div(127.5).sub(1).split(batch_size)]
    batches = [b for b in batches if b.shape[0] == batch_size]
    return images_per_second(lambda b, i: gan.step(b, schedule, totals), batches, device, seconds)


def captured_images_per_second(loss, batch_size, device, seconds, images, *, schedule="fixed",
                               decide_on="device") -> tuple[float, float]:
    """facegan's step as CUDA graphs on uint8 minibatches; ``(images/s, share of D steps)``."""
    cfg = _config(loss, batch_size, device, schedule=schedule)
    torch.manual_seed(0)
    gan = build_gan(cfg, device)
    t = cfg.train
    graphs = StepGraphs(gan, t.schedule, t.n_critic, t.gp_every, tuple(images.shape[1:]), device, capture=True,
                        decide_on=decide_on)
    graphs.prepare([batch_size])
    state = Schedule(t.schedule, t.n_critic, t.gp_every)
    batches = [b for b in images.to(device).split(batch_size) if b.shape[0] == batch_size]
    ips = images_per_second(lambda b, i: graphs.step(b, state), batches, device, seconds)
    d_steps, g_steps = graphs.totals.counts[:2].tolist()  # no epoch ends here: the counts of every step
    return ips, d_steps / max(d_steps + g_steps, 1)


def bench_loss(loss: str, device: torch.device, seconds: float, images: torch.Tensor,
               batch_sizes: tuple[int, ...] = (TUTORIAL_BATCH, 64, 256), *, extras: bool = True) -> dict:
    """``images``: uint8, N x 3 x 80 x 80, on the CPU. ``extras``: also bf16 and the lazy penalty."""
    torch.manual_seed(0)
    tutorial = TutorialReference(loss, device)
    tutorial_batches = [b.to(device) for b in images.float().div(127.5).sub(1).split(TUTORIAL_BATCH)]
    pattern = lambda i: (i % (N_CRITIC + 1)) < N_CRITIC  # noqa: E731  (5 D, 1 G)
    tutorial_ips = images_per_second(lambda b, i: tutorial.step(b, pattern(i)), tutorial_batches, device, seconds)

    result = {"tutorial_images_per_s": round(tutorial_ips, 2)}
    default_batch = load_config().train.batch_size
    bf16_native = device.type == "cuda" or cpu_has_native_bf16()
    variants = [("facegan", default_batch, False, 1), ("facegan_batch20", TUTORIAL_BATCH, False, 1)]
    if bf16_native and extras:
        variants.append(("facegan_bf16", default_batch, True, 1))
    if device.type == "cuda":
        variants += [(f"facegan_batch{b}", b, False, 1) for b in batch_sizes if b not in (default_batch, TUTORIAL_BATCH)]
    if loss == "wgan-gp" and extras:  # the lazy penalty: on every 4th critic step, 4 times as strong
        variants.append(("facegan_gp4", default_batch, False, LAZY_GP_EVERY))
        if bf16_native:
            variants.append(("facegan_bf16_gp4", default_batch, True, LAZY_GP_EVERY))
    for label, batch_size, bf16, gp_every in variants:
        ips = eager_images_per_second(loss, batch_size, device, seconds, images, bf16=bf16, gp_every=gp_every)
        result[f"{label}_images_per_s"] = round(ips, 2)
        result[f"{label}_batch_size"] = batch_size
    if device.type == "cuda":
        for batch_size in batch_sizes:
            label = "captured" if batch_size == default_batch else f"captured_batch{batch_size}"
            ips, _ = captured_images_per_second(loss, batch_size, device, seconds, images)
            result[f"{label}_images_per_s"] = round(ips, 2)
            result[f"{label}_batch_size"] = batch_size
            eager = result.get("facegan_images_per_s" if batch_size == default_batch else f"facegan_batch{batch_size}_images_per_s")
            if eager:
                result[f"speedup_{label}_over_eager"] = round(ips / eager, 3)
        # The adaptive schedule, decided on the GPU (conditional nodes) and by the host between graphs.
        for label, decide_on in (("captured_adaptive", "device"), ("captured_adaptive_host", "host")):
            if decide_on == "device" and conditional_nodes_missing() is not None:
                continue
            try:
                ips, d_share = captured_images_per_second(loss, default_batch, device, seconds, images,
                                                          schedule="adaptive", decide_on=decide_on)
            except FaceganError as exc:  # the capture failed: say so in the figures, measure the rest
                print(f"FAILED: {loss} {label}: {exc}", file=sys.stderr, flush=True)
                result[f"{label}_error"] = str(exc)
                continue
            result[f"{label}_images_per_s"] = round(ips, 2)
            result[f"{label}_batch_size"] = default_batch
            result[f"{label}_d_share"] = round(d_share, 4)
    for key in [k for k in result if k.endswith("_images_per_s") and k != "tutorial_images_per_s"]:
        label = key[: -len("_images_per_s")]
        suffix = label[len("facegan"):] if label.startswith("facegan") else "_" + label
        result["ratio" + suffix] = round(result[key] / tutorial_ips, 3)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring time per loop")
    parser.add_argument("--losses", default="dcgan,wgan,wgan-gp")
    parser.add_argument("--num-images", type=int, default=640)
    parser.add_argument("--batch-sizes", default="20,64,256", help="minibatches of the GPU's eager and captured steps")
    args = parser.parse_args()
    provenance.announce(__spec__.name)
    device = select_device(args.device)
    images = synthetic_faces(args.num_images, 80, seed=0).images
    batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    print(f"{'objective':10} {'tutorial img/s (b=20)':>22} {'facegan img/s':>22} {'ratio':>7} {'facegan b=20':>13} {'ratio':>7}")
    for loss in args.losses.split(","):
        r = bench_loss(loss, device, args.seconds, images, batch_sizes)
        results[loss] = r
        extra = [k[len("ratio_"):] for k in r if k.startswith("ratio_") and k != "ratio_batch20"]
        print(f"{loss:10} {r['tutorial_images_per_s']:22.1f} {r['facegan_images_per_s']:14.1f} (b={r['facegan_batch_size']:3d}) "
              f"{r['ratio']:7.2f} {r['facegan_batch20_images_per_s']:13.1f} {r['ratio_batch20']:7.2f}"
              + "".join(f"\n{'':10} {label}: {r[('facegan_' if not label.startswith('captured') else '') + label + '_images_per_s']:.1f}"
                        f" img/s ({r['ratio_' + label]:.2f}x)" for label in extra)
              + "".join(f"\n{'':10} {label}: {r[label + '_d_share']:.1%} D steps"
                        for label in ("captured_adaptive", "captured_adaptive_host") if label + "_d_share" in r),
              flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
