"""Scoring checkpoints from where they lie: each source wired to the evaluation engine.

The engine (:mod:`evaluation.engine`) scores checkpoints and decides; this module knows where
the checkpoints and the real images come from, and takes how to score as one
:class:`facegan.config.ScoringOptions`:

- :func:`score_run`: a training run in MLflow (:class:`facegan.tracking.MlflowRunSource`),
  compared with the run's own training data (checked by digest) or ``--real``; scores, tags, a
  table, a plot and the registered choice go back to the run (``facegan evaluate --run``);
- :func:`score_study`: several runs in one feature space against the same real images;
- :func:`score_folders`: sample folders ``DIR/<epoch>/*.png`` against ``--real``, no MLflow;
- :func:`score_checkpoint_files`: generator checkpoint files made by other code (the tutorial's,
  DCGAN's, your own architecture's) against ``--real``, the choice registered as a facegan model;
- :func:`training_judge`: the judge a training run hands each new checkpoint to
  (:class:`evaluation.online.TrainingJudge`), logging to the run exactly as :func:`score_run`
  (``facegan train --evaluate``).
"""

from __future__ import annotations

import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import torch

from evaluation.engine import RealImages, Scorer, evaluate, record, space_label
from evaluation.features import FeatureExtractor, get_extractor
from evaluation.online import StopRule, TrainingJudge
from evaluation.report import check_report_dir, evaluation_page, report_name, study_grids, study_page, write_page
from evaluation.ranking import Evaluation, preload_pyplot, pyplot
from evaluation.study import Study, StudyRun, study_figure
from evaluation.sources import sample_folders
from facegan.checkpoint import save_checkpoint
from facegan.common import select_device
from facegan.config import DEFAULT_NUM_SAMPLES, Config, ScoringOptions
from facegan.data import load_data, load_dataset
from facegan.dataset import Dataset, tensor_digest
from facegan.errors import FaceganError
from facegan.folders import prepare_folder
from facegan.imported import (
    GeneratorSpec, checkpoint_sources, is_tutorial_data, load_generator_file, load_tutorial_data,
)
from facegan.run_tracker import STOPPED_EPOCH_TAG
from facegan.synthetic import synthetic_holdout

# A real folder (--real) is read whole, as it is: no per-person limit, no crop.
_ALL = 10**9


def make_extractor(options: ScoringOptions) -> FeatureExtractor:
    """The feature space ``options.features`` names, on ``options.device``; a clear error for a bad one."""
    return get_extractor(options.features, inception_weights=options.inception_weights,
                         dinov2_weights=options.dinov2_weights, device=str(select_device(options.device)))


# Held-out images rendered for the built-in faces: enough for a chance level of copying with a small binomial error.
SYNTHETIC_HOLDOUT = 1000


def real_images(dataset: Dataset) -> RealImages:
    """The engine's real side for a dataset, with its held-out images: the split it was prepared
    with, fresh renders for the built-in faces, else none (a split of the training images then
    sets the chance level of copying)."""
    if dataset.holdout is not None:
        held = dataset.holdout
        return RealImages(dataset.images, dataset.digest, holdout=lambda: held, holdout_id=tensor_digest(held))
    if dataset.manifest.get("source") == "synthetic":
        size, seed = dataset.images.shape[-1], int(dataset.manifest["parameters"]["seed"])
        return RealImages(dataset.images, dataset.digest,
                          holdout=lambda: synthetic_holdout(SYNTHETIC_HOLDOUT, size, seed),
                          holdout_id=f"synthetic-holdout-{SYNTHETIC_HOLDOUT}-{size}-{seed}")
    return RealImages(dataset.images, dataset.digest)


