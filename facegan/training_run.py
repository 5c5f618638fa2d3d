"""A training run from start to end: the store, the data, the judge and the loop, on one process
or on each of several (torchrun).

:func:`start_run` trains a new run from a config; :func:`resume_run` continues a run from its last
resume state, with the few options a resumed run may change. Both return a :class:`RunOutcome`
for the caller to report. On several processes every rank calls the same function: rank 0 alone
talks to MLflow, builds the scorer and judges; an error it meets before training reaches every
rank (:func:`facegan.distributed.on_main`), so no rank waits for work that will never come.

The loop itself is :mod:`facegan.training`; this module only assembles what it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from facegan import distributed
from facegan.config import Config, check_resumable, with_overrides
from facegan.data import load_data
from facegan.dataset import Dataset
from facegan.distributed import Processes
from facegan.errors import FaceganError
from facegan.scoring import training_extractor, training_judge, training_report, training_scorer
from facegan.training import Trainer, fetch_resume_payload, train, training_device

Say = Callable[[str], None]


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C ended training: the last completed epoch is saved, the run is resumable."""

    def __init__(self, run_id: str | None):
        super().__init__(run_id)
        self.run_id = run_id  # None on the ranks that do not talk to MLflow


@dataclass
class RunOutcome:
    """How a run ended, for the caller to report (rank 0's; the other ranks get ``run_id`` None).

    Attributes:
        run_id: the MLflow run.
        tracking_uri: the store it is in.
        experiment_id: its experiment.
        cfg: the config it trained with (a resumed run's own, with the overrides applied).
        trainer: the loop, as it ended (``epoch``, ``stopped``).
        evaluation: the judge's last decision (``train --evaluate``), else None.
    """

    run_id: str | None
    tracking_uri: str | None
    cfg: Config
    trainer: Trainer
    evaluation: object | None = None
    experiment_id: str | None = None


def start_run(cfg: Config, *, processes: Processes, progress: bool, say: Say) -> RunOutcome:
    """Train a new run with ``cfg`` (validated), logging to its tracking store."""
    from facegan import tracking

    training_device(cfg, processes)  # e.g. --device cuda without CUDA, before any process waits for another
    distributed.start(processes)
    # An unreachable store fails before any work.
    distributed.on_main(lambda: tracking.connect(cfg.tracking.tracking_uri), processes)

    def open_run():
        return tracking.MlflowRunTracker.start(cfg.tracking.tracking_uri, cfg.tracking.experiment,
                                               cfg.tracking.run_name)

    return _run(cfg, open_run, None, processes=processes, progress=progress, say=say)


def resume_run(run_id: str, overrides: dict[str, object], *, processes: Processes, progress: bool,
               say: Say) -> RunOutcome:
    """Continue ``run_id`` from its last resume state, with ``overrides`` (only what a resumed run
    may change: :func:`facegan.config.check_resumable`)."""
    from facegan import tracking

    check_resumable(overrides)
    distributed.start(processes)
    tracker = None

    def fetch():
        nonlocal tracker
        tracker = tracking.MlflowRunTracker.reopen(overrides.get("tracking.tracking_uri"), run_id)
        return fetch_resume_payload(tracker)

    payload = distributed.on_main(fetch, processes, share=True)
    cfg = with_overrides(Config.from_dict(payload["config"]), overrides)
    if cfg.train.world_size != processes.world_size:
        raise FaceganError(f"run {run_id} was trained on {cfg.train.world_size} process(es); resume it on "
                           f"as many (torchrun --nproc_per_node={cfg.train.world_size} ... --resume), "
                           f"not {processes.world_size}")
    training_device(cfg, processes)
    if processes.is_main:
        say(f"resuming run {run_id} from epoch {payload['epoch']} of {cfg.train.epochs}")
    return _run(cfg, lambda: tracker, payload, processes=processes, progress=progress, say=say)


def _run(cfg: Config, open_run, payload: dict | None, *, processes: Processes, progress: bool,
         say: Say) -> RunOutcome:
    """Everything after the config is known: the judge's network, the data, the scorer, the run, the loop."""
    from facegan import tracking

    main = processes.is_main
    # Before the data and the run: a bad --evaluate value or missing weights fail in seconds.
    extractor = distributed.on_main(lambda: training_extractor(cfg), processes)
    dataset = load_data(cfg.data.source, num_images=cfg.data.num_images, image_size=cfg.model.image_size,
                        seed=cfg.data.seed, progress=progress and main)
    scorer = distributed.on_main(lambda: training_scorer(cfg, dataset, extractor=extractor, progress=progress),
                                 processes)
    if not main:  # the other ranks only train
        try:
            trainer = train(cfg, dataset, None, resume_payload=payload, progress=False, processes=processes)
        except KeyboardInterrupt:
            raise RunInterrupted(None) from None
        return RunOutcome(None, None, cfg, trainer)
    tracker = open_run()
    uri = tracking.resolve_tracking_uri(cfg.tracking.tracking_uri)
    say(_describe(tracker.run_id, cfg, dataset, uri, processes, scorer))
    tracker.send_timeout = cfg.tracking.send_timeout
    with tracking.MlflowRunSource(tracker.client, tracker.run_id, tracker=tracker) as source:
        judge = None if scorer is None else training_judge(cfg, scorer, source, progress=progress)
        try:
            trainer = train(cfg, dataset, tracker, resume_payload=payload, progress=progress, judge=judge,
                            processes=processes)
        except KeyboardInterrupt:
            raise RunInterrupted(tracker.run_id) from None
        if judge is not None and judge.recorded:  # not after a store that did not take the result
            training_report(source, judge.evaluation, scorer, progress=progress)
    return RunOutcome(tracker.run_id, uri, cfg, trainer, None if judge is None else judge.evaluation,
                      tracker.experiment_id)


def _describe(run_id: str, cfg: Config, dataset: Dataset, uri: str, processes: Processes, scorer) -> str:
    return (f"run {run_id} in experiment {cfg.tracking.experiment!r} at {uri}: {cfg.train.loss}, "
            f"{dataset.images.shape[0]} images of {cfg.model.image_size}px, {cfg.train.epochs} epochs"
            + (f", {processes.world_size} processes" if processes.distributed else "")
            + (f"; scoring every checkpoint ({scorer.space} features)" if scorer is not None else ""))
