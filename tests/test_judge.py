"""facegan.judge: judging the checkpoints of a user's own training loop, as the README shows it."""

from __future__ import annotations

import pytest
import torch
from helpers import PoolGenerator, collapsing_history
from torch import nn

from evaluation.engine import generator_batches
from evaluation.features import get_extractor
from evaluation.sources import GeneratorCheckpoint
from facegan.errors import FaceganError
from facegan.judge import Judge, Verdict
from facegan.synthetic import synthetic_faces

NUM_SAMPLES = 150


@pytest.fixture
def real(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEGAN_CACHE_DIR", str(tmp_path / "cache"))
    return synthetic_faces(300, 32, seed=0)


class RecordingLog:
    """A decision log in memory: what the judge hands to one (the MLflow seam)."""

    def __init__(self):
        self.scores, self.progress, self.recorded = {}, [], None

    def logged_scores(self, checkpoint, space, num_samples, *, real_digest):
        return None

    def log_scores(self, checkpoint, space, num_samples, scores, *, real_digest):
        self.scores[checkpoint.epoch] = (space, num_samples, dict(scores))

    def record_progress(self, evaluation):
        self.progress.append(evaluation.best_epoch)

    def record(self, evaluation, figure, register_name):
        self.recorded = (evaluation.best_epoch, register_name)


def test_the_readme_plain_loop_stops_at_a_confirmed_collapse_and_keeps_the_best_weights(real):
    history = collapsing_history(onset=6)          # what "training" makes of the generator, epoch by epoch
    netG = PoolGenerator(600)                       # the one generator the loop trains, changed in place

    def train_one_epoch(epoch):
        netG.faces, netG.noise = history[epoch].faces, history[epoch].noise

    # The README's loop.
    judge = Judge(real, features=get_extractor("random"), num_samples=NUM_SAMPLES, stop_on_collapse=True)
    verdicts, best_faces = [], None
    for epoch in range(1, 11):
        train_one_epoch(epoch)
        verdict = judge.add(epoch, generator=netG)
        verdicts.append(verdict)
        if verdict.is_best:
            best_faces = netG.faces.clone()         # torch.save(netG.state_dict(), ...) in a real loop
        if verdict.should_stop:
            break
    result = judge.finish()

    # The collapse starts at epoch 6; the rule confirms it at the next checkpoint, and the loop stops.
    assert verdict.epoch == 7 and verdict.collapse_epoch == 6 and verdict.stop_rule == "collapse"
    assert "onset at epoch 6" in verdict.reason and "stop: collapse confirmed at epoch 7" in str(verdict)
    assert not any(v.should_stop for v in verdicts[:-1])
    assert verdict.best_epoch < 6 and torch.equal(best_faces, history[verdict.best_epoch].faces)
    assert "<- best" in result.render_table() and result.collapse.onset_epoch == 6

    # The same scores as the engine's on the same generators (facegan evaluate's path), first and last.
    scorer = judge._judge.scorer
    for epoch in (1, 7):
        assert verdicts[epoch - 1].scores == scorer.score(GeneratorCheckpoint(epoch, history[epoch]))[0]

    # The generator being trained was scored as a copy: not moved, not left in eval mode, same layout.
    assert netG.training and netG.faces.is_contiguous() and netG.faces.device.type == "cpu"


class SigmoidGenerator(nn.Module):
    """A generator of another shape: latents N x 8 x 1 x 1, images in [0, 1], a Linear layer."""

    def __init__(self, pool: PoolGenerator):
        super().__init__()
        self.pool, self.scale = pool, nn.Linear(1, 1)  # a parameter, so the copy is a real deep copy

    def forward(self, z):
        assert z.shape[1:] == (8, 1, 1), z.shape
        return (self.pool(z.flatten(1)) + 1) / 2


def test_samples_generators_and_value_ranges_score_alike(real):
    pool = PoolGenerator(40, noise=0.1)
    drawn = torch.cat(list(generator_batches(pool, NUM_SAMPLES, torch.device("cpu"))))  # uint8, upright
    base = Judge(real, features=get_extractor("random"), num_samples=NUM_SAMPLES).add(3, samples=drawn)
    assert isinstance(base, Verdict) and base.best_epoch == 3 and base.collapse_epoch is None

    # Floats in [0, 1], the real images too; a generator taking 4-d latents and drawing [0, 1].
    unit = Judge(real.images.float() / 255, features=get_extractor("random"), num_samples=NUM_SAMPLES,
                 latent_shape=(8, 1, 1), value_range=(0, 1))
    assert unit.add(3, samples=drawn.float() / 255).scores == base.scores
    assert unit.add(4, generator=SigmoidGenerator(pool)).scores == pytest.approx(base.scores, rel=1e-6, abs=1e-9)

    # The tutorial's transposed tensors, real and samples, swapped back.
    flipped = Judge(real.images.transpose(-1, -2), features=get_extractor("random"), num_samples=NUM_SAMPLES,
                    transposed=True)
    assert flipped.add(3, samples=drawn.transpose(-1, -2)).scores == base.scores


def test_the_log_seam_receives_every_score_the_decisions_and_the_result(real):
    log = RecordingLog()
    judge = Judge(real, features=get_extractor("random"), num_samples=NUM_SAMPLES, patience=2, log=log)
    history = collapsing_history(onset=3, epochs=5)
    verdicts = [judge.add(epoch, generator=history[epoch], model_id=f"m-{epoch}") for epoch in (1, 2, 3, 4)]
    assert sorted(log.scores) == [1, 2, 3, 4] and log.scores[1][:2] == ("random", NUM_SAMPLES)
    assert log.scores[4][2] == verdicts[-1].scores and log.progress == [v.best_epoch for v in verdicts]
    # Patience: two checkpoints in a row without a new best.
    assert verdicts[-1].should_stop and verdicts[-1].stop_rule in ("collapse", "patience")
    assert judge.finish(register="faces") is judge.result and log.recorded == (judge.result.best_epoch, "faces")
    assert [c.model_id for c in judge.result.checkpoints] == ["m-1", "m-2", "m-3", "m-4"]


def test_mistakes_are_one_clear_error(real, tmp_path):
    judge = Judge(real, features=get_extractor("random"), num_samples=NUM_SAMPLES)
    with pytest.raises(FaceganError, match="nothing was judged"):
        judge.finish()
    with pytest.raises(FaceganError, match="give the checkpoint's generator or its samples"):
        judge.add(1)
    with pytest.raises(FaceganError, match="no latent_dim attribute: give the Judge its latent_shape"):
        judge.add(1, generator=nn.Sequential(nn.ConvTranspose2d(8, 3, 32)))
    wrong = Judge(real, features=get_extractor("random"), num_samples=NUM_SAMPLES, latent_shape=8)
    with pytest.raises(FaceganError, match=r"epoch 1: the generator failed on latents of shape 2x8 .*latent shape right"):
        wrong.add(1, generator=nn.Sequential(nn.ConvTranspose2d(8, 3, 32)))
    with pytest.raises(FaceganError, match=r"the samples must be a tensor N x 3 x H x W; got \(5, 32, 32\)"):
        judge.add(1, samples=torch.zeros(5, 32, 32, dtype=torch.uint8))
    with pytest.raises(FaceganError, match="patience must be a whole number"):
        Judge(real, features=get_extractor("random"), patience=0)
    with pytest.raises(FaceganError, match="does not exist|no such file"):
        Judge(tmp_path / "missing.pt", features=get_extractor("random"))
    with pytest.raises(FaceganError, match="unknown feature space|features"):
        Judge(real, features="nonsense")


def test_the_active_mlflow_run_is_logged_as_train_evaluate_logs_a_run(real, tracking_uri):
    import mlflow
    from mlflow import MlflowClient

    from facegan.tracking import active_run_log

    with pytest.raises(FaceganError, match="no active MLflow run"):
        active_run_log()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("judge-active-run")
    history = collapsing_history(onset=3, epochs=4)
    with mlflow.start_run() as run:
        judge = Judge(real, features=get_extractor("random"), num_samples=NUM_SAMPLES, log=active_run_log())
        for epoch in (1, 2, 3):
            judge.add(epoch, generator=history[epoch])
        judge.finish()
    client = MlflowClient(tracking_uri)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "random/fid")] == [1, 2, 3]
    logged = client.get_run(run.info.run_id)
    assert logged.data.tags["facegan.best_epoch"] == str(judge.result.best_epoch)
    assert logged.data.tags["facegan.num_samples.random"] == str(NUM_SAMPLES)
    assert {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")} == {
        "evaluation/random_ranking.json", "evaluation/random_scores.png", "evaluation/random_summary.json"}
