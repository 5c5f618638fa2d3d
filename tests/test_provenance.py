"""experiments/provenance.py: the commit, rule and command every result records."""

import json
import shutil
import subprocess

import pytest
import torch

from evaluation import collapse, memorisation
from experiments import provenance

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(root, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=root, check=True,
                   capture_output=True)


@pytest.fixture
def repo(tmp_path):
    """A real git repository with one commit: code, and a results folder."""
    root = tmp_path / "repo"
    (root / "experiments" / "results").mkdir(parents=True)
    (root / "code.py").write_text("x = 1\n")
    (root / "experiments" / "results" / "old.txt").write_text("a result\n")
    (root / ".gitignore").write_text("*.db\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "first")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                          check=True).stdout.strip()
    return root, head


@needs_git
def test_a_clean_checkout_records_its_commit(repo):
    root, head = repo
    assert len(head) == 40
    assert provenance.commit(root) == head


@needs_git
def test_results_and_ignored_files_do_not_make_it_dirty(repo):
    root, head = repo
    (root / "experiments" / "results" / "new.json").write_text("{}")  # a result written by a run
    (root / "experiments" / "results" / "old.txt").write_text("rewritten\n")
    (root / "mlflow.db").write_text("")  # ignored
    assert provenance.commit(root) == head


@needs_git
@pytest.mark.parametrize("change", ["modified", "untracked", "staged"])
def test_code_changes_make_it_dirty(repo, change):
    root, head = repo
    if change == "modified":
        (root / "code.py").write_text("x = 2\n")
    elif change == "untracked":
        (root / "experiments" / "new_script.py").write_text("")
    else:
        (root / "code.py").write_text("x = 3\n")
        git(root, "add", "code.py")
    assert provenance.commit(root) == head + "+dirty"


def test_outside_git_the_commit_is_unknown(tmp_path, monkeypatch):
    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # git looks for no repository above it
    assert provenance.commit(plain) == "unknown"
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert provenance.commit(plain) == "unknown"


def test_rule_parameters_are_the_detectors_own_defaults():
    rule = provenance.rule_parameters()
    assert rule["evaluation.collapse.detect_collapse"] == collapse.detect_collapse.__kwdefaults__
    assert rule["evaluation.memorisation.detect_memorisation"] == memorisation.detect_memorisation.__kwdefaults__
    assert rule["evaluation.collapse.WOBBLE_WINDOW"] == collapse.WOBBLE_WINDOW
    assert {"patience", "sigmas", "coverage_floor", "diversity_floor", "duplicate_floor", "min_coverage"} <= set(
        rule["evaluation.collapse.detect_collapse"])
    assert not any(name.rsplit(".", 1)[-1].startswith("_") for name in rule)  # private names are not settings


def test_rule_parameters_follow_a_changed_rule(monkeypatch):
    monkeypatch.setattr(collapse, "WOBBLE_WINDOW", 9)
    monkeypatch.setitem(collapse.detect_collapse.__kwdefaults__, "patience", 5)
    rule = provenance.rule_parameters()
    assert rule["evaluation.collapse.WOBBLE_WINDOW"] == 9
    assert rule["evaluation.collapse.detect_collapse"]["patience"] == 5


def test_collect_and_its_three_forms(repo):
    root, head = repo
    record = provenance.collect("experiments.collapse.benchmark", ["--quick", "--out", "a dir"], root=root)
    assert record["commit"] == (head if shutil.which("git") else "unknown")
    assert record["command"] == "python -m experiments.collapse.benchmark --quick --out 'a dir'"
    assert record["rule"] == provenance.rule_parameters()
    assert json.loads(json.dumps(record)) == record  # JSON results carry it as it is

    lines = provenance.header(record).splitlines()
    assert lines[0] == f"# commit: {record['commit']}"
    assert lines[1] == "# command: python -m experiments.collapse.benchmark --quick --out 'a dir'"
    assert all(line.startswith("# ") for line in lines)
    assert lines[2].startswith("# rule: evaluation.collapse.detect_collapse(")
    assert f"evaluation.collapse.WOBBLE_WINDOW={collapse.WOBBLE_WINDOW}" in lines[2]

    # The machine: a trained figure depends on the CPU's kernels and the thread count too.
    assert record["machine"]["torch"] == torch.__version__
    assert record["machine"]["torch_threads"] == torch.get_num_threads()
    assert record["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert lines[4] == f"# machine: {provenance.machine_text(record)}"
    assert f"{torch.get_num_threads()} threads" in lines[4]

    section = provenance.markdown_lines(record)
    assert "## Provenance" in section
    assert f"- commit: `{record['commit']}`" in section
    assert "- command: `python -m experiments.collapse.benchmark --quick --out 'a dir'`" in section


def test_the_command_defaults_to_the_process_arguments(monkeypatch):
    monkeypatch.setattr("sys.argv", ["/somewhere/benchmark.py", "--tiny"])
    assert provenance.collect("experiments.collapse.benchmark")["command"] == (
        "python -m experiments.collapse.benchmark --tiny")