def load_real(real: str, image_size: int, progress: bool) -> Dataset:
    """``--real``: a dataset file as it is, the tutorial's ``data/`` folder of batches (read upright,
    :func:`facegan.imported.load_tutorial_data`), every image of a folder resized to ``image_size``,
    or ``synthetic``: the built-in faces at ``image_size``, as ``--data synthetic`` gives them (with
    fresh renders as held-out images, :func:`real_images`).

    Sizes need not match the samples': every feature extractor resizes to its own input.
    """
    if real == "synthetic":
        return load_data("synthetic", image_size=image_size, progress=progress)
    path = Path(real)
    if path.is_dir() and is_tutorial_data(path):
        return load_tutorial_data(path)
    if path.is_dir():
        return prepare_folder(path, image_size=image_size, per_identity=_ALL, limit=_ALL, crop=1.0, progress=progress)
    if not path.is_file():
        raise FaceganError(f"--real {real}: no such file or folder (give a file from `facegan prepare`, an image "
                           "folder, or synthetic)")
    return load_dataset(path)


def run_training_data(payload: dict, real: str | None, progress: bool) -> Dataset:
    """The real images of a run: its own training data (checked by digest), or ``--real``."""
    if real is not None:
        return load_real(real, payload["network"]["image_size"], progress)
    cfg = Config.from_dict(payload["config"])
    try:
        data = load_data(cfg.data.source, num_images=cfg.data.num_images, image_size=cfg.model.image_size,
                         seed=cfg.data.seed, progress=progress)
    except FaceganError as exc:
        raise FaceganError(f"cannot load the run's training data ({exc}); pass --real FILE|FOLDER") from None
    if data.digest != payload["dataset"]["digest"]:
        raise FaceganError(f"the run's data at {cfg.data.source} has changed since training (digest differs); "
                           "pass --real FILE|FOLDER to compare against other real images")
    return data


def score_run(run: str, options: ScoringOptions, *, real: str | None = None, tracking_uri: str | None = None,
              force: bool = False, progress: bool = True, report_dir: str | Path | None = None) -> Evaluation:
    """Score every checkpoint of a training run, log the results to MLflow, register the choice.

    ``options.num_samples`` None: the count the run was already scored with in this feature
    space (in training or by an earlier evaluation), so nothing is scored twice, else 2000.
    ``real``: other real images than the run's own training data. The evidence page
    (:mod:`evaluation.report`) goes to the run as ``evaluation/<space>_report.html``, and to
    ``report_dir`` when given (``evaluation.pages`` says where).
    """
    from facegan.tracking import MlflowRunSource  # imports mlflow: only the run mode needs it

    report_dir = None if report_dir is None else check_report_dir(report_dir)
    with MlflowRunSource.open(tracking_uri, run, promote=options.promote) as source:
        checkpoints = source.checkpoints()
        if not checkpoints:
            raise FaceganError(f"run {source.run_id} has no generator checkpoints to evaluate "
                               "(they are logged every --checkpoint-every epochs and at the last epoch)")
        extractor = make_extractor(options)
        num_samples = (options.num_samples or source.scored_num_samples(space_label(extractor))
                       or DEFAULT_NUM_SAMPLES)
        data = _run_data(checkpoints, real, progress)
        scorer = Scorer(extractor, real_images(data), num_samples, device=select_device(options.device),
                        progress=progress)
        evaluation = evaluate(checkpoints, scorer, source, force=force, progress=progress,
                              what=f"checkpoint of {source.description}")
        evaluation.run_id = source.run_id
        record(source, evaluation, options.register)
        _run_report(source, evaluation, checkpoints, scorer, report_dir, progress)
    return evaluation


def _run_report(source, evaluation: Evaluation, checkpoints, scorer: Scorer, report_dir: Path | None,
                progress: bool, *, folder: Path | None = None) -> None:
    """The run's evidence page: logged to the run, and written under ``report_dir`` (or ``folder``) when given."""
    name = source.run.info.run_name
    page = evaluation_page(evaluation, checkpoints, scorer, title=f"run {source.run_id}" + (f" ({name})" if name else ""),
                           progress=progress)
    evaluation.pages.append(source.log_report(page, evaluation.features))
    target = folder or report_dir
    if target is not None:
        _write_report(evaluation, page, target)


def _write_report(evaluation: Evaluation, page: str, folder: Path) -> None:
    """``folder/<space>_report.html``, noted in ``evaluation.pages``."""
    evaluation.pages.append(str(write_page(page, folder / report_name(evaluation.features))))


