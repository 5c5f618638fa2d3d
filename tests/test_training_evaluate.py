"""Scoring while training, against a real sqlite store: the three sources agree, Ctrl-C mid-scoring."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from PIL import Image

from evaluation.engine import RealImages, Scorer, evaluate, generator_batches
from evaluation.features import get_extractor
from evaluation.metrics import SCORE_KEYS
from evaluation.online import TrainingJudge
from evaluation.sources import GeneratorCheckpoint, sample_folders
from facegan.config import load_config
from facegan.scoring import training_judge, training_scorer
from facegan.synthetic import synthetic_faces
from facegan.training import fetch_resume_payload, train

pytestmark = pytest.mark.slow

TINY = {
    "model.image_size": 32, "model.g_width": 8, "model.d_width": 8, "model.latent_dim": 16,
    "train.batch_size": 16, "train.device": "cpu", "tracking.num_samples": 16, "data.num_images": 64,
}


@pytest.fixture
def faces():
    return synthetic_faces(64, 32, seed=0)


def test_a_run_in_mlflow_its_generators_and_their_folders_score_alike(tracking_uri, faces, tmp_path, monkeypatch):
    from facegan.tracking import MlflowRunSource, MlflowRunTracker

    monkeypatch.setenv("FACEGAN_CACHE_DIR", str(tmp_path / "cache"))
    cfg = load_config(overrides={**TINY, "train.epochs": 3, "tracking.checkpoint_every": 1})
    tracker = MlflowRunTracker.start(tracking_uri, "three-sources")
    train(cfg, faces, tracker, progress=False)
    scorer = Scorer(get_extractor("random"), RealImages(faces.images, faces.digest), 60)

    with MlflowRunSource.open(tracking_uri, tracker.run_id) as source:
        checkpoints = source.checkpoints()
        from_run = evaluate(checkpoints, scorer, source)
        generators = {c.epoch: c.load()[0] for c in checkpoints}
        assert source.scored_num_samples("random") == 60
    in_memory = evaluate([GeneratorCheckpoint(e, g) for e, g in generators.items()], scorer)
    for epoch, generator in generators.items():
        folder = tmp_path / "samples" / str(epoch)
        folder.mkdir(parents=True)
        for i, image in enumerate(torch.cat(list(generator_batches(generator, 60, torch.device("cpu"))))):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    from_folders = evaluate(sample_folders(tmp_path / "samples"), scorer)

    assert [c.epoch for c in from_run.checkpoints] == [1, 2, 3]
    assert [c.scores for c in from_run.checkpoints] == [c.scores for c in in_memory.checkpoints]
    for a, b in zip(in_memory.checkpoints, from_folders.checkpoints):
        for key in set(SCORE_KEYS) - {"kid", "kid_std"}:  # KID's subsets go by position; folders read shuffled
            assert a.scores[key] == pytest.approx(b.scores[key], rel=1e-6, abs=1e-12), key
    for other in (in_memory, from_folders):
        assert (other.best_epoch, other.collapse.onset_epoch) == (from_run.best_epoch, from_run.collapse.onset_epoch)


def test_ctrl_c_while_a_checkpoint_is_scored_leaves_the_run_resumable(tracking_uri, faces, tmp_path, monkeypatch):
    from facegan.tracking import MlflowRunSource, MlflowRunTracker

    monkeypatch.setenv("FACEGAN_CACHE_DIR", str(tmp_path / "cache"))
    cfg = load_config(overrides={**TINY, "train.epochs": 4, "tracking.checkpoint_every": 1,
                                 "evaluate.features": "random", "evaluate.num_samples": 300,
                                 "evaluate.register": None})
    scorer = training_scorer(cfg, faces, progress=False)
    tracker = MlflowRunTracker.start(tracking_uri, "ctrl-c-scoring")

    class CtrlCWhileScoringEpoch2(TrainingJudge):
        def checkpoint_written(self, epoch, generator, **kwargs):
            if epoch == 2:  # the user presses Ctrl-C while checkpoint 2 is being scored
                os.kill(os.getpid(), signal.SIGINT)
            return super().checkpoint_written(epoch, generator, **kwargs)

    source = MlflowRunSource(tracker.client, tracker.run_id, tracker=tracker)  # as `facegan train` wires it
    with pytest.raises(KeyboardInterrupt):
        train(cfg, faces, tracker, progress=False, judge=CtrlCWhileScoringEpoch2(scorer, source))
    client = tracker.client
    assert client.get_run(tracker.run_id).info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(tracker.run_id, "random/fid")] == [1]  # 2 was not half-logged
    assert [c.epoch for c in source.checkpoints()] == [1, 2]

    resumed = MlflowRunTracker.reopen(tracking_uri, tracker.run_id)
    payload = fetch_resume_payload(resumed)
    assert payload["epoch"] == 2  # the last completed epoch, its checkpoint written
    with MlflowRunSource(resumed.client, resumed.run_id, tracker=resumed) as source:
        judge = training_judge(cfg, scorer, source, progress=False)  # scores checkpoint 2 from the store
        assert [(c.epoch, c.reused) for c in judge.evaluation.checkpoints] == [(1, True), (2, False)]
        train(cfg, faces, resumed, resume_payload=payload, progress=False, judge=judge)
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(tracker.run_id, "random/fid")) == [1, 2, 3, 4]
    assert sorted(m.step for m in client.get_metric_history(tracker.run_id, "d_steps")) == [1, 2, 3, 4]
