"""The collapse benchmark end to end at its tiny scale, and its ground-truth bookkeeping."""

import json

import pytest
import torch

from experiments.collapse import benchmark as bench
from experiments.collapse import study


def test_gt_onset_is_a_20_percent_fall_below_the_best_so_far():
    epochs = [2, 4, 6, 8, 10]
    assert study.gt_onset(epochs, [10, 50, 60, 47, 20]) == 8  # 47 <= 0.8 * 60
    assert study.gt_onset(epochs, [10, 50, 60, 50, 55]) is None  # 50 > 48
    assert study.gt_onset(epochs, [0, 0, 5, 6, 6]) is None  # rising from nothing is learning
    assert study.gt_onset(epochs, [10, 50, 60, 60, 40]) == 10  # a fall at the last checkpoint counts


def test_gt_onset_is_the_fall_the_run_never_recovers_from():
    epochs = [2, 4, 6, 8, 10, 12, 14]
    # A dip at 6 (30 <= 0.8 * 50) that the run climbs back from, then the collapse at 12.
    modes = [20, 50, 30, 55, 60, 40, 45]
    assert study.gt_first_fall(epochs, modes) == 6
    assert study.gt_onset(epochs, modes) == 12
    # Back within 20% but never back to the best: the fall at 8 is still the onset.
    assert study.gt_onset(epochs, [20, 60, 62, 48, 55, 45, 47]) == 8
    assert study.gt_falls([20, 60, 62, 48, 55, 45, 47]) == [False, False, False, True, False, True, True]


def test_gt_best_prefers_modes_then_quality():
    truth = {2: {"modes": 40, "confident_share": 0.9}, 4: {"modes": 50, "confident_share": 0.3},
             6: {"modes": 50, "confident_share": 0.6}}
    assert study.gt_best_epoch(truth) == 6


def test_history_targets():
    def run(facegan, lowest, best, detected, truth):
        picks = {"facegan": {"modes": facegan}, "lowest_fid": {"modes": lowest}, "gt_best": {"modes": best}}
        gap = None if detected is None or truth is None else (detected - truth) // 2
        return {"picks": picks, "gt_onset": truth, "detected_onset": detected, "onset_error_checkpoints": gap}

    targets = study.history_targets([run(95, 60, 96, 10, 8), run(90, 90, 90, None, None)])
    assert targets["choice_keeps_95pct_every_run"]
    assert targets["never_worse_than_lowest_fid"] and targets["strictly_better_on_a_collapsing_run"]
    assert targets["onset_within_one_checkpoint_on_collapsing_runs"] and targets["no_onset_on_other_runs"]
    missed = study.history_targets([run(50, 60, 96, 14, 8)])
    assert not missed["choice_keeps_95pct_every_run"]
    assert not missed["never_worse_than_lowest_fid"]
    assert not missed["onset_within_one_checkpoint_on_collapsing_runs"]


@pytest.mark.slow
def test_tiny_benchmark_end_to_end(tmp_path, monkeypatch, capsys, tracking_uri):
    monkeypatch.setenv("FACEGAN_CACHE_DIR", str(tmp_path / "cache"))
    # --encoder-epochs changes only the encoder's training, and names the result files after it
    bench.main(["--tiny", "--encoder-epochs", "2", "--tracking-uri", tracking_uri, "--out", str(tmp_path / "out")])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    figures = json.loads(last)
    assert figures["scale"] == "tiny"
    assert set(figures["spearman"]) >= {"faces/modes", "faces/repeats", "digits/modes", "digits/repeats"}
    assert set(figures["runs"]) == {"collapsing-seed0/random", "collapsing-seed0/encoder"}
    assert set(figures["spearman"]["faces/modes"]) == {"random", "encoder"}
    assert figures["mlflow_study_run"]
    written = json.loads((tmp_path / "out" / "collapse_benchmark-tiny-encoder2.json").read_text())
    run = written["histories"]["runs"][0]
    assert [r["features"] for r in written["histories"]["runs"]] == ["random", "encoder"]
    assert any(key.startswith("encoder.") for key in written["targets"])
    assert written["settings"]["encoder"]["epochs"] == 2
    assert written["settings"]["encoder"]["batch_size"] == bench.SCALES["tiny"].encoder.batch_size
    assert [c["epoch"] for c in run["checkpoints"]] == [1, 2, 3]
    assert set(run["picks"]) == {"facegan", "lowest_fid", "last", "gt_best"}
    assert (tmp_path / "out" / "collapse_benchmark-tiny-encoder2.md").read_text().startswith("# Collapse benchmark")

    from facegan import tracking

    client = tracking.connect(tracking_uri)
    study = client.get_run(figures["mlflow_study_run"])
    assert study.data.params["scale"] == "tiny"
    assert study.data.params["encoder_epochs"] == "2"
    trained = client.get_run(run["run_id"])  # the designed collapse is recorded on its run
    assert trained.data.params["benchmark.collapse_after"] == "1"
    assert float(trained.data.params["benchmark.collapse_lr_d"]) == 0.0
    assert {a.path for a in client.list_artifacts(study.info.run_id)} >= {
        "collapse_benchmark-tiny-encoder2.json", "collapse_benchmark-tiny-encoder2.md"}

    # Every score and the chance levels are stored, so the rule can be replayed on the same runs.
    assert {"fid", "kid", "kid_std", "coverage", "diversity", "duplicate_share", "precision"} <= set(run["checkpoints"][0])
    assert {"coverage_std", "diversity_std"} <= set(run["noise"])
    check_replay(tmp_path / "out" / "collapse_benchmark-tiny-encoder2.json", monkeypatch, capsys)
    check_ground_truth_noise(tmp_path / "out" / "collapse_benchmark-tiny-encoder2.json", tracking_uri, tmp_path, capsys)


