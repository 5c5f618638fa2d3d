"""The ``facegan`` command: parse options, build the config, call the library.

Errors a user can cause arrive as :class:`~facegan.errors.FaceganError` and leave as one line on
stderr with exit status 1; Ctrl-C during training saves a resume state and exits with 130.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import click

from facegan.errors import FaceganError


def friendly_errors(func):
    """Turn FaceganError into click's one-line ``Error: ...`` and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except FaceganError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="facegan")
def main():
    """Train face GANs, score every checkpoint, and keep the best one before mode collapse.

    \b
    Typical session:
      facegan train --config experiments/quick.toml --evaluate random  # train, scored as it goes (offline)
      facegan evaluate --run latest --features inception  # standard FID (downloads weights once; offline: --features random)
      MLFLOW ui --backend-store-uri sqlite:///mlflow.db  # browse, under "Model training"
      facegan serve --model models:/facegan-generator@best
    """


# ----------------------------------------------------------------------------------------------
# prepare


@main.command()
@click.argument("source")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Dataset file to write (e.g. data/lfw80.pt).")
@click.option("--size", default=80, show_default=True, help="Output image size in pixels (square).")
@click.option("--per-identity", default=2, show_default=True, help="At most this many images per person folder.")
@click.option("--limit", default=2000, show_default=True, help="Keep the first N images after shuffling.")
@click.option("--crop", default=0.5, show_default=True, help="Centre crop keeping this fraction of width and height.")
@click.option("--seed", default=0, show_default=True, help="Shuffle seed (and render seed for `synthetic`).")
@click.option("--holdout", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Also keep N held-out images (of people with no image in training), which `facegan evaluate` "
                   "uses to tell a generator that copies its training images from one that generates.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def prepare(source, out, size, per_identity, limit, crop, seed, holdout, quiet):
    """Turn an image folder (or `synthetic`) into one dataset file for training.

    SOURCE is a folder of images at any depth (LFW layout: one folder per person; jpg, jpeg,
    png, bmp, webp) or the word `synthetic` for the built-in procedural faces. Unreadable files
    are skipped and listed in the file's manifest.
    """
    from facegan.data import save_dataset
    from facegan.dataset import Dataset
    from facegan.folders import prepare_folder
    from facegan.synthetic import synthetic_faces, synthetic_holdout

    if source == "synthetic":
        dataset = synthetic_faces(limit, size, seed)
        if holdout:
            dataset = Dataset(dataset.images, {**dataset.manifest, "holdout": {"num_images": holdout}},
                              dataset.labels, synthetic_holdout(holdout, size, seed))
    else:
        dataset = prepare_folder(source, image_size=size, per_identity=per_identity, limit=limit,
                                 crop=crop, seed=seed, progress=not quiet, holdout=holdout)
    save_dataset(dataset, out)
    skipped = len(dataset.manifest.get("skipped_files", []))
    held = 0 if dataset.holdout is None else dataset.holdout.shape[0]
    click.echo(f"wrote {out}: {dataset.images.shape[0]} images of {size}x{size}"
               + (f" and {held} held out" if held else "")
               + (f", {skipped} unreadable files skipped" if skipped else "")
               + f"; digest {dataset.digest[:12]}")


# ----------------------------------------------------------------------------------------------
# train

_TRAIN_OPTIONS = {
    # CLI option name -> config key
    "data": "data.source",
    "loss": "train.loss",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "image_size": "model.image_size",
    "num_images": "data.num_images",
    "checkpoint_every": "tracking.checkpoint_every",
    "sample_every": "tracking.sample_every",
    "seed": "train.seed",
    "device": "train.device",
    "experiment": "tracking.experiment",
    "tracking_uri": "tracking.tracking_uri",
    "run_name": "tracking.run_name",
    "evaluate": "evaluate.features",
    "stop_on_collapse": "evaluate.stop_on_collapse",
    "stop_patience": "evaluate.stop_patience",
}
# What may change when a run is resumed; the rest must stay as the run was started. How its
# checkpoints are judged may change: a user who disagrees with a stop continues without it.
_RESUMABLE = {"train.epochs", "train.device", "tracking.tracking_uri", "evaluate.features", "evaluate.num_samples",
              "evaluate.inception_weights", "evaluate.dinov2_weights", "evaluate.stop_on_collapse", "evaluate.stop_patience",
              "evaluate.register", "tracking.send_timeout"}
_FEATURES_HELP = ("inception (standard FID; downloads weights once), dinov2 (DINOv2 ViT-B/14, as Stein et al. "
                  "2023 recommend; downloads weights once), random (offline, ranks within a study only), "
                  "export:PATH (your own network saved with torch.export.save, a .pt2 file: images N x 3 x S "
                  "x S in [0, 1] with a dynamic batch N, S from its extra file input_size, else its fixed input "
                  "size, else 224; or one from `facegan encoder`) or torchscript:PATH (the same saved with "
                  "TorchScript, S from its attribute input_size)")


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config (see experiments/*.toml).")
@click.option("--data", help="`synthetic` (default), a file from `facegan prepare`, or an image folder.")
@click.option("--loss", type=click.Choice(["dcgan", "wgan", "wgan-gp"]), help="Objective [default: wgan-gp].")
@click.option("--epochs", type=int, help="Epochs to train [default: 10000, as the tutorial].")
@click.option("--batch-size", type=int, help="Minibatch size [default: 64].")
@click.option("--image-size", type=int, help="Image size: 32, 40, 64, 80, 128 or 160 [default: 80].")
@click.option("--num-images", type=int, help="Training images used [default: 2000].")
@click.option("--checkpoint-every", type=int, help="Epochs between generator checkpoints [default: 100].")
@click.option("--sample-every", type=int, help="Epochs between sample grids [default: 1].")
@click.option("--seed", type=int, help="Random seed [default: 0].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="[default: auto: CUDA when present].")
@click.option("--experiment", help="MLflow experiment name [default: facegan].")
@click.option("--tracking-uri", help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db].")
@click.option("--run-name", help="MLflow run name.")
@click.option("--resume", "resume_run_id", metavar="RUN_ID", help="Continue this run from its last resume state.")
@click.option("--evaluate", metavar="FEATURES",
              help="Score every checkpoint as it is written, as `facegan evaluate --features` would: "
                   + _FEATURES_HELP + "; none to skip  [default: none]")
@click.option("--stop-on-collapse", is_flag=True, default=None,
              help="With --evaluate: stop once the collapse rule confirms an onset (the checkpoint after it).")
@click.option("--stop-patience", type=click.IntRange(min=1), metavar="K",
              help="With --evaluate: stop after K checkpoints in a row without a new best (the published "
                   "patience rule; 3 to 5 is usual).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config value, e.g. --set train.lr_g=2e-4 (repeatable).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly_errors
def train(config_file, overrides, resume_run_id, quiet, **options):
    """Train a GAN with full MLflow tracking.

    Logs the resolved config, the dataset (with a digest), per-epoch losses, accuracies, step
    counts and images/s, a sample grid every --sample-every epochs (and at step 0), a generator
    checkpoint every --checkpoint-every epochs and at the end, and a resume state every 10
    epochs. Ctrl-C saves a resume state; continue with --resume RUN_ID. The last line printed
    is `run_id: <id>`.

    With --evaluate, every checkpoint is scored right after it is written (on the training
    device, logged exactly as `facegan evaluate` logs it), the run's tags follow the best epoch
    and any collapse onset, the progress bar shows the latest FID and diversity, and at the end
    the best checkpoint is registered as models:/facegan-generator@best. --stop-on-collapse
    and --stop-patience stop early (resume state saved, run FINISHED and tagged
    facegan.stopped); `facegan train --resume RUN_ID` continues a stopped run without stopping
    again for the same onset. Config keys: [evaluate] features, num_samples, stop_on_collapse,
    stop_patience, inception_weights, dinov2_weights, register.

    A tracking store that goes away mid-run does not stop training: what is logged is sent when
    it is back; a run that ends first waits --set tracking.send_timeout seconds (default 120),
    then keeps the rest in ./facegan-unsent-RUN_ID/ for `facegan sync RUN_ID`.

    On several processes: torchrun --nproc_per_node=N -m facegan train ... (one per GPU, or N
    on the CPU with --device cpu). --batch-size is then the whole minibatch, split among them;
    process 0 alone logs to MLflow (one run, param train.world_size) and resumes as many.
    """
    from facegan.config import load_config, parse_override
    from facegan.distributed import Processes

    procs = Processes.from_environment()  # one process, or this one's place under torchrun
    settings = dict(parse_override(text) for text in overrides)
    settings.update({_TRAIN_OPTIONS[name]: value for name, value in options.items() if value is not None})
    if settings.get("train.world_size", procs.world_size) != procs.world_size:
        raise FaceganError(f"train.world_size is the number of training processes, set by torchrun "
                           f"({procs.world_size} here); start {settings['train.world_size']} with "
                           f"torchrun --nproc_per_node=N instead of setting it")
    settings.pop("train.world_size", None)
    if not resume_run_id:
        # A bad file or value fails before torch and mlflow load.
        cfg = load_config(config_file, {**settings, "train.world_size": procs.world_size})
    elif config_file:
        raise FaceganError("--config cannot be combined with --resume: a resumed run keeps its config")
    else:
        fixed = sorted(set(settings) - _RESUMABLE)
        if fixed:
            raise FaceganError(f"cannot change {', '.join(fixed)} when resuming; only --epochs and --device may change")
        cfg = None  # the run's own, from its resume state
    if procs.distributed:
        from facegan.distributed import ReportedByMain

        try:
            _train(cfg, settings, resume_run_id, quiet, procs)
        except ReportedByMain:  # rank 0 has said why
            sys.exit(1)
        finally:
            from facegan import distributed

            distributed.stop(procs)
    else:
        _train(cfg, settings, resume_run_id, quiet, procs)


def _train(cfg, settings: dict, resume_run_id: str | None, quiet: bool, procs) -> None:
    """The body of ``facegan train`` once the options are checked. On several processes every
    rank runs it; only rank 0 (``procs.is_main``) talks to MLflow, scores and prints."""
    from facegan import distributed, tracking
    from facegan.config import Config, with_overrides
    from facegan.data import load_data
    from facegan.evaluate import training_extractor, training_judge, training_scorer
    from facegan.training import fetch_resume_payload, train as run_training, training_device

    main = procs.is_main
    if cfg is not None:
        training_device(cfg, procs)  # e.g. --device cuda without CUDA, before any process waits for another
    distributed.start(procs)
    tracker = None
    if resume_run_id:
        def fetch():
            nonlocal tracker
            tracker = tracking.MlflowRunTracker.reopen(settings.get("tracking.tracking_uri"), resume_run_id)
            return fetch_resume_payload(tracker)

        payload = distributed.on_main(fetch, procs, share=True)
        cfg = with_overrides(Config.from_dict(payload["config"]), settings)
        if cfg.train.world_size != procs.world_size:
            raise FaceganError(f"run {resume_run_id} was trained on {cfg.train.world_size} process(es); resume it on "
                               f"as many (torchrun --nproc_per_node={cfg.train.world_size} ... --resume), "
                               f"not {procs.world_size}")
        training_device(cfg, procs)
        if main:
            click.echo(f"resuming run {resume_run_id} from epoch {payload['epoch']} of {cfg.train.epochs}", err=True)
    else:
        payload = None
        # An unreachable store fails before any work.
        distributed.on_main(lambda: tracking.connect(cfg.tracking.tracking_uri), procs)

    # Before the data and the run: a bad --evaluate value or missing weights fail in seconds.
    extractor = distributed.on_main(lambda: training_extractor(cfg), procs)
    dataset = load_data(cfg.data.source, num_images=cfg.data.num_images, image_size=cfg.model.image_size,
                        seed=cfg.data.seed, progress=not quiet and main)
    scorer = distributed.on_main(lambda: training_scorer(cfg, dataset, extractor=extractor, progress=not quiet), procs)
    if not main:
        try:
            run_training(cfg, dataset, None, resume_payload=payload, progress=False, processes=procs)
        except KeyboardInterrupt:
            sys.exit(130)
        return
    if payload is None:
        tracker = tracking.MlflowRunTracker.start(cfg.tracking.tracking_uri, cfg.tracking.experiment, cfg.tracking.run_name)
    uri = tracking.resolve_tracking_uri(cfg.tracking.tracking_uri)
    click.echo(f"run {tracker.run_id} in experiment {cfg.tracking.experiment!r} at {uri}: "
               f"{cfg.train.loss}, {dataset.images.shape[0]} images of {cfg.model.image_size}px, "
               f"{cfg.train.epochs} epochs"
               + (f", {procs.world_size} processes" if procs.distributed else "")
               + (f"; scoring every checkpoint ({scorer.space} features)" if scorer is not None else ""), err=True)
    tracker.send_timeout = cfg.tracking.send_timeout
    with tracking.MlflowRunSource(tracker.client, tracker.run_id, writer=tracker) as source:
        judge = None if scorer is None else training_judge(cfg, scorer, source, progress=not quiet)
        try:
            trainer = run_training(cfg, dataset, tracker, resume_payload=payload, progress=not quiet, judge=judge,
                                   processes=procs)
        except KeyboardInterrupt:
            again = "torchrun ... " if procs.distributed else ""
            click.echo(f"\ninterrupted: the last completed epoch is saved; continue with: "
                       f"{again}facegan train --resume {tracker.run_id}", err=True)
            click.echo(f"run_id: {tracker.run_id}")
            sys.exit(130)
    if judge is not None and judge.evaluation is not None:
        result = judge.evaluation
        click.echo(f"best checkpoint: epoch {result.best_epoch} ({result.choice.reason})", err=True)
        if result.registered:
            click.echo(f"registered: {result.registered}", err=True)
    if trainer.stopped is not None:
        click.echo(f"stopped early at epoch {trainer.epoch} of {cfg.train.epochs}: {trainer.stopped[1]}; "
                   f"to train on anyway: facegan train --resume {tracker.run_id}", err=True)
    if uri.startswith("sqlite:"):
        click.echo(f"browse: {_mlflow_command()} ui --backend-store-uri {uri}  (then open \"Model training\")", err=True)
    click.echo(f"run_id: {tracker.run_id}")


def _mlflow_command() -> str:
    """The `mlflow` beside this interpreter (a venv's is not on PATH unless it is activated)."""
    beside = Path(sys.executable).with_name("mlflow")
    return str(beside) if beside.is_file() else "mlflow"


main.help = main.help.replace("MLFLOW ui", f"{_mlflow_command()} ui")  # the group's typical session


# ----------------------------------------------------------------------------------------------
# sync


@main.command()
@click.argument("run_id")
@click.option("--folder", type=click.Path(file_okay=False), metavar="DIR",
              help="The run's unsent folder [default: ./facegan-unsent-RUN_ID, where `facegan train` left it].")
@click.option("--tracking-uri", help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db].")
@friendly_errors
def sync(run_id, folder, tracking_uri):
    """Send what a training run could not send while its tracking store was away.

    A run that ends while the store is away waits --set tracking.send_timeout seconds (default
    120), then keeps what is left (metrics, sample grids, checkpoints, the resume state, the
    run's status) in ./facegan-unsent-RUN_ID/. This sends it, in the order it was logged, and
    removes the folder; nothing already in the store is sent twice. `facegan train --resume`
    and `facegan evaluate --run` of that run do the same first.
    """
    from facegan import tracking

    path = Path(folder) if folder else tracking.unsent_folder(run_id)
    if not path.is_dir():
        raise FaceganError(f"no unsent folder {path}/ for run {run_id}: nothing to send")
    client = tracking.connect(tracking_uri)
    tracking.get_run(client, run_id)
    sent, left = tracking.sync_unsent(client, run_id, path)
    if left:
        raise FaceganError(f"sent {sent} records; {left} are still in {path}/ (run facegan sync {run_id} again "
                           "once the store answers)")
    click.echo(f"sent {sent} records of run {run_id} to {tracking.resolve_tracking_uri(tracking_uri)}", err=True)


# ----------------------------------------------------------------------------------------------
# evaluate


@main.command()
@click.option("--run", "runs", metavar="RUN_ID|latest", multiple=True,
              help="Evaluate every checkpoint of this training run; given several times, compare the runs as a study.")
@click.option("--experiment", metavar="NAME",
              help="Or: a study of every training run in this MLflow experiment (e.g. the tutorial's three objectives).")
@click.option("--samples", type=click.Path(), help="Or: a folder of sample folders, DIR/<epoch>/*.png (the tutorial's layout).")
@click.option("--real", type=click.Path(), help="Real images: a dataset file or an image folder. Required with --samples; "
              "with --run it replaces the run's own training data.")
@click.option("--features", default="inception", show_default=True, help="Feature space: " + _FEATURES_HELP + ".")
@click.option("--inception-weights", type=click.Path(dir_okay=False),
              help="Local FID Inception weights for offline machines: weights-inception-2015-12-05-6726825d.pth "
                   "(also published as pt_inception-2015-12-05-6726825d.pth) [env: FACEGAN_INCEPTION_WEIGHTS].")
@click.option("--dinov2-weights", type=click.Path(dir_okay=False),
              help="Local DINOv2 ViT-B/14 weights (timm's model.safetensors or Meta's dinov2_vitb14_pretrain.pth) for "
                   "--features dinov2 offline [env: FACEGAN_DINOV2_WEIGHTS].")
@click.option("--num-samples", type=int,
              help="Samples per checkpoint (--run), drawn from the same fixed latents; at most this many per folder "
                   "(--samples)  [default: --run: the count the run was already scored with in this feature space "
                   "(e.g. by `train --evaluate`), else 2000; --samples: 2000]")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results as JSON here.")
@click.option("--register", default="facegan-generator", show_default=True,
              help="Registered model name for the chosen generator (alias `best`); `none` to skip.")
@click.option("--tracking-uri", help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db].")
@click.option("--force", is_flag=True, help="Score again checkpoints already scored in this feature space.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@friendly_errors
def evaluate(runs, experiment, samples, real, features, inception_weights, dinov2_weights, num_samples, json_path,
             register, tracking_uri, force, device, quiet):
    """Score every checkpoint by FID and diversity, find the collapse onset, pick the best before it.

    \b
    Metrics per checkpoint: FID, KID, precision/recall, density/coverage, diversity (Vendi score
    relative to the real data) and duplicate/memorised shares. A checkpoint is collapsed when its
    coverage or diversity falls clearly (beyond what the real data shows by chance and beyond the
    run's own checkpoint-to-checkpoint wobble, and for two checkpoints running) below the best
    the run held for two checkpoints, or its duplicate share jumps; a single drop at the last
    checkpoint is reported as unconfirmed. The choice is the lowest FID before the onset,
    skipping checkpoints with a drop (checkpoints tied with it within KID noise are named).

    With --run, scores are logged back to the run (metrics `<features>/<name>` at step=epoch, linked
    to each checkpoint's model), the run is tagged with the chosen and onset epochs, the ranking
    and a plot are logged, and the choice is registered as models:/facegan-generator@best.
    A second call scores only checkpoints not yet scored in the same feature space.

    A checkpoint whose samples copy training images beyond what chance allows (compared with
    held-out real images, or a split of the training set) is marked `memorised` and never chosen.

    With --experiment NAME (or --run given several times) the runs form a study: every checkpoint
    of every run is scored in one feature space against the same real images (runs trained on
    different data are refused), each run gets its own choice, and the study's best (the lowest
    FID among them) is registered; the study is logged as a run of its own with a comparison plot
    and a table of runs.
    """
    from evaluation.ranking import write_json
    from facegan import evaluate as evaluating

    if sum(map(bool, (runs, experiment, samples))) != 1:
        raise FaceganError("give one of --run RUN_ID|latest (several for a study), --experiment NAME, or --samples DIR "
                           "(with --real)")
    if num_samples is not None and num_samples < 10:
        raise FaceganError(f"--num-samples must be at least 10, got {num_samples}")
    if samples:
        if not real:
            raise FaceganError("--samples needs --real FILE|FOLDER: the real images to compare with")
        result = evaluating.evaluate_folders(samples, real, features=features, inception_weights=inception_weights, dinov2_weights=dinov2_weights,
                                             num_samples=num_samples, device=device, progress=not quiet)
    elif experiment or len(runs) > 1:
        study = evaluating.evaluate_study(
            list(runs), experiment, features=features, inception_weights=inception_weights, dinov2_weights=dinov2_weights, num_samples=num_samples,
            real=real, tracking_uri=tracking_uri, force=force,
            register=None if register.lower() == "none" else register, device=device, progress=not quiet,
        )
        for run in study.runs:
            click.echo(f"== run {run.run_id} ({run.name}, {run.loss})")
            click.echo(run.evaluation.render_table() + "\n")
        click.echo(study.render_table())
        click.echo(f"study logged as run {study.study_run_id}")
        if study.registered:
            click.echo(f"registered: {study.registered} (epoch {study.best.evaluation.best_epoch} of run "
                       f"{study.best.run_id})")
        if json_path:
            write_json(study, json_path)
            click.echo(f"wrote {json_path}")
        return
    else:
        result = evaluating.evaluate_run(
            runs[0], features=features, inception_weights=inception_weights, dinov2_weights=dinov2_weights, num_samples=num_samples, real=real,
            tracking_uri=tracking_uri, force=force, register=None if register.lower() == "none" else register,
            device=device, progress=not quiet,
        )
    click.echo(result.render_table())
    if result.registered:
        click.echo(f"registered: {result.registered} (epoch {result.best_epoch} of run {result.run_id})")
    if json_path:
        write_json(result, json_path)
        click.echo(f"wrote {json_path}")


# ----------------------------------------------------------------------------------------------
# encoder


@main.command()
@click.option("--data", default="synthetic", show_default=True,
              help="Real images: `synthetic`, a file from `facegan prepare`, or an image folder.")
@click.option("--num-images", type=click.IntRange(min=2), default=2000, show_default=True,
              help="Images used (as `facegan train --num-images`).")
@click.option("--image-size", type=int, default=80, show_default=True,
              help="Size the data is loaded at, as the run's; the encoder itself sees 32 x 32.")
@click.option("--data-seed", type=int, default=0, show_default=True, help="Seed of the built-in synthetic faces.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="File to write, e.g. encoder.pt2: a torch.export program (with its input size as the extra file "
                   "input_size), for --features export:OUT; a name ending in .pt writes TorchScript (deprecated by "
                   "PyTorch) for --features torchscript:OUT.")
# 60 is EncoderSettings.epochs (tests check they agree); not imported here, to keep torch out of --help.
@click.option("--epochs", type=click.IntRange(min=1), default=60, show_default=True, help="Training epochs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the encoder's training.")
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@friendly_errors
def encoder(data, num_images, image_size, data_seed, out, epochs, seed, force, quiet):
    """Learn a feature space from real images, offline, for `facegan evaluate`.

    Trains a small CNN self-supervised (SimCLR: two random views of each image, cropped,
    shifted, mirrored and slightly colour-jittered, must match) on the real images and writes
    it as a torch.export program. It needs no download and, unlike `random`, learns what tells
    these faces apart. Use it with `facegan evaluate --features export:OUT` (`torchscript:OUT`
    for a .pt file); train it once per dataset and keep the file, since scores from two encoders
    are not comparable. About 4 minutes for 2000 images on 2 CPU cores.
    """
    import time
    from pathlib import Path

    from evaluation.encoder import EncoderSettings, encoder_format, save_encoder, train_encoder
    from facegan.data import load_data

    if Path(out).exists() and not force:
        raise FaceganError(f"{out} exists; pass --force to replace it")
    dataset = load_data(data, num_images=num_images, image_size=image_size, seed=data_seed, progress=not quiet)
    started = time.perf_counter()
    model = train_encoder(dataset.images, EncoderSettings(epochs=epochs, seed=seed), progress=not quiet)
    save_encoder(model, out)
    click.echo(f"trained on {dataset.images.shape[0]} images in {time.perf_counter() - started:.0f} s; "
               f"use: facegan evaluate --features {encoder_format(out)}:{out}", err=True)
    click.echo(f"encoder: {out}")


# ----------------------------------------------------------------------------------------------
# generate and serve

_MODEL_HELP = ("A checkpoint file, models:/NAME@ALIAS, models:/m-<id>, or runs:/RUN_ID[/EPOCH] "
               "(the run's last or given checkpoint)  [default: models:/facegan-generator@best, "
               "which `facegan evaluate` registers]")


@main.command()
@click.option("--model", "model_spec", default="models:/facegan-generator@best", metavar="URI|FILE", help=_MODEL_HELP)
@click.option("-n", "num_images", type=click.IntRange(min=1), default=64, show_default=True, help="Number of faces.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write the PNGs into.")
@click.option("--seed", type=int, help="Latent seed: the same seed and model give the same images [default: random, printed].")
@click.option("--truncation", type=float, metavar="T",
              help="Redraw latent values beyond ±T (truncation trick): typical faces, less variety; e.g. 1.5.")
@click.option("--force", is_flag=True, help="Write into a non-empty --out; replaces the numbered PNGs and grid there.")
@click.option("--tracking-uri", help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db].")
@friendly_errors
def generate(model_spec, num_images, out, seed, truncation, force, tracking_uri):
    """Write N generated faces as 000000.png, 000001.png, ... and grid.png (the first 256) into --out.

    --out must be a new or empty folder, unless --force.
    """
    import secrets

    from facegan import generate as generating

    generating.validate_truncation(truncation)  # before the model loads, which can take seconds
    model = generating.load_model(model_spec, tracking_uri)
    if seed is None:
        seed = secrets.randbelow(2**31)
    paths = generating.generate(model, num_images, out, seed=seed, truncation=truncation, force=force)
    click.echo(f"wrote {len(paths)} faces and {generating.GRID_FILE} to {out} from {model.description}; "
               f"seed {seed}" + (f", truncation {truncation:g}" if truncation is not None else ""))


@main.command()
@click.option("--model", "model_spec", default="models:/facegan-generator@best", metavar="URI|FILE", help=_MODEL_HELP)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback makes the editor reachable from the network.")
@click.option("--port", type=click.IntRange(0, 65535), default=8666, show_default=True, help="Port (0: any free port).")
@click.option("--tracking-uri", help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db].")
@friendly_errors
def serve(model_spec, host, port, tracking_uri):
    """Open the face editor: a page with live sliders for the generator's principal directions
    and for every latent dimension, random faces, interpolation, truncation and PNG download.

    The directions (GANSpace: PCA of early generator features) are computed at the first start
    for a model and cached under $XDG_CACHE_HOME/facegan/directions (~/.cache by default).
    """
    import torch

    # Before anything runs in parallel (loading the model included): resizing torch's thread
    # pool after it has worked can abort the process at exit ("terminate called ...").
    torch.set_num_threads(1)
    from facegan.generate import load_model
    from facegan.serve import run_editor

    run_editor(load_model(model_spec, tracking_uri), host, port, log=lambda message: click.echo(message, err=True))
    # Everything is closed and written (the directions cache atomically). Leave without the
    # interpreter's teardown: with the server's handler threads just gone, a native thread pool's
    # destructor sometimes aborted it ("terminate called without an active exception", about 1
    # stop in 12 on this machine), turning a clean Ctrl-C into exit status 134.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
