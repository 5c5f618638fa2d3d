"""The collapse benchmark end to end at its tiny scale, and its ground-truth bookkeeping."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import collapse_benchmark as bench  # noqa: E402


def test_gt_onset_is_a_20_percent_fall_below_the_best_so_far():
    epochs = [2, 4, 6, 8, 10]
    assert bench.gt_onset(epochs, [10, 50, 60, 47, 20]) == 8  # 47 <= 0.8 * 60
    assert bench.gt_onset(epochs, [10, 50, 60, 50, 55]) is None  # 50 > 48
    assert bench.gt_onset(epochs, [0, 0, 5, 6, 6]) is None  # rising from nothing is learning


def test_gt_best_prefers_modes_then_quality():
    truth = {2: {"modes": 40, "confident_share": 0.9}, 4: {"modes": 50, "confident_share": 0.3},
             6: {"modes": 50, "confident_share": 0.6}}
    assert bench.gt_best_epoch(truth) == 6


def test_history_targets():
    def run(facegan, lowest, best, detected, truth):
        picks = {"facegan": {"modes": facegan}, "lowest_fid": {"modes": lowest}, "gt_best": {"modes": best}}
        gap = None if detected is None or truth is None else (detected - truth) // 2
        return {"picks": picks, "gt_onset": truth, "detected_onset": detected, "onset_error_checkpoints": gap}

    targets = bench.history_targets([run(95, 60, 96, 10, 8), run(90, 90, 90, None, None)])
    assert targets["choice_keeps_95pct_every_run"]
    assert targets["never_worse_than_lowest_fid"] and targets["strictly_better_on_a_collapsing_run"]
    assert targets["onset_within_one_checkpoint_on_collapsing_runs"] and targets["no_onset_on_other_runs"]
    missed = bench.history_targets([run(50, 60, 96, 14, 8)])
    assert not missed["choice_keeps_95pct_every_run"]
    assert not missed["never_worse_than_lowest_fid"]
    assert not missed["onset_within_one_checkpoint_on_collapsing_runs"]


@pytest.mark.slow
def test_tiny_benchmark_end_to_end(tmp_path, monkeypatch, capsys, tracking_uri):
    monkeypatch.setenv("FACEGAN_CACHE_DIR", str(tmp_path / "cache"))
    bench.main(["--tiny", "--tracking-uri", tracking_uri, "--out", str(tmp_path / "out")])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    figures = json.loads(last)
    assert figures["scale"] == "tiny"
    assert set(figures["spearman"]) >= {"faces/modes", "faces/repeats", "digits/modes", "digits/repeats"}
    assert "collapsing-seed0" in figures["runs"]
    assert figures["mlflow_study_run"]
    written = json.loads((tmp_path / "out" / "collapse_benchmark-tiny.json").read_text())
    run = written["histories"]["runs"][0]
    assert [c["epoch"] for c in run["checkpoints"]] == [1, 2]
    assert set(run["picks"]) == {"facegan", "lowest_fid", "last", "gt_best"}
    assert (tmp_path / "out" / "collapse_benchmark-tiny.md").read_text().startswith("# Collapse benchmark")

    from facegan import tracking

    client = tracking.connect(tracking_uri)
    study = client.get_run(figures["mlflow_study_run"])
    assert study.data.params["scale"] == "tiny"
    assert {a.path for a in client.list_artifacts(study.info.run_id)} >= {
        "collapse_benchmark-tiny.json", "collapse_benchmark-tiny.md"}
