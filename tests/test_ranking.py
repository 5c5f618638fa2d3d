"""The ranking table, its summary lines and the JSON: which copy test flagged what, dips, the legend."""

from __future__ import annotations

from evaluation.engine import decide
from evaluation.memorisation import DISTANCE_TEST, RATIO_TEST
from evaluation.ranking import Scored, pyplot, scores_figure

NOISE = {"sample_size": 500, "copy_share_heldout": 0.0, "heldout_size": 400, "memorised_share_heldout": 0.01,
         "memorised_share_mean": 0.01, "memorised_share_std": 0.003,
         "coverage_std": 0.01, "diversity_std": 0.01, "duplicate_share_mean": 0.01, "duplicate_share_std": 0.005}


def evaluation_of(diversity, copy, memorised):
    scored = [Scored(10 * (i + 1), f"ckpt-{10 * (i + 1)}",
                     # a diversity fall costs FID (the collapse rule wants FID to confirm a drop)
                     {"fid": 50.0 - i + 30.0 * (0.9 - d), "kid": 0.05 - i / 100, "kid_std": 1e-4, "precision": 0.7, "recall": 0.6,
                      "density": 1.0, "coverage": 0.8, "vendi": 10.0, "diversity": d, "duplicate_share": 0.01,
                      "memorised_share": m, "copy_share": c}, num_samples=500)
              for i, (d, c, m) in enumerate(zip(diversity, copy, memorised))]
    return decide(scored, NOISE, space="random", note="a note", num_samples=500)


def test_table_marks_the_dip_the_choice_names_and_which_test_flagged_what():
    evaluation = evaluation_of(diversity=[0.9, 0.9, 0.5, 0.9, 0.9, 0.9],
                               copy=[0.0, 0.0, 0.0, 0.002, 0.2, 0.3],
                               memorised=[0.0, 0.06, 0.0, 0.07, 0.3, 0.4])
    assert "a dip at epoch 30" in evaluation.choice.reason
    lines = evaluation.render_table().splitlines()
    row = {int(line.split()[0]): line for line in lines[2:] if line.strip() and line.split()[0].isdigit()}
    assert row[30].endswith("dip, recovered")
    assert row[20].endswith("near training (distance test only, not deciding)")
    assert row[40].split()[9] == "0.00" and "near training" in row[40]  # copy column: the ratio test's share
    assert row[50].split()[9] == "0.20" and "copying (ratio test, onset)" in row[50]
    assert "copying (ratio test)" in row[60] and "near training" not in row[60]
    text = "\n".join(lines)
    m = evaluation.memorisation
    assert (f"copying training images (ratio test): epochs 50, 60 (from epoch 50 on) (copy share above "
            f"{m.threshold:.3f} at 500 samples; by chance 0.000, from held-out real images (400))") in text
    assert "distance test (reported, not deciding: near the data in general is not a copy): epochs 20, 40, 50, 60" in text
    assert ("columns: rank = FID rank, prec = precision, cover = coverage, divers = diversity (Vendi vs real), "
            "dupl = duplicate share, copy = copy share (ratio test)") in text


def test_json_keeps_every_figure_needed_to_redo_each_test():
    evaluation = evaluation_of(diversity=[0.9] * 3, copy=[0.0, 0.1, 0.2], memorised=[0.0, 0.05, 0.2])
    summary = evaluation.to_json()
    memorisation = summary["memorisation"]
    assert memorisation["test"] == RATIO_TEST and memorisation["key"] == "copy_share"
    ratio, distance = memorisation["tests"][RATIO_TEST], memorisation["tests"][DISTANCE_TEST]
    assert ratio["chance_source"] == "held-out real images (400)" and ratio["chance"] == 0.0
    assert {"copy_ratio", "false_alarm", "floor", "threshold", "rule", "chance_size"} <= set(ratio)
    assert distance["chance_source"] == "held-out real images (400)" and not distance["deciding"]
    for checkpoint in summary["checkpoints"]:
        tests = checkpoint["copy_tests"]
        ratio_row = tests[RATIO_TEST]
        # Redo the decision from the JSON alone.
        assert ratio_row["copies"] == round(checkpoint["copy_share"] * ratio_row["num_samples"])
        assert checkpoint["memorised"] == (ratio_row["copies"] >= ratio_row["needed"])
        assert tests[DISTANCE_TEST]["flagged"] == (checkpoint["memorised_share"] > distance["threshold"])
    assert [c["memorised"] for c in summary["checkpoints"]] == [False, True, True]
    assert evaluation.table_columns()["copy_share"] == [0.0, 0.1, 0.2]


def test_the_figure_plots_the_copy_share():
    evaluation = evaluation_of(diversity=[0.9] * 3, copy=[0.0, 0.1, 0.2], memorised=[0.0, 0.05, 0.2])
    figure = scores_figure(evaluation)
    try:
        lines = {line.get_label(): line for ax in figure.axes for line in ax.get_lines()}
        assert list(lines["copy share (ratio test)"].get_ydata()) == [0.0, 0.1, 0.2]
        assert "copy share threshold" in lines
    finally:
        pyplot().close(figure)
