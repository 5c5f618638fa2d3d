"""``facegan train``: parse the options into a config (or a resumed run's overrides), then train."""

from __future__ import annotations

import sys

import click

from facegan.architecture import SUPPORTED_IMAGE_SIZES
from facegan.cli.common import FEATURES_HELP, SEED, TRACKING_URI_HELP, echo, friendly_errors, mlflow_command
from facegan.errors import FaceganError

# CLI option name -> config key
_OPTION_KEYS = {
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


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config (see experiments/*.toml).")
@click.option("--data", help="`synthetic` (default), a file from `facegan prepare`, or an image folder.")
@click.option("--loss", type=click.Choice(["dcgan", "wgan", "wgan-gp"]), help="Objective [default: wgan-gp].")
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs to train [default: 10000, as the tutorial].")
@click.option("--batch-size", type=click.IntRange(min=1), help="Minibatch size [default: 64].")
@click.option("--image-size", type=click.Choice(SUPPORTED_IMAGE_SIZES), help="Image size in pixels [default: 80].")
@click.option("--num-images", type=click.IntRange(min=1), help="Training images used [default: 2000].")
@click.option("--checkpoint-every", type=click.IntRange(min=1), help="Epochs between generator checkpoints [default: 100].")
@click.option("--sample-every", type=click.IntRange(min=1), help="Epochs between sample grids [default: 1].")
@click.option("--seed", type=SEED, help="Random seed [default: 0].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="[default: auto: CUDA when present].")
@click.option("--experiment", help="MLflow experiment name [default: facegan].")
@click.option("--tracking-uri", help=TRACKING_URI_HELP)
@click.option("--run-name", help="MLflow run name.")
@click.option("--resume", "resume_run_id", metavar="RUN_ID", help="Continue this run from its last resume state.")
@click.option("--evaluate", metavar="FEATURES",
              help="Score every checkpoint as it is written, as `facegan evaluate --features` would: "
                   + FEATURES_HELP + "; none to skip  [default: none]")
@click.option("--stop-on-collapse", is_flag=True, default=None,
              help="With --evaluate: stop once the collapse rule confirms an onset (the checkpoint after it), "
                   "or once two checkpoints running copy training images.")
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
    from facegan.config import check_resumable, load_config, parse_override
    from facegan.distributed import Processes

    processes = Processes.from_environment()  # one process, or this one's place under torchrun
    settings = dict(parse_override(text) for text in overrides)
    settings.update({_OPTION_KEYS[name]: value for name, value in options.items() if value is not None})
    asked = settings.pop("train.world_size", processes.world_size)
    if asked != processes.world_size:
        raise FaceganError(f"train.world_size is the number of training processes, set by torchrun "
                           f"({processes.world_size} here); start {asked} with torchrun --nproc_per_node=N "
                           "instead of setting it")
    if resume_run_id and config_file:
        raise FaceganError("--config cannot be combined with --resume: a resumed run keeps its config")
    if resume_run_id:
        check_resumable(settings)
    else:  # a bad file or value fails before torch and mlflow load
        cfg = load_config(config_file, {**settings, "train.world_size": processes.world_size})

    from facegan import distributed, training_run

    run = dict(processes=processes, progress=not quiet, say=echo)
    try:
        if resume_run_id:
            outcome = training_run.resume_run(resume_run_id, settings, **run)
        else:
            outcome = training_run.start_run(cfg, **run)
    except training_run.RunInterrupted as stop:
        if stop.run_id is not None:
            again = "torchrun ... " if processes.distributed else ""
            echo(f"\ninterrupted: the last completed epoch is saved; continue with: "
                 f"{again}facegan train --resume {stop.run_id}")
            click.echo(f"run_id: {stop.run_id}")
        sys.exit(130)
    except distributed.ReportedByMain:  # rank 0 has said why
        sys.exit(1)
    finally:
        distributed.stop(processes)
    if outcome.run_id is not None:  # rank 0
        _report(outcome)


def _report(outcome) -> None:
    """What a finished run says: the choice, an early stop, where to look, and its id (last)."""
    result, trainer = outcome.evaluation, outcome.trainer
    if result is not None:
        echo(f"best checkpoint: epoch {result.best_epoch} ({result.choice.reason})")
        for line in result.registration_lines:
            echo(line)
        for page in result.pages:
            echo(f"evidence page: {page}")
    if trainer.stopped is not None:
        echo(f"stopped early at epoch {trainer.epoch} of {outcome.cfg.train.epochs}: {trainer.stopped[1]}; "
             f"to train on anyway: facegan train --resume {outcome.run_id}")
    if outcome.tracking_uri.startswith("sqlite:"):
        from facegan.tracking import ui_address

        echo(f"browse: {mlflow_command()} ui --backend-store-uri {outcome.tracking_uri}, then open "
             f"{ui_address(outcome.experiment_id)}")
    click.echo(f"run_id: {outcome.run_id}")