def check_replay(path, monkeypatch, capsys):
    from experiments.collapse import replay
    from evaluation.collapse import Choice

    stored = json.loads(path.read_text())
    runs, targets = replay.replay(stored)
    # The same rule on the same scores judges as the benchmark did.
    for old, new in zip(stored["histories"]["runs"], runs):
        assert new["picks"] == old["picks"] and new["detected_onset"] == old["detected_onset"]
    assert targets == {k: v for k, v in stored["targets"].items() if k in targets}
    assert replay.main([str(path)]) == 0
    assert "| collapsing-seed0 | encoder |" in capsys.readouterr().out

    # A changed rule is what gets replayed: here one that always keeps the last checkpoint.
    monkeypatch.setattr(replay, "choose_best", lambda cps, *rules: Choice(cps[-1]["epoch"], "last", []))
    runs, _ = replay.replay(stored)
    assert all(r["picks"]["facegan"] == r["picks"]["last"] for r in runs)

    # A file from before the scores were stored is refused with the reason, not a traceback.
    for run in stored["histories"]["runs"]:
        for checkpoint in run["checkpoints"]:
            del checkpoint["kid"]
    stale = path.with_name("stale.json")
    stale.write_text(json.dumps(stored))
    assert replay.main([str(stale)]) == 1
    assert "predates stored scores; run the benchmark again" in capsys.readouterr().err


