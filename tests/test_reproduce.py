"""experiments/collapse/reproduce.py: the same seed trains the same weights in one process, and
--compare says where two fingerprint files part."""

import json

from experiments.collapse import reproduce


def test_one_seed_twice_is_identical_and_compare_finds_where_runs_part(tmp_path, capsys):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert reproduce.main(["--epochs", "1", "--out", str(first)]) == 0
    assert reproduce.main(["--epochs", "1", "--out", str(second)]) == 0
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    assert [row["g"] for row in a["epochs"]] == [row["g"] for row in b["epochs"]]
    capsys.readouterr()
    assert reproduce.main(["--compare", str(first), str(second)]) == 0
    assert "identical over 1 epochs" in capsys.readouterr().out
    # Weights that part after the first epoch: compare names the epoch they differ from.
    b["epochs"][1]["g"] = "0" * 12
    other = tmp_path / "c.json"
    other.write_text(json.dumps(b))
    assert reproduce.main(["--compare", str(first), str(other)]) == 1
    assert "differ from epoch 1" in capsys.readouterr().out
