"""The copying benchmark's own parts: C_T's Mann-Whitney Z against scipy, C_T's sign on planted
sets, the degradations and the copy ladders' make-up."""

import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu, norm

from experiments.collapse import copying


def test_mann_whitney_u_and_z_match_scipy():
    rng = np.random.default_rng(0)
    generated, held_out = rng.normal(0.0, 1.0, 17), rng.normal(0.4, 1.0, 23)  # continuous: no ties
    u, z = copying.mann_whitney_z(generated, held_out)
    reference = mannwhitneyu(generated, held_out, alternative="less", method="asymptotic", use_continuity=True)
    assert u == pytest.approx(float(reference.statistic), abs=1e-9)
    # scipy's asymptotic one-sided p-value is norm.cdf of dgm-eval's continuity-corrected Z.
    assert z == pytest.approx(float(norm.ppf(reference.pvalue)), rel=1e-9)


def test_mann_whitney_u_with_ties_matches_scipy():
    generated, held_out = np.array([0.0, 0.0, 1.0, 2.0, 2.0]), np.array([0.0, 2.0, 3.0, 3.0])
    u, _ = copying.mann_whitney_z(generated, held_out)
    assert u == pytest.approx(float(mannwhitneyu(generated, held_out).statistic))


def test_ct_is_negative_for_copies_and_near_zero_for_novel_draws():
    rng = np.random.default_rng(1)
    training, held_out, novel = (rng.normal(size=(n, 8)) for n in (400, 300, 300))
    reference = copying.CTReference(training, held_out)
    copies = training[:300] + rng.normal(scale=1e-3, size=(300, 8))
    assert reference.score(copies)["ct"] < -10
    assert abs(reference.score(novel)["ct"]) < 3
    far = rng.normal(size=(300, 8)) * 3  # farther from the training points than held-out ones: underfitting
    assert reference.score(far)["ct"] > 3


def test_ct_counts_only_cells_with_more_than_20_generated_samples():
    rng = np.random.default_rng(2)
    training, held_out = rng.normal(size=(200, 4)), rng.normal(size=(200, 4))
    result = copying.CTReference(training, held_out).score(training[:15])
    assert result["cells"] == [None, None, None] and np.isnan(result["ct"])


@pytest.mark.parametrize("kind", sorted(copying.DEGRADATIONS))
def test_each_degradation_changes_images_more_at_higher_strength(kind):
    images = copying.novel_faces(8, 0)
    changes = [(copying.degrade(images, kind, strength, seed=0).float() - images.float()).abs().mean().item()
               for strength in copying.DEGRADATIONS[kind]]
    assert copying.degrade(images, kind, copying.DEGRADATIONS[kind][0], seed=0).dtype == torch.uint8
    assert 0 < changes[0] < changes[1] < changes[2]


def test_copy_ladders_copy_the_share_asked_for():
    training = copying.novel_faces(50, 99)  # stands in for the training images
    ladders = copying.copy_ladders(training, 100)
    keys = {image.numpy().tobytes() for image in training}
    for kind, sets in ladders.items():
        for share, images in sets:
            copied = sum(image.numpy().tobytes() in keys for image in images)
            if kind.startswith("exact"):
                assert copied == round(share * 100)
            distinct = len({image.numpy().tobytes() for image in images[: round(share * 100)]})
            if kind == "exact-handful" and share:  # noisy copies of a handful differ pixel by pixel
                assert distinct <= copying.HANDFUL


def test_replay_judges_histories_stored_before_the_copy_test_by_the_distance_test_only(tmp_path):
    import json

    from experiments import RESULTS_DIR
    from experiments.collapse import replay

    stored = json.loads((RESULTS_DIR / "collapse_benchmark-quick.json").read_text())
    run = stored["histories"]["runs"][0]
    assert "copy_share" not in run["checkpoints"][0]  # scored before the ratio test existed
    again = replay.replay_run(run)
    assert again["memorisation_threshold"] is None and again["memorised_epochs"] == []
    assert again["distance_test_epochs"] == []  # its largest memorised share is far below the threshold
    # With a copy share planted on every checkpoint of a copy of it, the ratio test judges it.
    planted = json.loads(json.dumps(run))
    planted["noise"] = {**planted["noise"], "copy_share_heldout": 0.0, "heldout_size": 1000}
    for checkpoint in planted["checkpoints"]:
        checkpoint["copy_share"] = 0.5 if checkpoint["epoch"] >= planted["checkpoints"][-2]["epoch"] else 0.0
    again = replay.replay_run(planted)
    assert again["memorised_epochs"] == [c["epoch"] for c in planted["checkpoints"][-2:]]
    path = tmp_path / "again.json"
    path.write_text(json.dumps({**stored, "histories": {**stored["histories"], "runs": [planted]}}))
    text = replay.against(RESULTS_DIR / "collapse_benchmark-quick.json", path)
    assert f"| {run['run']} | {run['features']} | yes |" in text


def test_degraded_histories_keep_every_score_and_replay_as_judged(tmp_path, monkeypatch, capsys):
    import json

    from experiments.collapse import replay

    monkeypatch.setenv("FACEGAN_CACHE_DIR", str(tmp_path / "cache"))
    copying.main(["--tiny", "--parts", "histories", "--history-seeds", "3", "--out", str(tmp_path)])
    stored = json.loads((tmp_path / "copying_ladders-tiny.json").read_text())
    assert list(stored["histories"]) == ["random/degraded-3", "encoder/degraded-3"]
    history = stored["histories"]["random/degraded-3"]
    assert {"fid", "coverage", "diversity", "duplicate_share", "copy_share"} <= set(history["points"][0]["scores"])
    assert {"coverage_std", "diversity_std"} <= set(history["noise"])
    capsys.readouterr()
    assert replay.main([str(tmp_path / "copying_ladders-tiny.json")]) == 0
    out = capsys.readouterr().out
    # Today's rule on the stored scores finds what the benchmark found when it ran.
    for key, history in stored["histories"].items():
        assert f"| {key} | 4 | {history['collapse_onset']} | {history['collapse_onset']} |" in out
    # An earlier commit's rule reads that commit's evaluation/collapse.py (HEAD's is today's here).
    assert replay.rule_from("HEAD")(rows_of(history), history["noise"]).onset_epoch == history["collapse_onset"]
    with pytest.raises(SystemExit, match="cannot read evaluation/collapse.py at that commit"):
        replay.rule_from("no-such-commit")
    # A changed rule is what gets replayed: here one that puts an onset at epoch 2 on every history.
    from evaluation.collapse import CollapseResult

    monkeypatch.setattr(replay, "detect_collapse", lambda rows, noise: CollapseResult(
        [r["epoch"] for r in rows], [False] * len(rows), [[]] * len(rows), 2, {}))
    assert "Collapse onsets, replayed: 2 of 2 histories." in replay.degraded_report("x", stored)


def rows_of(history: dict) -> list[dict]:
    return [{"epoch": i + 1, **point["scores"]} for i, point in enumerate(history["points"])]


def test_a_fixed_look_history_keeps_one_degradation_on_fresh_faces():
    history = copying.degraded_history(4, 6, seed=1, max_level=2, fixed=True)
    labels = {label for label, _ in history}
    assert len(labels) == 1
    kind, strength = labels.pop().split("=")
    assert float(strength) in copying.DEGRADATIONS[kind][:2]  # a strength up to max_level
    first, second = history[0][1], history[1][1]
    assert first.shape == (6, 3, copying.IMAGE_SIZE, copying.IMAGE_SIZE) and not torch.equal(first, second)
