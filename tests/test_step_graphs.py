"""The captured step's functions (facegan.step_graphs) against the eager step, on the CPU.

CUDA graphs need a GPU (``experiments/check_gpu_step.py`` captures them there); what the CPU can
check is everything else: the step functions a graph records, run uncaptured with their branches
decided on the host, train bit for bit like :meth:`facegan.training.GAN.step` on the same random
draws, for every objective and schedule, with the lazy penalty and a short last minibatch.
"""

import pytest
import torch

from facegan.config import load_config
from facegan.errors import FaceganError
from facegan.step_graphs import (
    DrawnFirst,
    StepGraphs,
    _initialise_optimizer_state,
    use_captured_steps,
)
from facegan.synthetic import synthetic_faces
from facegan.training import DRAWN, EpochTotals, Schedule, build_gan

TINY = {"model.image_size": 32, "model.g_width": 8, "model.d_width": 8, "model.latent_dim": 16,
        "train.batch_size": 16, "train.device": "cpu", "train.n_critic": 2}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def images():
    return synthetic_faces(40, 32, seed=3).images  # 2 full minibatches of 16 and a short one of 8


def eager_epoch(gan, images, order, batch_size, schedule, *, drawn_first: bool) -> EpochTotals:
    """The reference: GAN.step minibatch by minibatch; ``drawn_first`` draws each minibatch's
    latents and penalty points before its step, as the adaptive graph's minibatches do."""
    totals = EpochTotals()
    for start in range(0, images.shape[0], batch_size):
        real = (images[order[start:start + batch_size]].float() / 127.5 - 1.0).contiguous(memory_format=gan.memory_format)
        n = real.shape[0]
        noise = DRAWN
        if drawn_first:
            z = torch.randn(n, gan.latent_dim)
            noise = DrawnFirst(z, torch.rand(n, 1, 1, 1) if gan.objective.needs_penalty else None)
        gan.step(real, schedule, totals, noise=noise)
    return totals


def states(gan) -> dict:
    return {"g": gan.generator.state_dict(), "d": gan.discriminator.state_dict(),
            "opt_g": gan.opt_g.state_dict()["state"], "opt_d": gan.opt_d.state_dict()["state"]}


