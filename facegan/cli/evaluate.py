"""``facegan evaluate``: parse which checkpoints and how to score them, then report the result."""

from __future__ import annotations

import click

from facegan.cli.common import FEATURES_HELP, TRACKING_URI_HELP, echo, friendly_errors
from facegan.config import DEFAULT_REGISTERED_NAME, MIN_NUM_SAMPLES
from facegan.errors import FaceganError


@click.command()
@click.option("--run", "runs", metavar="RUN_ID|latest", multiple=True,
              help="Evaluate every checkpoint of this training run; given several times, compare the runs as a study.")
@click.option("--experiment", metavar="NAME",
              help="Or: a study of every training run in this MLflow experiment (e.g. the tutorial's three objectives).")
@click.option("--samples", type=click.Path(), help="Or: a folder of sample folders, DIR/<epoch>/*.png (the tutorial's layout).")
@click.option("--checkpoints", metavar="PATTERN",
              help="Or: generator checkpoint files made by other code: a quoted glob such as "
                   "'run/model.generation.epoch_*.pt' or a folder; the epoch is the last number in each name. Reads "
                   "the tutorial's gzip'd state dicts, pytorch/examples' DCGAN netG_epoch_N.pth, facegan's own, "
                   "torch.export .pt2 programs, or your own architecture with --factory.")
@click.option("--real", type=click.Path(), help="Real images: a dataset file, an image folder, the tutorial's data/ "
              "folder, or `synthetic` (the built-in faces, as --data synthetic). Required with --samples and "
              "--checkpoints; with --run it replaces the run's own training data.")
@click.option("--factory", metavar="MODULE:FUNCTION",
              help="With --checkpoints: your generator's architecture, a function (importable from the working "
                   "folder) returning the nn.Module each state dict is loaded into; give --latent-shape too.")
@click.option("--latent-shape", metavar="SHAPE",
              help="With --checkpoints: one latent's shape, e.g. 128 or 100x1x1 (DCGAN's netG).")
@click.option("--output-range", metavar="LOW,HIGH", default="-1,1", show_default=True,
              help="With --checkpoints: what the generator's outputs span (-1,1 after a Tanh, 0,1 after a sigmoid).")
@click.option("--features", default="inception", show_default=True, help="Feature space: " + FEATURES_HELP + ".")
@click.option("--inception-weights", type=click.Path(dir_okay=False),
              help="Local FID Inception weights for offline machines: weights-inception-2015-12-05-6726825d.pth "
                   "(also published as pt_inception-2015-12-05-6726825d.pth) [env: FACEGAN_INCEPTION_WEIGHTS].")
@click.option("--dinov2-weights", type=click.Path(dir_okay=False),
              help="Local DINOv2 ViT-B/14 weights (timm's model.safetensors or Meta's dinov2_vitb14_pretrain.pth) for "
                   "--features dinov2 offline [env: FACEGAN_DINOV2_WEIGHTS].")
@click.option("--num-samples", type=click.IntRange(min=MIN_NUM_SAMPLES),
              help="Samples per checkpoint (--run), drawn from the same fixed latents; at most this many per folder "
                   "(--samples)  [default: --run: the count the run was already scored with in this feature space "
                   "(e.g. by `train --evaluate`), else 2000; --samples: 2000]")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results as JSON here.")
@click.option("--report", "report_dir", type=click.Path(), metavar="DIR",
              help="Also write the evidence page here, DIR/<features>_report.html: one HTML file with the scores, "
                   "sample grids of the chosen, onset and last checkpoints, near-identical groups and the samples "
                   "closest to the training set (MLflow runs get it as an artifact anyway).")
@click.option("--register", default=DEFAULT_REGISTERED_NAME, show_default=True,
              help="Registered model name for the chosen generator (alias `best`); `none` to skip.")
@click.option("--promote", is_flag=True,
              help="Move the registered model's aliases (best, best-<features>) to this choice even when it is not "
                   "better than their holders, or was scored in another space, against other real images or at "
                   "another sample count.")
