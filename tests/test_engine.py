"""The evaluation engine: one scorer for every checkpoint source, and the in-training judge."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.engine import RealImages, Scorer, evaluate, generator_batches
from evaluation.features import get_extractor
from evaluation.metrics import SCORE_KEYS
from evaluation.online import StopRule, TrainingJudge
from evaluation.sources import GeneratorCheckpoint, sample_folders
from facegan.errors import FaceganError
from facegan.synthetic import synthetic_faces
from helpers import PoolGenerator, collapsing_history, stable_history

NUM_SAMPLES = 150


@pytest.fixture
def scorer(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEGAN_CACHE_DIR", str(tmp_path / "cache"))
    real = synthetic_faces(300, 32, seed=0)
    return Scorer(get_extractor("random"), RealImages(real.images, real.digest), NUM_SAMPLES)


class RecordingLog:
    """A score log in memory, to see what the engine and the judge hand to one."""

    def __init__(self):
        self.scores: dict[tuple[int, str], dict] = {}
        self.real_digests: dict[tuple[int, str], str] = {}  # which real images each entry was scored against
        self.progress: list[int] = []
        self.recorded = None

    def logged_scores(self, checkpoint, space, num_samples, *, real_digest):
        key = (checkpoint.epoch, f"{space}@{num_samples}")
        return self.scores.get(key) if self.real_digests.get(key) == real_digest else None

    def log_scores(self, checkpoint, space, num_samples, scores, *, real_digest):
        key = (checkpoint.epoch, f"{space}@{num_samples}")
        self.scores[key], self.real_digests[key] = dict(scores), real_digest

    def record_progress(self, evaluation):
        self.progress.append(evaluation.best_epoch)

    def record(self, evaluation, figure, register_name):
        self.recorded = (evaluation, register_name)
        return f"models:/{register_name}@best" if register_name else None


def write_samples(root, epoch, generator):
    folder = root / str(epoch)
    folder.mkdir(parents=True)
    images = torch.cat(list(generator_batches(generator, NUM_SAMPLES, torch.device("cpu"))))
    for i, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return images


def test_generators_and_their_sample_folders_score_alike(scorer, tmp_path):
    history = collapsing_history(onset=5, epochs=6)
    in_memory = evaluate([GeneratorCheckpoint(e, g) for e, g in history.items()], scorer)
    drawn = {epoch: write_samples(tmp_path / "samples", epoch, g) for epoch, g in history.items()}
    folders = sample_folders(tmp_path / "samples")
    for checkpoint in folders:  # the folder source reads back exactly the images that were drawn
        read = next(iter(checkpoint.samples(NUM_SAMPLES, torch.device("cpu"))))
        assert sorted(map(bytes, read.numpy())) == sorted(map(bytes, drawn[checkpoint.epoch].numpy()))
    from_folders = evaluate(folders, scorer)

    assert [c.epoch for c in from_folders.checkpoints] == list(history)
    for a, b in zip(in_memory.checkpoints, from_folders.checkpoints):
        # Every score but KID is blind to the images' order (folders are read shuffled); KID's
        # random subsets are drawn by position, so it agrees within its own subset noise.
        for key in set(SCORE_KEYS) - {"kid", "kid_std"}:
            assert a.scores[key] == pytest.approx(b.scores[key], rel=1e-6, abs=1e-12), key  # summation order
        assert abs(a.scores["kid"] - b.scores["kid"]) < 3 * max(a.scores["kid_std"], 1e-6)
    assert (in_memory.best_epoch, in_memory.collapse.onset_epoch) == (from_folders.best_epoch,
                                                                      from_folders.collapse.onset_epoch)
    assert in_memory.collapse.onset_epoch == 5


def test_evaluate_reuses_logged_scores_and_reports_damaged_checkpoints(scorer):
    history = stable_history(epochs=4)
    log = RecordingLog()
    first = evaluate([GeneratorCheckpoint(e, g) for e, g in history.items()], scorer, log)
    assert sorted(log.scores) == [(e, f"random@{NUM_SAMPLES}") for e in (1, 2, 3, 4)]
    assert not any(c.reused for c in first.checkpoints)

    class Damaged(GeneratorCheckpoint):
        def samples(self, num_samples, device):
            raise FaceganError("damaged file")

    # Logged scores are taken as they are (nothing is drawn), a damaged checkpoint is skipped.
    again = evaluate([Damaged(e, g) for e, g in history.items() if e < 4] + [Damaged(5, history[4])], scorer, log)
    assert [c.epoch for c in again.checkpoints] == [1, 2, 3]
    assert all(c.reused for c in again.checkpoints)
    assert [c.scores for c in again.checkpoints] == [c.scores for c in first.checkpoints[:3]]

    # Against other real images the logged scores are not these: scored again, and kept beside.
    other = synthetic_faces(300, 32, seed=1)
    elsewhere = evaluate([GeneratorCheckpoint(1, history[1])], Scorer(scorer.extractor, RealImages(other.images, other.digest),
                                                                     NUM_SAMPLES), log)
    assert not elsewhere.checkpoints[0].reused and log.real_digests[(1, f"random@{NUM_SAMPLES}")] == other.digest
    assert again.skipped == [("epoch 5", "damaged file")]
    with pytest.raises(FaceganError, match="no checkpoint could be scored: epoch 5: damaged file"):
        evaluate([Damaged(5, history[4])], scorer, log)
    with pytest.raises(FaceganError, match="more than one checkpoint at epoch 2"):
        evaluate([GeneratorCheckpoint(2, history[2]), GeneratorCheckpoint(2, history[3])], scorer)


def test_chance_levels_are_cached_on_disk(scorer, tmp_path):
    noise = scorer.noise()
    cached = list((tmp_path / "cache" / "real-features").glob("*-noise*"))
    assert len(cached) == 1
    real = synthetic_faces(300, 32, seed=0)
    again = Scorer(get_extractor("random"), RealImages(real.images, real.digest), NUM_SAMPLES)
    assert again.noise() == noise


def judge_history(scorer, history, rule, log=None):
    judge = TrainingJudge(scorer, log, rule=rule, register="faces")
    for epoch, generator in history.items():
        stop = judge.checkpoint_written(epoch, generator, model_id=f"m-{epoch}")
        if stop is not None:
            return judge, epoch, stop
    return judge, None, None


def test_judge_stops_at_a_confirmed_collapse_and_not_on_a_stable_run(scorer):
    log = RecordingLog()
    judge, stopped, (kind, reason) = judge_history(scorer, collapsing_history(onset=6), StopRule(on_collapse=True), log)
    # The onset is the first collapsed checkpoint; the rule confirms it at the next one.
    assert judge.evaluation.collapse.onset_epoch == 6 and stopped == 7
    assert kind == "collapse" and "onset at epoch 6" in reason
    assert judge.evaluation.best_epoch < 6
    assert len(log.progress) == 7  # the decision was recorded after every checkpoint
    assert judge.finish() == "models:/faces@best" and log.recorded[0].best_epoch == judge.evaluation.best_epoch
    status = judge.status()
    assert set(status) == {"fid", "div", "best"} and status["best"] == str(judge.evaluation.best_epoch)

    judge, stopped, _ = judge_history(scorer, stable_history(), StopRule(on_collapse=True))
    assert stopped is None and judge.evaluation.collapse.onset_epoch is None
    assert len(judge.evaluation.checkpoints) == 10


def test_judge_scores_equal_the_engine_on_the_same_generators(scorer):
    history = collapsing_history(onset=6, epochs=8)
    judge, _, _ = judge_history(scorer, history, StopRule())
    offline = evaluate([GeneratorCheckpoint(e, g) for e, g in history.items()], scorer)
    assert [c.scores for c in judge.evaluation.checkpoints] == [c.scores for c in offline.checkpoints]
    assert (judge.evaluation.best_epoch, judge.evaluation.collapse.onset_epoch) == (
        offline.best_epoch, offline.collapse.onset_epoch)


def test_patience_rule_counts_checkpoints_without_a_new_best(scorer):
    # Identical checkpoints: the first stays the best (lowest FID, earliest among equals).
    same = PoolGenerator(600, noise=0.1)
    judge, stopped, (kind, reason) = judge_history(scorer, {e: same for e in range(1, 9)}, StopRule(patience=3))
    assert (judge.evaluation.best_epoch, stopped, kind) == (1, 4, "patience")
    assert "3 checkpoints without a new best (epochs 2, 3, 4)" in reason
    # A run resumed after that stop counts from where it stopped.
    resumed = StopRule(patience=3, after_epoch=4)
    assert resumed.reason(judge.evaluation) is None
    judge, stopped, _ = judge_history(scorer, {e: same for e in range(1, 9)}, resumed)
    assert stopped == 7


def test_a_resumed_run_is_not_stopped_again_for_the_same_onset(scorer):
    history = collapsing_history(onset=6)
    judge, stopped, _ = judge_history(scorer, history, StopRule(on_collapse=True, after_epoch=7))
    assert stopped is None and judge.evaluation.collapse.onset_epoch == 6


def test_judge_resume_takes_logged_scores_and_scores_the_rest(scorer):
    history = collapsing_history(onset=6, epochs=4)
    log = RecordingLog()
    judge_history(scorer, {e: history[e] for e in (1, 2)}, StopRule(), log)
    judge = TrainingJudge(scorer, log)
    judge.resume([GeneratorCheckpoint(e, g) for e, g in history.items() if e <= 3])
    assert [(c.epoch, c.reused) for c in judge.evaluation.checkpoints] == [(1, True), (2, True), (3, False)]
    assert (3, f"random@{NUM_SAMPLES}") in log.scores


def test_an_interrupted_scoring_leaves_nothing_behind(scorer):
    log = RecordingLog()
    judge, _, _ = judge_history(scorer, stable_history(epochs=2), StopRule(), log)
    before = (list(judge.scored), dict(log.scores), judge.evaluation)
    calls = []

    def ctrl_c():
        calls.append(1)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        judge.checkpoint_written(3, PoolGenerator(600), interrupt=ctrl_c)
    assert calls == [1]
    assert (list(judge.scored), dict(log.scores), judge.evaluation) == before


def test_stop_rule_checks_its_patience():
    with pytest.raises(ValueError, match="at least 1"):
        StopRule(patience=0)
    assert not StopRule().active and StopRule(patience=2).active


def test_scorer_rejects_too_few_samples(scorer):
    with pytest.raises(FaceganError, match="at least 10"):
        Scorer(scorer.extractor, scorer.real, 5)
    small = np.zeros((3, 3, 32, 32), dtype=np.uint8)
    from evaluation.sources import ImagesCheckpoint

    with pytest.raises(FaceganError, match="3 images; the metrics need at least 6"):
        scorer.score(ImagesCheckpoint(1, torch.from_numpy(small)))
