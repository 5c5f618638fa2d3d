"""Part 3 of the collapse benchmark (issue 4): the same study on 80 x 80 faces, longer runs, on a GPU.

The study (:mod:`experiments.collapse.study`) that ``experiments/collapse/benchmark.py`` runs at
32 x 32 on the CPU, here at the tutorial's 80 x 80 with facegan's default networks (DCGAN loss,
widths 64, latent 128):

- face ladders (k of the 96 modes, n repeated images, a stable run's latent pulled towards a few
  anchors), rendered at 80 x 80; Spearman of facegan's diversity and coverage with the ground
  truth's modes;
- training histories: runs designed to collapse (trained as the stable ones, then the critic is
  frozen and G's learning rate raised, as at 32 x 32) and stable runs, a checkpoint every few
  epochs; every checkpoint scored by facegan in each feature space and classified by the ground
  truth; per run the ground-truth modes of facegan's choice, the lowest-FID checkpoint, the last
  and the ground-truth best, and the detected against the ground-truth collapse onset.

It runs on a bare GPU machine: PyTorch, torchvision, scipy and tqdm, no MLflow. The runs keep
their checkpoints in memory (``facegan.run_tracker.MemoryTracker``) and are scored with the
evaluation engine ``facegan evaluate`` itself uses (``evaluation.engine``, fed the generators in
memory), so the choice and the onset are exactly what ``facegan evaluate --run`` would report for
the same checkpoints. The ground-truth classifier
sees 32 x 32: samples are scaled down first, and its held-out accuracy is measured on 80 x 80
renders scaled the same way.

Feature spaces: ``random`` and ``encoder``: pass ``--encoder FILE`` (from ``facegan encoder
--image-size 80``) or ``--encoder-weights FILE`` (its ``state_dict``, for a machine whose older
PyTorch cannot read a TorchScript file written by a newer one), or the script trains one on the
real images first (84 s on the H100 machine's 16 CPU cores). Inception is left out: its weights are
a download, and the GPU machines here reach no network.

Scales (``--scale``): ``gpu80``, the CPU benchmark's own configuration (``study.STABLE``)
for 60 epochs with a checkpoint every 3 and the designed collapse after 45; ``gpu80-lr2e-4``, the
DCGAN paper's learning rates for 100 epochs (too slow to learn much: see the README); ``tiny``,
seconds on the CPU for the tests.

Usage (from the repository root; ``PYTHONPATH=.`` where facegan is not installed)::

    python -m experiments.collapse.benchmark_gpu [--device cuda] [--scale gpu80] [--encoder FILE |
        --encoder-weights FILE] [--no-ladders] [--out DIR]
    python -m experiments.collapse.benchmark_gpu --log-study FILE.json [--tracking-uri URI]

Writes ``collapse_benchmark-<scale>.json`` and ``.md`` under ``--out`` (default
``experiments/results/``) after every run, so a run stopped early keeps what it finished. The
second form logs a finished study's figures and files to MLflow, on a machine that has it (the
GPU machine may not). ``python -m experiments.collapse.replay`` replays a changed collapse rule on the JSON
as on the CPU benchmark's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from evaluation.encoder import Encoder, EncoderSettings, encoder_format, save_encoder, train_encoder
from evaluation.features import get_extractor
from evaluation.metrics import RealReference
from evaluation.engine import Scorer, evaluate, generator_batches
from evaluation.ranking import Evaluation
from evaluation.sources import GeneratorCheckpoint
from facegan.checkpoint import load_generator
from facegan.common import select_device
from facegan.errors import FaceganError
from facegan.scoring import real_images
from facegan.run_tracker import MemoryTracker, checkpoint_name
from facegan.synthetic import synthetic_faces

from experiments import RESULTS_DIR, provenance
from experiments.collapse import ground_truth as gt
from experiments.collapse import study

IMAGE_SIZE = 80

# facegan's default 80 x 80 networks with the DCGAN loss and a fixed one-to-one D/G schedule;
# no sample grids or resume states: only the checkpoints are needed.
GPU_BASE_OVERRIDES = {
    "train.loss": "dcgan",
    "model.image_size": IMAGE_SIZE,
    "train.batch_size": 64,
    "train.schedule": "fixed",
    "train.n_critic": 1,
    "tracking.sample_every": 10**6,
    "tracking.resume_every": 10**6,
    "tracking.num_samples": 16,
}
DCGAN_PAPER = {"train.lr_g": 2e-4, "train.lr_d": 2e-4}  # the DCGAN paper's, with batch 64
_SIZES = dict(num_real=2000, num_samples=2000, gt_samples=10000, num_train_images=2000,
              face_modes_ladder=(96, 72, 48, 32, 24, 16, 12, 8, 4, 2, 1), digit_modes_ladder=(),
              repeats_ladder=(2000, 1000, 500, 250, 120, 60, 30, 15, 8, 4, 2, 1))

SCALES = {
    # The CPU benchmark's own configuration (study.STABLE: minibatch 32, learning
    # rates 2e-3) and schedule (a designed collapse three quarters in), at 80 x 80 with the
    # default networks.
    "gpu80": study.Scale(
        name="gpu80", **_SIZES,
        runs=(study.RunSpec("collapsing", study.STABLE, True, (0, 1, 2), collapse_after=45),
              study.RunSpec("stable", study.STABLE, False, (0, 1))),
        epochs=60, checkpoint_every=3,
    ),
    # Measured first (H100): the DCGAN paper's learning rates learn ~20x less per epoch, and
    # after 100 epochs the best checkpoints held 11-15 of the 96 modes, mostly unrecognisable.
    "gpu80-lr2e-4": study.Scale(
        name="gpu80-lr2e-4", **_SIZES,
        runs=(study.RunSpec("collapsing", DCGAN_PAPER, True, (0, 1, 2), collapse_after=75),
              study.RunSpec("stable", DCGAN_PAPER, False, (0, 1))),
        epochs=100, checkpoint_every=5,
    ),
    # For tests, on the CPU: seconds, not a measurement.
    "tiny": study.Scale(
        name="tiny-gpu80", num_real=48, num_samples=40, gt_samples=40, encoder=EncoderSettings(epochs=1, batch_size=16),
        face_modes_ladder=(96, 8, 1), digit_modes_ladder=(), repeats_ladder=(40, 4, 1),
        runs=(study.RunSpec("collapsing", {**study.STABLE, "model.g_width": 8, "model.d_width": 8}, True, (0,),
                            collapse_after=2),),
        epochs=3, checkpoint_every=1, num_train_images=32,
    ),
}
# Runs in this order, so that a run stopped early still holds both kinds.
ORDER = (("collapsing", 0), ("stable", 0), ("collapsing", 1), ("stable", 1), ("collapsing", 2))


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def train_memory_run(spec: study.RunSpec, seed: int, scale: study.Scale,
                     device: torch.device) -> dict[int, torch.nn.Module]:
    """Train one run in memory; returns its generator checkpoints by epoch."""
    tracker = MemoryTracker(f"{spec.name}-seed{seed}")
    study.train_into(tracker, spec, seed, scale, {**GPU_BASE_OVERRIDES, "train.device": device.type})
    generators = {}
    with tempfile.TemporaryDirectory() as tmp:
        for epoch, payload in sorted(tracker.checkpoints.items()):
            path = Path(tmp) / f"generator-{epoch}.pt"
            path.write_bytes(payload)
            generators[epoch], _ = load_generator(path)
    return generators


def ground_truth_of(generators: dict[int, torch.nn.Module], classifier, num_samples: int,
                    device: torch.device) -> dict[int, dict]:
    return {epoch: classifier.count_modes(torch.cat(list(generator_batches(g, num_samples, device)))).to_dict()
            for epoch, g in generators.items()}


def evaluate_generators(run_id: str, generators: dict[int, torch.nn.Module], scorer: Scorer) -> Evaluation:
    """What ``facegan evaluate --run`` computes for these checkpoints: the same engine, without a store."""
    checkpoints = [GeneratorCheckpoint(epoch, g, label=checkpoint_name(epoch)) for epoch, g in sorted(generators.items())]
    evaluation = evaluate(checkpoints, scorer, None, what=f"checkpoint of run {run_id}")
    evaluation.run_id = run_id
    return evaluation



class MemoryHistories:
    """The study's runs in memory on ``device``, scored with the evaluation engine ``facegan evaluate``
    uses (``scorers``: ``{space: Scorer}``); only the current run's generators are kept."""

    def __init__(self, scale: study.Scale, device: torch.device, classifier, scorers: dict[str, Scorer]):
        self.scale, self.device, self.classifier, self.scorers = scale, device, classifier, scorers
        self.generators: dict[str, dict[int, torch.nn.Module]] = {}

    def train(self, spec: study.RunSpec, seed: int) -> str:
        run_id = f"{spec.name}-seed{seed}"
        self.generators = {run_id: train_memory_run(spec, seed, self.scale, self.device)}
        return run_id

    def ground_truth(self, run_id: str, *, keep_best: bool):
        generators = self.generators[run_id]
        truth = ground_truth_of(generators, self.classifier, self.scale.gt_samples, self.device)
        return truth, generators[study.gt_best_epoch(truth)] if keep_best else None

    def evaluate(self, run_id: str, space: str) -> Evaluation:
        return evaluate_generators(run_id, self.generators[run_id], self.scorers[space])