def check_ground_truth_noise(path, tracking_uri, tmp_path, capsys):
    from experiments.collapse import ground_truth as gt
    from experiments.collapse import ground_truth_noise

    from evaluation.engine import LATENT_SEED
    from facegan.tracking import MlflowRunSource

    stored = json.loads(path.read_text())
    run = stored["histories"]["runs"][0]
    out = tmp_path / "noise"
    report = ground_truth_noise.main([str(path), "--tracking-uri", tracking_uri, "--repeats", "2",
                                      "--from-epoch", "1", "--features", "random=random", "--out", str(out)])
    counts = report["counts"][run["run_id"]]
    assert list(counts) == ["1", "2", "3"] and all(len(v) == 2 for v in counts.values())
    fids = report["fids"][run["run_id"]]["random"]
    assert list(fids) == ["1", "2", "3"] and all(len(v) == 2 and min(v) > 0 for v in fids.values())
    random_row = next(r for r in report["runs"] if r["features"] == "random")
    assert "lowest_mean_fid" in random_row and "lowest_mean_fid" not in report["runs"][1]  # encoder not asked for
    assert all(0 <= m <= gt.num_face_modes() for v in counts.values() for m in v)
    assert report["settings"]["seeds"] == [LATENT_SEED + 1, LATENT_SEED + 2]
    # The picks' stored counts are the benchmark's own.
    for row, summary in zip(report["runs"], stored["histories"]["runs"]):
        for pick in ("facegan", "lowest_fid"):
            if "stored_modes" in row[pick]:
                assert row[pick]["stored_modes"] == summary["picks"][pick]["modes"]
    assert (out / "collapse_benchmark-tiny-encoder2-gt_noise.md").read_text().startswith("# Ground-truth resolution")

    # Drawn with facegan's own latent seed, the resampler reproduces the benchmark's stored counts,
    # which came through evaluate's generator_batches: the same latents, classified the same way.
    classifier = gt.FaceClassifier.load_or_train()
    with MlflowRunSource.open(tracking_uri, run["run_id"]) as source:
        checkpoint = source.checkpoints()[-1]
        generator, payload = checkpoint.load()
    images = ground_truth_noise.latent_draw(generator, stored["settings"]["gt_samples"], LATENT_SEED)
    assert classifier.count_modes(images).to_dict() == run["checkpoints"][-1]["gt"]
    # ... and, scoring that draw, the FID `facegan evaluate --features random` logged for the checkpoint.
    from evaluation.features import get_extractor

    spaces = {"random": get_extractor("random")}
    modes, draw_fids = ground_truth_noise.score_draw(
        generator, checkpoint.epoch, LATENT_SEED, stored["settings"]["gt_samples"], classifier,
        ground_truth_noise.run_scorers(payload, spaces, stored["num_samples"]))
    assert modes == run["checkpoints"][-1]["gt"]["modes"]
    assert draw_fids["random"] == pytest.approx(run["checkpoints"][-1]["fid"], rel=1e-6)

    # Bad input: one message and exit code 2, nothing written.
    capsys.readouterr()
    for argv, message in ((["--tracking-uri", "sqlite:///" + str(tmp_path / "absent.db")], "no store at"),
                          (["--tracking-uri", tracking_uri, "--repeats", "1"], "--repeats must be at least 2"),
                          (["--tracking-uri", tracking_uri, "--from-epoch", "4"], "leaves out the ground-truth best"),
                          (["--tracking-uri", tracking_uri, "--features", "inception"], "takes LABEL=SPEC"),
                          (["--tracking-uri", tracking_uri, "--features", "vgg=random"], "was scored under 'vgg'")):
        with pytest.raises(SystemExit) as exit_info:
            ground_truth_noise.main([str(path), "--from-epoch", "1", *argv, "--out", str(tmp_path / "bad")])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    (tmp_path / "other.json").write_text(json.dumps({"runs": []}))
    with pytest.raises(SystemExit) as exit_info:
        ground_truth_noise.main([str(tmp_path / "other.json"), "--tracking-uri", tracking_uri])
    assert exit_info.value.code == 2 and "is not a collapse benchmark result" in capsys.readouterr().err
    assert not (tmp_path / "absent.db").exists() and not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_tiny_benchmark_online_and_copying(tmp_path, monkeypatch, capsys, tracking_uri):
    """--online trains each run with in-training evaluation and compares with `evaluate` afterwards;
    --copying scores the copying ladders. At the tiny scale these check the bookkeeping, not the rule."""
    monkeypatch.setenv("FACEGAN_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    online = bench.main(["--tiny", "--online", "--tracking-uri", tracking_uri, "--out", str(out)])
    assert [(r["run"], r["features"]) for r in online["runs"]] == [("collapsing-seed0", "random"),
                                                                  ("collapsing-seed0", "encoder")]
    for run in online["runs"]:
        assert run["planned_epochs"] == 3 and run["trained_epochs"] == (run["stopped_epoch"] or 3)
        assert run["choice_equals_offline"] and run["max_relative_score_difference"] == 0.0
        assert run["epochs_saved_share"] == pytest.approx(1 - run["trained_epochs"] / 3, abs=1e-3)
        assert run["designed_collapse_checkpoint"] == 2  # collapse_after=1: the first checkpoint after it
    assert {"random.stable_runs_do_not_stop", "encoder.choice_equals_offline_evaluate"} <= set(online["targets"])
    assert json.loads((out / "collapse_benchmark-tiny-online.json").read_text())["runs"] == json.loads(
        json.dumps(online["runs"]))
    assert "in-training evaluation" in (out / "collapse_benchmark-tiny-online.md").read_text()

    copying = bench.main(["--tiny", "--copying", "--tracking-uri", tracking_uri, "--out", str(out)])
    ladder = copying["copying"]["faces"]["random"]["exact"]
    assert [p["copied_share"] for p in ladder["points"]] == list(study.COPY_SHARES)
    for key in ("copy_share", "memorised_share"):  # the deciding ratio test and the reported distance test
        shares = [p[key] for p in ladder["points"]]
        assert shares == sorted(shares) and shares[-1] == 1.0  # all copied: every sample sits on a training image
    assert ladder["spearman"] > 0.99 and not ladder["flagged_at_zero"]
    assert ladder["first_flagged_share"] is not None and ladder["first_flagged_share"] <= 0.25
    assert (out / "collapse_benchmark-tiny-copying.md").read_text().startswith("# Collapse benchmark, copying")
    capsys.readouterr()


def test_designed_collapse_freezes_the_critic_and_raises_gs_learning_rate():
    from facegan.config import load_config
    from facegan.synthetic import synthetic_faces
    from facegan.run_tracker import MemoryTracker
    from facegan.training import train

    overrides = {**bench.BASE_OVERRIDES, "model.g_width": 8, "model.d_width": 8, "train.batch_size": 16,
                 "train.n_critic": 1, "train.epochs": 3, "tracking.checkpoint_every": 1}
    cfg = load_config(None, overrides=overrides)
    faces = synthetic_faces(32, 32, seed=0)
    snapshots = {}

    class Recording(study.DesignedCollapse):
        def run_epoch(self, stop=None):
            snapshots[self.epoch] = [p.detach().clone() for p in self.gan.discriminator.parameters()]
            return super().run_epoch(stop)

    tracker = MemoryTracker()
    trainer = train(cfg, faces, tracker, progress=False,
                    trainer_class=lambda *a, **k: Recording(*a, after=1, lr_g=5e-3, lr_d=0.0, **k))
    assert tracker.status == "FINISHED" and set(tracker.metrics["loss_d"]) == {1, 2, 3}
    assert [g["lr"] for g in trainer.gan.opt_g.param_groups] == [5e-3]
    # The critic learned in epoch 1 and not after.
    assert any(not torch.equal(a, b) for a, b in zip(snapshots[0], snapshots[1]))
    final = list(trainer.gan.discriminator.parameters())
    assert all(torch.equal(a, b) for a, b in zip(snapshots[1], final))