def _folder_report(evaluation: Evaluation, checkpoints, scorer: Scorer, title: str, report_dir: Path | None,
                   progress: bool) -> None:
    """The evidence page of an evaluation with no MLflow run, written under ``report_dir`` when given."""
    if report_dir is not None:
        _write_report(evaluation, evaluation_page(evaluation, checkpoints, scorer, title=title, progress=progress),
                      report_dir)


def training_report(source, evaluation: Evaluation, scorer: Scorer, *, progress: bool) -> None:
    """The evidence page of a run judged while it trained (``facegan train --evaluate``), logged to
    the run once training is done, from the checkpoints the run logged. A page that cannot be
    made is a warning: the training and its scores are kept."""
    try:
        _run_report(source, evaluation, source.checkpoints(), scorer, None, progress)
    except Exception as exc:  # the training and its scores are done and kept: say so, do not fail it
        print(f"warning: no evidence page for run {source.run_id} ({exc}); `facegan evaluate --run "
              f"{source.run_id}` makes it", file=sys.stderr)


def reuse_note(evaluation: Evaluation) -> str | None:
    """One line for people saying which scores were read back from the run instead of computed
    (None when every checkpoint was scored now): a second ``evaluate --run`` that scores nothing
    new should say so, rather than print the same table as if it had worked.

    Example:
        >>> from evaluation.ranking import Scored
        >>> class Done:  # the parts of an Evaluation this reads
        ...     features, num_samples = "random", 2000
        ...     checkpoints = [Scored(1, "a", {}, reused=True), Scored(2, "b", {}, reused=True)]
        >>> reuse_note(Done())
        'all 2 checkpoints were already scored in random at 2000 samples; nothing new was scored (--force scores them again)'
    """
    total = len(evaluation.checkpoints)
    reused = sum(c.reused for c in evaluation.checkpoints)
    if not reused:
        return None
    where = f"in {evaluation.features} at {evaluation.num_samples} samples"
    if reused == total:
        every = "the one checkpoint was" if total == 1 else f"all {total} checkpoints were"
        return f"{every} already scored {where}; nothing new was scored (--force scores them again)"
    return (f"{reused} of {total} checkpoints {'was' if reused == 1 else 'were'} already scored {where} and kept; "
            f"{total - reused} {'was' if total - reused == 1 else 'were'} scored now (--force scores all again)")


def _run_data(checkpoints, real: str | None, progress: bool) -> Dataset:
    """The run's real data, read from the newest checkpoint that loads (its config names the data)."""
    errors = []
    for checkpoint in reversed(checkpoints):
        try:
            _, payload = checkpoint.load()
        except FaceganError as exc:
            errors.append(f"{checkpoint.label}: {exc}")
            continue
        return run_training_data(payload, real, progress)
    raise FaceganError("no checkpoint of the run could be read: " + "; ".join(errors))