def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (default: auto)")
    parser.add_argument("--encoder", type=Path, metavar="FILE",
                        help="the encoder feature space (from `facegan encoder --image-size 80`: a torch.export .pt2 "
                             "program, or an older TorchScript .pt); "
                             "default: train one on the real images first")
    parser.add_argument("--scale", choices=sorted(SCALES), default="gpu80",
                        help="gpu80: the CPU benchmark's configuration at 80 x 80 (default); gpu80-lr2e-4: "
                             "the DCGAN paper's learning rates, 100 epochs; tiny: seconds on the CPU, for tests")
    parser.add_argument("--encoder-weights", type=Path, metavar="FILE",
                        help="instead of --encoder: the encoder's weights (torch.save of its state_dict), for a "
                             "machine whose PyTorch cannot load an encoder file written by a newer one")
    parser.add_argument("--no-ladders", action="store_true", help="skip the ladders (they do not depend on "
                        "the scale's runs, except the truncation ladder, which is then skipped too)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--log-study", type=Path, metavar="FILE.json",
                        help="only log a finished study (its JSON and markdown) to MLflow, then exit")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    args = parser.parse_args(argv)
    if args.log_study is not None:
        return log_finished_study(parser, args.log_study, args.tracking_uri)
    scale = SCALES[args.scale]
    for option in (args.encoder, args.encoder_weights):
        if option is not None and not option.is_file():
            parser.error(f"{option}: no such file")
    if args.encoder is not None and args.encoder_weights is not None:
        parser.error("give --encoder or --encoder-weights, not both")
    if args.device not in ("auto", "cuda", "cpu"):
        parser.error(f"--device must be cuda, cpu or auto, got {args.device!r}")
    try:
        device = select_device(args.device)
    except FaceganError as exc:  # --device cuda without CUDA
        parser.error(str(exc))
    record = provenance.announce(__spec__.name, argv)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {message}", flush=True)

    encoder_info = {"file": str(args.encoder)} if args.encoder else {}
    if args.encoder_weights is not None:
        encoder = Encoder(scale.encoder.width)
        try:
            encoder.load_state_dict(torch.load(args.encoder_weights, map_location="cpu", weights_only=True))
        except Exception as exc:  # noqa: BLE001 - not a weights file, or another encoder's: say which
            parser.error(f"--encoder-weights {args.encoder_weights}: not the weights of a width-"
                         f"{scale.encoder.width} facegan encoder ({type(exc).__name__})")
        args.encoder = save_encoder(encoder.eval(), Path(tempfile.mkdtemp(prefix="facegan-encoder-")) / "encoder.pt2")
        # The file does not record its training; the scale assumes `facegan encoder`'s default epochs.
        encoder_info = {"weights": str(args.encoder_weights), "epochs": scale.encoder.epochs}
    torch.backends.cudnn.benchmark = True
    classifier = gt.FaceClassifier.load_or_train().to(device)
    real = synthetic_faces(scale.num_train_images, IMAGE_SIZE, seed=0)
    faces = study.Domain("faces80", synthetic_faces(scale.num_real, IMAGE_SIZE, seed=0).images, classifier,
                         gt.num_face_modes(), scale.face_modes_ladder, image_size=IMAGE_SIZE)
    ground_truth = {"faces80": {
        "held_out_accuracy": classifier.held_out_accuracy(seed=1_000_003 + IMAGE_SIZE, size=IMAGE_SIZE),
        "train_seconds": round(classifier.seconds, 1),
        "real_set": classifier.count_modes(faces.real).to_dict(),
    }}
    log(f"ground truth at {IMAGE_SIZE} x {IMAGE_SIZE}: {ground_truth['faces80']['held_out_accuracy']}")

    if args.encoder is None:
        began = time.perf_counter()
        args.encoder = save_encoder(train_encoder(real.images, scale.encoder, progress=False),
                                    Path(tempfile.mkdtemp(prefix="facegan-encoder-")) / "encoder.pt2")
        encoder_info = {"trained_here": asdict(scale.encoder), "seconds": round(time.perf_counter() - began, 1)}
        log(f"encoder trained in {encoder_info['seconds']} s")
    extractors = {"random": get_extractor("random", device=str(device)),
                  "encoder": get_extractor(f"{encoder_format(args.encoder)}:{args.encoder}", device=str(device))}
    scorers = {space: Scorer(ex, real_images(real), scale.num_samples, device=device)
               for space, ex in extractors.items()}

    references = {space: RealReference.from_features(ex.extract(faces.real)) for space, ex in extractors.items()}
    result = {
        "provenance": record,
        "scale": scale.name,
        "device": device_name(device),
        "torch": torch.__version__,
        "image_size": IMAGE_SIZE,
        "num_real": scale.num_real,
        "num_samples": scale.num_samples,
        "settings": {"runs": [asdict(r) for r in scale.runs], "base_overrides": GPU_BASE_OVERRIDES,
                     "epochs": scale.epochs, "checkpoint_every": scale.checkpoint_every,
                     "num_train_images": scale.num_train_images, "features": list(extractors),
                     "gt_samples": scale.gt_samples, "encoder": {"epochs": _encoder_epochs(encoder_info)},
                     "encoders": {"faces80": encoder_info}},
        "ground_truth": ground_truth,
        "ladders": {},
        "histories": {"runs": [], "reliability": {}},
        "targets": {},
        "gpu": f"this is the GPU part, run on {device_name(device)}",
    }
    histories = MemoryHistories(scale, device, classifier, scorers)
    study.run_study(result, scale, [faces], {faces.name: extractors}, {faces.name: references}, histories, log,
                    ladders=not args.no_ladders, order=ORDER, after_run=lambda r: write(r, args.out, started))
    result = write(result, args.out, started)
    print(study.markdown(result))
    print(json.dumps(study.headline(result), default=study.json_default))
    return result


def _encoder_epochs(info: dict) -> int | None:
    return info["trained_here"]["epochs"] if "trained_here" in info else info.get("epochs")


def write(result: dict, out: Path, started: float) -> dict:
    """Refresh the targets and write the JSON and the table (after every run)."""
    study.finish(result, started)
    study.write_result(result, out, f"collapse_benchmark-{result['scale']}")
    return result


def log_finished_study(parser: argparse.ArgumentParser, path: Path, tracking_uri: str) -> None:
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        parser.error(f"--log-study {path}: cannot read it as JSON ({exc})")
    if not isinstance(result, dict) or not {"scale", "ladders", "histories", "targets"} <= result.keys():
        parser.error(f"--log-study {path}: not a collapse benchmark result")
    markdown_path = path.with_suffix(".md")
    paths = [path] + ([markdown_path] if markdown_path.is_file() else [])
    run_id = study.log_study(result, tracking_uri, paths)
    print(f"logged the study as MLflow run {run_id} (experiment {study.EXPERIMENT}) at {tracking_uri}")


if __name__ == "__main__":
    main()