def assert_identical(a, b, path=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_identical(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    else:
        assert a == b, path


def train_both(images, overrides, epochs=3, decide_on="device"):
    cfg = load_config(overrides={**TINY, **overrides})
    t = cfg.train
    torch.manual_seed(0)
    eager = build_gan(cfg, CPU)
    torch.manual_seed(0)
    stepped = build_gan(cfg, CPU)
    graphs = StepGraphs(stepped, t.schedule, t.n_critic, t.gp_every, tuple(images.shape[1:]), CPU, capture=False,
                        decide_on=decide_on)
    schedules = [Schedule(t.schedule, t.n_critic, t.gp_every) for _ in range(2)]
    history = []
    for epoch in range(epochs):
        order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(epoch))
        torch.manual_seed(100 + epoch)
        drawn_first = t.schedule == "adaptive" and decide_on == "device"
        a = eager_epoch(eager, images, order, t.batch_size, schedules[0], drawn_first=drawn_first)
        torch.manual_seed(100 + epoch)
        b = graphs.run_epoch(images, order, t.batch_size, schedules[1])
        history.append((a.metrics(1.0), b.metrics(1.0)))
        assert schedules[0].state() == schedules[1].state()
    return eager, stepped, history


@pytest.mark.parametrize("loss, schedule, gp_every, decide_on", [
    ("dcgan", "adaptive", 1, "device"), ("wgan", "adaptive", 1, "device"), ("wgan-gp", "adaptive", 1, "device"),
    ("wgan-gp", "adaptive", 3, "device"), ("dcgan", "fixed", 1, "host"), ("wgan-gp", "fixed", 3, "host"),
    # decided on the host between graphs: the eager step's own random draws
    ("dcgan", "adaptive", 1, "host"), ("wgan-gp", "adaptive", 3, "host"),
])
def test_the_captured_steps_train_bit_for_bit_like_the_eager_step(images, loss, schedule, gp_every, decide_on):
    eager, stepped, history = train_both(images, {"train.loss": loss, "train.schedule": schedule,
                                                  "train.gp_every": gp_every}, epochs=2, decide_on=decide_on)
    for reference, captured in history:
        assert captured == reference  # losses, accuracies, penalty, step counts: every float equal
    assert_identical(states(eager), states(stepped))  # weights, BatchNorm statistics, optimiser moments
    d_steps = sum(r["d_steps"] for r, _ in history)
    g_steps = sum(r["g_steps"] for r, _ in history)
    assert d_steps > 0 and g_steps > 0 and d_steps + g_steps == 2 * 3  # both branches taken, one per minibatch


def test_the_adaptive_rule_decides_as_the_tutorial_after_every_scored_minibatch(images):
    """A run long enough for D streaks, G runs and forced steps in one epoch (n_critic 3)."""
    _, _, history = train_both(images, {"train.loss": "wgan", "train.n_critic": 3, "train.batch_size": 8}, epochs=2)
    for reference, captured in history:
        assert captured == reference
    assert {r["d_steps"] for r, _ in history} != {0.0}


def test_optimiser_state_made_before_a_capture_trains_like_lazily_made_state():
    """The state a capture needs made in advance (moments, step counters) is what the first
    step() would have made: the next steps give the same weights and state."""
    for make in (lambda p: torch.optim.Adam(p, 1e-3, betas=(0.5, 0.999)), lambda p: torch.optim.RMSprop(p, 5e-5)):
        torch.manual_seed(0)
        a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
        b.load_state_dict(a.state_dict())
        opt_a, opt_b = make(a.parameters()), make(b.parameters())
        _initialise_optimizer_state(opt_b)
        assert_identical(dict(zip("wb", (p.detach() for p in a.parameters()))),
                         dict(zip("wb", (p.detach() for p in b.parameters()))))
        x = torch.randn(5, 4)
        for _ in range(3):
            for net, opt in ((a, opt_a), (b, opt_b)):
                opt.zero_grad()
                net(x).square().sum().backward()
                opt.step()
        assert_identical(a.state_dict(), b.state_dict())
        assert_identical(opt_a.state_dict()["state"], opt_b.state_dict()["state"])


def test_train_compile_chooses_per_device_and_refuses_what_it_cannot_do():
    cuda = torch.device("cuda")
    assert use_captured_steps("auto", cuda, distributed=False)
    assert use_captured_steps("cuda-graphs", cuda, distributed=False)
    assert not use_captured_steps("auto", CPU, distributed=False)
    assert not use_captured_steps("off", cuda, distributed=False)
    assert not use_captured_steps("auto", cuda, distributed=True)
    with pytest.raises(FaceganError, match=r"cuda-graphs cannot be used here: CUDA graphs capture GPU work; "
                                           r"this run trains on the CPU"):
        use_captured_steps("cuda-graphs", CPU, distributed=False)
    with pytest.raises(FaceganError, match="several training processes run eagerly"):
        use_captured_steps("cuda-graphs", cuda, distributed=True)


def uncaptured(*args, **kwargs):
    """A Trainer whose epochs run through the step graphs' functions, uncaptured (what the CPU can run)."""
    from facegan.training import Trainer

    trainer = Trainer(*args, **kwargs)
    t = trainer.cfg.train
    trainer.step_graphs = StepGraphs(trainer.gan, t.schedule, t.n_critic, t.gp_every,
                                     tuple(trainer.dataset.images.shape[1:]), trainer.device, capture=False)
    return trainer


def test_the_trainer_runs_its_epochs_through_the_step_graphs_and_resumes_them(tmp_path):
    """Through the real loop: the fixed schedule (the same random draws as the eager step) logs
    what the eager loop logs; an adaptive run resumed from its resume state (the schedule's state
    handed from the device to the host and back) continues exactly as a straight one."""
    from facegan.checkpoint import load_checkpoint
    from facegan.run_tracker import MemoryTracker
    from facegan.training import train

    faces = synthetic_faces(40, 32, seed=3)
    fixed = load_config(overrides={**TINY, "train.loss": "wgan-gp", "train.schedule": "fixed", "train.gp_every": 2,
                                   "train.epochs": 2})
    eager, stepped = MemoryTracker(), MemoryTracker()
    train(fixed, faces, eager, progress=False)
    train(fixed, faces, stepped, progress=False, trainer_class=uncaptured)
    for key in ("loss_d", "loss_g", "gradient_penalty", "accuracy_g", "d_steps", "g_steps"):
        assert stepped.metrics[key] == eager.metrics[key], key

    common = {**TINY, "train.loss": "dcgan", "tracking.resume_every": 2}
    straight = MemoryTracker()
    train(load_config(overrides={**common, "train.epochs": 4}), faces, straight, progress=False, trainer_class=uncaptured)
    cfg, first = load_config(overrides={**common, "train.epochs": 2}), MemoryTracker()
    train(cfg, faces, first, progress=False, trainer_class=uncaptured)
    path = tmp_path / "state.pt"
    path.write_bytes(first.resume_state)
    cfg.train.epochs = 4
    train(cfg, faces, first, resume_payload=load_checkpoint(path, kind="resume"), progress=False,
          trainer_class=uncaptured)
    for key in ("loss_d", "loss_g", "accuracy_g", "d_steps"):
        assert first.metrics[key] == straight.metrics[key], key