def score_study(runs: list[str], experiment: str | None, options: ScoringOptions, *, real: str | None = None,
                tracking_uri: str | None = None, force: bool = False, progress: bool = True,
                report_dir: str | Path | None = None) -> Study:
    """Score every checkpoint of several runs (``runs``, or every training run of ``experiment``) in
    one feature space against the same real images; pick each run's best and the study's best.

    Each run is tagged and gets its table and plot as with :func:`score_run` (nothing already
    scored is scored again); the study is logged as a run of its own with a comparison plot and a
    table of runs, and the study's best is registered. Runs trained on different data (their
    dataset digests differ) are refused unless ``real`` names one set of real images for all.

    Evidence pages (:mod:`evaluation.report`): each run's goes to the run, the study's to the study
    run as ``study/<space>_report.html``; with ``report_dir`` also ``DIR/<space>_report.html`` (the
    study's, linking to the runs') and ``DIR/<run id>/<space>_report.html``.
    """
    from facegan.tracking import MlflowRunSource, connect, log_study, log_study_report, study_run_ids

    report_dir = None if report_dir is None else check_report_dir(report_dir)
    client = connect(tracking_uri)
    with ExitStack() as open_sources:
        sources = [open_sources.enter_context(MlflowRunSource(client, run_id))
                   for run_id in study_run_ids(client, runs, experiment)]
        if real is None:
            digests: dict[str, list[str]] = {}
            for source in sources:
                digests.setdefault(source.tag("facegan.dataset_digest") or "unknown", []).append(source.run_id)
            if len(digests) > 1:
                groups = "; ".join(f"data {digest[:12]}: runs {', '.join(ids)}" for digest, ids in digests.items())
                raise FaceganError("these runs were trained on different data, so their scores would not be "
                                   f"comparable ({groups}); evaluate them separately, or pass --real FILE|FOLDER to "
                                   "score all of them against the same real images")
        extractor = make_extractor(options)
        space = space_label(extractor)
        num_samples = options.num_samples
        if num_samples is None:  # the count the runs were already scored with, when they agree
            counts = {s.scored_num_samples(space) for s in sources} - {None}
            num_samples = counts.pop() if len(counts) == 1 else DEFAULT_NUM_SAMPLES
        checkpoints = {s.run_id: s.checkpoints() for s in sources}
        empty = [s.run_id for s in sources if not checkpoints[s.run_id]]
        if empty:
            raise FaceganError(f"run {', '.join(empty)} has no generator checkpoints to evaluate")
        data = _run_data([c for s in sources for c in checkpoints[s.run_id]], real, progress)
        scorer = Scorer(extractor, real_images(data), num_samples, device=select_device(options.device),
                        progress=progress)
        study_runs = []
        for source in sources:
            if progress:
                print(f"run {source.run_id} ({source.run.info.run_name})", file=sys.stderr)
            evaluation = evaluate(checkpoints[source.run_id], scorer, source, force=force, progress=progress,
                                  what=f"checkpoint of {source.description}")
            evaluation.run_id = source.run_id
            record(source, evaluation, None)
            _run_report(source, evaluation, checkpoints[source.run_id], scorer, None, progress,
                        folder=None if report_dir is None else report_dir / source.run_id)
            study_runs.append(StudyRun(source.run_id, source.run.info.run_name or "",
                                       source.run.data.params.get("train.loss", "?"), evaluation))
        study = Study(space, extractor.note, num_samples, study_runs)
        plt = pyplot()
        figure = study_figure(study)
        try:
            log_study(client, study, figure, experiment_id=sources[0].run.info.experiment_id,
                      register_name=options.register, promote=options.promote)
        finally:
            plt.close(figure)
        for source in sources:
            source.set_tags({"facegan.study_run_id": study.study_run_id})
        grids = study_grids(study, checkpoints, device=scorer.device, progress=progress)
        study.pages.append(log_study_report(client, study, study_page(study, grids)))
        if report_dir is not None:
            links = {r.run_id: f"{r.run_id}/{report_name(space)}" for r in study.runs}
            study.pages.append(str(write_page(study_page(study, grids, links=links), report_dir / report_name(space))))
    return study


def score_folders(samples: str, real: str, options: ScoringOptions, *, progress: bool = True,
                  report_dir: str | Path | None = None) -> Evaluation:
    """Score folders of samples, one per epoch, against real images; no MLflow involved. With
    ``report_dir`` the evidence page goes to ``DIR/<space>_report.html`` (``evaluation.pages``)."""
    report_dir = None if report_dir is None else check_report_dir(report_dir)
    checkpoints = sample_folders(samples)
    extractor = make_extractor(options)
    data = load_real(real, checkpoints[0].image_size, progress)
    for checkpoint in checkpoints:  # read the samples at the real images' size
        checkpoint.image_size = data.images.shape[-1]
    scorer = Scorer(extractor, real_images(data), options.num_samples or DEFAULT_NUM_SAMPLES,
                    device=select_device(options.device), progress=progress)
    evaluation = evaluate(checkpoints, scorer, None, progress=progress, what=f"sample folder under {samples}")
    _folder_report(evaluation, checkpoints, scorer, f"samples under {samples}", report_dir, progress)
    return evaluation