@click.option("--tracking-uri", help=TRACKING_URI_HELP)
@click.option("--force", is_flag=True, help="Score again checkpoints already scored in this feature space.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@friendly_errors
def evaluate(runs, experiment, samples, checkpoints, real, factory, latent_shape, output_range, features, inception_weights, dinov2_weights, num_samples, json_path,
             report_dir, register, promote, tracking_uri, force, device, quiet):
    """Score every checkpoint by FID and diversity, find the collapse onset, pick the best before it.

    \b
    Metrics per checkpoint: FID, KID, precision/recall, density/coverage, diversity (Vendi score
    relative to the real data), duplicate/memorised shares and the copy share. A checkpoint is collapsed when its
    coverage or diversity falls clearly (beyond what the real data shows by chance and beyond the
    run's own checkpoint-to-checkpoint wobble, and for two checkpoints running) below the best
    the run held for two checkpoints, or its duplicate share jumps, with its FID above the FID
    at that best (losing modes costs FID; a change of look need not); a single drop at the last
    checkpoint is reported as unconfirmed. The choice is the lowest FID before the onset,
    skipping checkpoints with a drop (checkpoints tied with it within KID noise are named).

    With --run, scores are logged back to the run (metrics `<features>/<name>` at step=epoch, linked
    to each checkpoint's model), the run is tagged with the chosen and onset epochs, the ranking
    and a plot are logged, and the choice is registered: one registry version per checkpoint, and
    the aliases `best-<features>` and `best` (what `serve` and `generate` load) move to it only when
    its FID beats their holder's in the same feature space against the same real images at the
    same sample count (--promote moves them anyway); the output says which moved and why the
    others stayed. A second call scores only checkpoints not yet scored in the same feature space.

    A checkpoint with more copies of training images than chance allows (a copy: a sample much
    closer to one training image than to any other; chance from held-out real images, or each
    training image against the others) is marked `copying (ratio test)` and never chosen.

    With --checkpoints PATTERN, generator checkpoint files made by other code are scored (the
    tutorial's run as it lies on disk: --checkpoints 'run/model.generation.epoch_*.pt' --real
    run/data); the scores are logged to a run of the experiment facegan-imported and the choice is
    registered as a facegan model (unless --register none: then nothing touches MLflow).

    With --experiment NAME (or --run given several times) the runs form a study: every checkpoint
    of every run is scored in one feature space against the same real images (runs trained on
    different data are refused), each run gets its own choice, and the study's best (the lowest
    FID among them) is registered; the study is logged as a run of its own with a comparison plot
    and a table of runs.
    """
    from facegan.config import ScoringOptions

    if sum(map(bool, (runs, experiment, samples, checkpoints))) != 1:
        raise FaceganError("give one of --run RUN_ID|latest (several for a study), --experiment NAME, --samples DIR "
                           "or --checkpoints PATTERN (the last two with --real)")
    for given, option in ((samples, "--samples"), (checkpoints, "--checkpoints")):
        if given and not real:
            raise FaceganError(f"{option} needs --real FILE|FOLDER|synthetic: the real images to compare with")
    if (factory or latent_shape) and not checkpoints:
        raise FaceganError("--factory and --latent-shape describe --checkpoints files; give --checkpoints PATTERN")
    options = ScoringOptions(features=features, inception_weights=inception_weights, dinov2_weights=dinov2_weights,
                             num_samples=num_samples, device=device, register=register, promote=promote)

    from evaluation.ranking import write_json
    from facegan import scoring

    if samples:
        result = scoring.score_folders(samples, real, options, progress=not quiet, report_dir=report_dir)
        _print_evaluation(result)
    elif checkpoints:
        from facegan.imported import GeneratorSpec, parse_latent_shape, parse_output_range

        spec = GeneratorSpec(factory=factory, latent_shape=parse_latent_shape(latent_shape) if latent_shape else None,
                             output_range=parse_output_range(output_range))
        result = scoring.score_checkpoint_files(checkpoints, real, options, spec, tracking_uri=tracking_uri,
                                                progress=not quiet, report_dir=report_dir)
        _print_evaluation(result)
    elif experiment or len(runs) > 1:
        result = scoring.score_study(list(runs), experiment, options, real=real, tracking_uri=tracking_uri,
                                     force=force, progress=not quiet, report_dir=report_dir)
        _print_study(result)
    else:
        result = scoring.score_run(runs[0], options, real=real, tracking_uri=tracking_uri, force=force,
                                   progress=not quiet, report_dir=report_dir)
        _print_evaluation(result)
    for page in result.pages:
        click.echo(f"evidence page: {page}")
    if json_path:
        write_json(result, json_path)
        click.echo(f"wrote {json_path}")


def _print_evaluation(result) -> None:
    from facegan.scoring import reuse_note

    note = reuse_note(result)
    if note:
        echo(note)
    click.echo(result.render_table())
    for line in result.registration_lines:
        click.echo(line)


def _print_study(study) -> None:
    from facegan.scoring import reuse_note

    for run in study.runs:
        note = reuse_note(run.evaluation)
        if note:
            echo(f"run {run.run_id}: {note}")
        click.echo(f"== run {run.run_id} ({run.name}, {run.loss})")
        click.echo(run.evaluation.render_table() + "\n")
    click.echo(study.render_table())
    click.echo(f"study logged as run {study.study_run_id}")
    for line in study.registration_lines:
        click.echo(line)