def score_checkpoint_files(pattern: str, real: str, options: ScoringOptions, spec: GeneratorSpec | None = None, *,
                           tracking_uri: str | None = None, progress: bool = True,
                           report_dir: str | Path | None = None) -> Evaluation:
    """Score generator checkpoint files made by other code (:mod:`facegan.imported`) against real images.

    With ``options.register`` the scores are logged to a new run of the experiment
    ``facegan-imported`` (tag ``facegan.kind=import``), the chosen checkpoint becomes its model
    (a facegan checkpoint: ``generate``, ``serve`` and the pyfunc model load it) and is
    registered as a run's choice is; a choice of the user's own architecture, which facegan cannot
    rebuild, is scored but not registered (said in ``registration_lines``). Without, nothing
    touches MLflow. The evidence page goes to that run, and to ``report_dir`` when given.
    """
    report_dir = None if report_dir is None else check_report_dir(report_dir)
    checkpoints = checkpoint_sources(pattern, spec)
    extractor = make_extractor(options)
    device = select_device(options.device)
    side = next(iter(checkpoints[0].samples(1, torch.device("cpu")))).shape[-1]
    data = load_real(real, side, progress)
    scorer = Scorer(extractor, real_images(data), options.num_samples or DEFAULT_NUM_SAMPLES, device=device,
                    progress=progress)
    what = f"checkpoint file matching {pattern}"
    if options.register is None:
        evaluation = evaluate(checkpoints, scorer, None, progress=progress, what=what)
        _folder_report(evaluation, checkpoints, scorer, f"checkpoints {pattern}", report_dir, progress)
        return evaluation
    from facegan.tracking import imported_run

    source = imported_run(tracking_uri, Path(pattern.rstrip("/")).parent.name or pattern,
                          {"checkpoints": pattern, "real": real, "features": scorer.space})
    status = "FAILED"
    try:
        evaluation = evaluate(checkpoints, scorer, source, progress=progress, what=what)
        evaluation.run_id = source.run_id
        chosen = next(c for c in checkpoints if c.epoch == evaluation.best_epoch)
        register = options.register
        try:
            payload = load_generator_file(chosen.label, spec).facegan_checkpoint(chosen.epoch)
        except FaceganError as exc:
            register = None
            evaluation.registration_lines = [f"not registered: {exc}"]
        if register is not None:
            with tempfile.TemporaryDirectory() as tmp:
                source.log_generator(save_checkpoint(payload, Path(tmp) / "generator.pt"), chosen.epoch)
        record(source, evaluation, register)
        _run_report(source, evaluation, checkpoints, scorer, report_dir, progress)
        status = "FINISHED"
    finally:
        source.finish(status)
    return evaluation


def training_extractor(cfg: Config) -> FeatureExtractor | None:
    """The feature network of ``facegan train --evaluate`` (None when it is off), on the training
    device: built first, so a bad value, a missing file or missing weights fail in seconds."""
    if not cfg.evaluate.enabled:
        return None
    return make_extractor(cfg.evaluate.scoring(cfg.train.device))


def training_scorer(cfg: Config, dataset: Dataset, *, extractor: FeatureExtractor | None = None,
                    progress: bool) -> Scorer | None:
    """The scorer of ``facegan train --evaluate`` (None when it is off), on the training device.

    Built before the run starts, so nothing is trained with a scorer that cannot work, and the
    real features are computed (or read from the cache) once. ``extractor``: one already built
    by :func:`training_extractor`.
    """
    e = cfg.evaluate
    if not e.enabled:
        return None
    extractor = extractor if extractor is not None else training_extractor(cfg)
    return Scorer(extractor, real_images(dataset), e.num_samples, device=select_device(cfg.train.device),
                  progress=progress)


def training_judge(cfg: Config, scorer: Scorer, source, *, progress: bool) -> TrainingJudge:
    """The judge a training run hands each new checkpoint to, logging into ``source`` (the run).

    On a resumed run the earlier checkpoints' scores are read back (or scored now), and a run that
    had stopped early is only stopped again for what happens after that epoch.
    """
    e = cfg.evaluate
    stopped = source.tag(STOPPED_EPOCH_TAG)
    rule = StopRule(on_collapse=e.stop_on_collapse, patience=e.stop_patience,
                    after_epoch=int(stopped) if stopped else 0)
    judge = TrainingJudge(scorer, source, rule=rule, register=e.register)
    preload_pyplot()  # the scores plot at the end of the run
    earlier = source.checkpoints()
    if earlier:
        judge.resume(earlier, progress=progress)
    return judge
