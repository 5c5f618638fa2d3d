"""Re-apply the current collapse rule and choice to a stored collapse benchmark, in seconds.

The collapse benchmark (``experiments/collapse/benchmark.py``) trains its runs, scores every
checkpoint and classifies it with the ground truth: 20 minutes and more on a CPU. Its JSON keeps
every checkpoint's scores and the chance levels, so a change to ``evaluation/collapse.py`` can be
judged on exactly those runs without training them again: this script runs today's
``detect_collapse``, ``detect_memorisation`` and ``choose_best`` on the stored scores and prints, per
run, the stored and the replayed choice and onset with their ground-truth modes and the checkpoints
the memorisation rule calls copies, then the history targets both ways.

It is a development tool: the figures the README reports come from a full benchmark run with the
rule in place, which this does not replace (the scores themselves do not change with the rule,
so the replay gives the same picks as such a run would).

Usage::

    python -m experiments.collapse.replay [RESULT.json ...]   (default: experiments/results/collapse_benchmark*.json)
    python -m experiments.collapse.replay --against STORED.json RESULT.json   (the same benchmark run again)
    python -m experiments.collapse.replay copying_ladders-TAG.json   (degraded histories, from collapse/copying.py)
    python -m experiments.collapse.replay --rule-from COMMIT [RESULT.json ...]   (the collapse rule of COMMIT instead)

The output starts with ``# commit:`` / ``# command:`` lines (:mod:`experiments.provenance`), for
when it is kept as a result.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from evaluation.collapse import choose_best, detect_collapse
from evaluation.memorisation import chance_level, detect_memorisation
from experiments import RESULTS_DIR, provenance
from experiments.collapse.study import history_targets, judge_run, onset_cell

_SCORE_KEYS = ("fid", "kid", "kid_std", "coverage", "diversity", "duplicate_share")


class StaleResult(ValueError):
    """A benchmark JSON written before the benchmark stored every score."""


def replay_run(run: dict) -> dict:
    """The run's summary as the current rule judges it (same fields as the benchmark's)."""
    checkpoints = run["checkpoints"]
    missing = [k for k in _SCORE_KEYS if k not in checkpoints[0]]
    if missing or "noise" not in run:
        raise StaleResult(f"run {run['run']} lacks {missing or ['noise']}: the file predates stored scores; "
                          "run the benchmark again to replay it")
    rows = {c["epoch"]: c for c in checkpoints}
    truth = {c["epoch"]: c["gt"] for c in checkpoints}
    collapse = detect_collapse(checkpoints, run["noise"])
    # The copy test needs each checkpoint's copy_share and its chance level, which need the
    # features: histories stored before the ratio test (issue 26) have neither, and only the
    # distance test (memorised_share, the old rule) can be replayed on them.
    has_copy_test = "copy_share" in checkpoints[0] and (
        "copy_share_heldout" in run["noise"] or "copy_share_loo" in run["noise"])
    memorisation = detect_memorisation(checkpoints, run["noise"]) if has_copy_test else None
    choice = choose_best(checkpoints, collapse, memorisation)
    copies = {
        "memorised_epochs": [] if memorisation is None else memorisation.memorised_epochs,
        "memorisation_threshold": None if memorisation is None else memorisation.threshold,
        "max_copy_share": max((c.get("copy_share", 0.0) for c in checkpoints), default=0.0),
        "distance_test_epochs": _distance_test(checkpoints, run["noise"]),
        "max_memorised_share": max((c.get("memorised_share", 0.0) for c in checkpoints), default=0.0),
        # What the memorisation rule alone changes: today's choice without it.
        "choice_without_memorisation": choose_best(checkpoints, collapse).epoch,
    }
    return {**run, **judge_run(rows, truth, choice.epoch, collapse), "choice_reason": choice.reason, **copies}


def _distance_test(checkpoints: list[dict], noise: dict) -> list[int] | None:
    """The epochs the distance test (the rule before issue 26, now reported beside the ratio test)
    flags on the stored memorised shares; None when they were not stored."""
    if "memorised_share" not in checkpoints[0]:
        return None
    chance, error, _ = chance_level(noise)
    threshold = chance + max(3.0 * error, 0.02)  # detect_memorisation's sigmas and floor
    return [c["epoch"] for c in checkpoints if c["memorised_share"] > threshold]


def replay(result: dict) -> tuple[list[dict], dict]:
    """Replayed run summaries and the history targets they meet."""
    runs = [replay_run(run) for run in result["histories"]["runs"]]
    return runs, history_targets(runs)


def report(name: str, result: dict) -> str:
    """A markdown comparison of the stored and the replayed judgement of one benchmark result."""
    runs, targets = replay(result)
    lines = [f"## {name} ({result['scale']}, encoder {result['settings']['encoder']['epochs']} epochs)", "",
             "GT modes at the pick (epoch); kept = share of the GT best's modes.", "",
             "| run | features | stored choice | replayed choice | kept | lowest FID | GT best "
             "| stored onset | replayed onset | GT onset | copying (ratio test: max copy share / threshold) "
             "| distance test (old rule) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for old, new in zip(result["histories"]["runs"], runs):
        def pick(summary: dict, key: str) -> str:
            return f"{summary['picks'][key]['modes']} (ep {summary['picks'][key]['epoch']})"

        kept = new["picks"]["facegan"]["modes"] / max(new["picks"]["gt_best"]["modes"], 1)
        lines.append(f"| {new['run']} | {new.get('features', '')} | {pick(old, 'facegan')} | {pick(new, 'facegan')} "
                     f"| {kept:.0%} | {pick(new, 'lowest_fid')} | {pick(new, 'gt_best')} | {old['detected_onset']} "
                     f"| {onset_cell(new)} | {new['gt_onset']} | {_copies_cell(new)} | {_distance_cell(new)} |")
    moved = sum(new["picks"]["facegan"]["epoch"] != new["choice_without_memorisation"] for new in runs)
    copied = sum(len(new["memorised_epochs"]) for new in runs)
    judged = [r for r in runs if r["memorisation_threshold"] is not None]
    distance = sum(len(r["distance_test_epochs"] or []) for r in runs)
    total = sum(len(r["checkpoints"]) for r in runs)
    lines += ["", f"The memorisation rule moves the choice on {moved} of {len(runs)} runs; checkpoints called "
                  f"copying: {copied} of {sum(len(r['checkpoints']) for r in judged)} with a stored copy share "
                  f"({len(judged)} of {len(runs)} runs); the distance test (old rule) would flag {distance} of "
                  f"{total}."]
    lines += ["", "| target | stored | replayed |", "|---|---|---|"]
    stored = result["targets"]
    for key, value in targets.items():
        lines.append(f"| {key} | {_fmt(stored.get(key))} | {_fmt(value)} |")
    return "\n".join(lines) + "\n"


def _copies_cell(run: dict) -> str:
    if run["memorisation_threshold"] is None:
        return "n/a (no copy share stored)"
    listed = ", ".join(map(str, run["memorised_epochs"])) or "none"
    return f"{listed} ({run['max_copy_share']:.3f} / {run['memorisation_threshold']:.3f})"


def _distance_cell(run: dict) -> str:
    if run["distance_test_epochs"] is None:
        return "n/a (no memorised share stored)"
    return ", ".join(map(str, run["distance_test_epochs"])) or "none"


def against(old_path: Path, new_path: Path) -> str:
    """A benchmark run again (``new_path``) against a stored one (``old_path``): per run and feature
    space, the stored judgement against today's rules on the new scores, and the ground truth (same seeds: the same runs when
    the ground-truth modes agree)."""
    old, new = (json.loads(path.read_text()) for path in (old_path, new_path))
    # "then": as stored (the rule of its day); the distance test's flags on its stored shares.
    old_runs = {(r["run"], r.get("features")): {**r, "distance_test_epochs": again["distance_test_epochs"]}
                for r, again in zip(old["histories"]["runs"], replay(old)[0])}
    lines = [f"## {new_path.name} against {old_path.name}", "",
             "| run | features | same GT modes | choice (GT modes) then / now | onset then / now | GT onset "
             "then / now | copying now (ratio test) | distance test then / now |", "|---|---|---|---|---|---|---|---|"]
    for run in replay(new)[0]:
        before = old_runs.get((run["run"], run.get("features")))
        if before is None:
            continue
        same = [c["gt"]["modes"] for c in before["checkpoints"]] == [c["gt"]["modes"] for c in run["checkpoints"]]

        def choice(r: dict) -> str:
            return f"{r['picks']['facegan']['epoch']} ({r['picks']['facegan']['modes']})"

        lines.append(f"| {run['run']} | {run.get('features', '')} | {'yes' if same else 'no'} | {choice(before)} / "
                     f"{choice(run)} | {before['detected_onset']} / {run['detected_onset']} | {before['gt_onset']} / "
                     f"{run['gt_onset']} | {_copies_cell(run)} | {_distance_cell(before)} / {_distance_cell(run)} |")
    return "\n".join(lines) + "\n"


def degraded_report(name: str, result: dict) -> str:
    """The degraded histories and trained stable runs of a ``collapse/copying.py`` result (runs that
    neither copy nor collapse) as the stored and today's collapse rule judge them: any onset is a
    false alarm."""
    lines = [f"## {name}: runs that neither copy nor collapse (every onset is a false alarm)"]
    if result["histories"]:
        lines += ["", "Degraded histories. The tail: the sets of the last 3 checkpoints, and the last checkpoint's FID "
                      "over the history's lowest (a history that ends on degraded faces can end much worse than its "
                      "best).", "",
                  "| history | checkpoints | stored onset | replayed onset | replayed passing collapses | tail | "
                  "FID last / lowest |", "|---|---|---|---|---|---|---|"]
    onsets = 0
    for key, history in result["histories"].items():
        if "noise" not in history or "scores" not in history["points"][0]:
            raise StaleResult(f"history {key} lacks its scores: the file predates stored scores; run "
                              "python -m experiments.collapse.copying --parts histories again to replay it")
        rows = [{"epoch": i + 1, **point["scores"]} for i, point in enumerate(history["points"])]
        collapse = detect_collapse(rows, history["noise"])
        onsets += collapse.onset_epoch is not None
        tail = ", ".join(point["set"] for point in history["points"][-3:])
        worse = rows[-1]["fid"] / min(row["fid"] for row in rows)
        lines.append(f"| {key} | {len(rows)} | {history['collapse_onset']} | {collapse.onset_epoch} | "
                     f"{', '.join(map(str, collapse.passing_epochs)) or 'none'} | {tail} | {worse:.2f} |")
    if result["histories"]:
        lines += ["", f"Collapse onsets, replayed: {onsets} of {len(result['histories'])} histories."]
    if result.get("trained"):  # the long trained stable runs, stored as the benchmark stores its runs
        lines += ["", "| trained stable run | features | checkpoints | stored onset | replayed onset | GT onset | "
                      "replayed choice (GT modes) | GT best |", "|---|---|---|---|---|---|---|---|"]
        for run in result["trained"]:
            again = replay_run(run)
            lines.append(f"| {run['run']} | {run['features']} | {len(run['checkpoints'])} | {run['detected_onset']} "
                         f"| {again['detected_onset']} | {again['gt_onset']} | {again['picks']['facegan']['epoch']} "
                         f"({again['picks']['facegan']['modes']}) | {again['picks']['gt_best']['modes']} |")
    return "\n".join(lines) + "\n"


def rule_from(commit: str):
    """``detect_collapse`` as ``evaluation/collapse.py`` held it at ``commit`` (an earlier rule on
    today's stored scores: what a change moved)."""
    import subprocess
    import types

    try:
        source = subprocess.run(["git", "show", f"{commit}:evaluation/collapse.py"], cwd=provenance.REPO_ROOT,
                                capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise SystemExit(f"--rule-from {commit}: cannot read evaluation/collapse.py at that commit ({error})")
    module = types.ModuleType(f"collapse_at_{commit}")
    sys.modules[module.__name__] = module  # dataclasses look their module up there
    exec(compile(source, f"{commit}:evaluation/collapse.py", "exec"), module.__dict__)
    return module.detect_collapse


def _say_rule(commit: str | None) -> None:
    if commit:  # the provenance's "# rule:" line gives today's parameters; the function judging is this one
        print(f"# collapse rule judging: evaluation/collapse.py at {commit}")


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="*", type=Path,
                        help="benchmark JSON files [default: experiments/results/collapse_benchmark*.json]")
    parser.add_argument("--against", type=Path, metavar="STORED.json",
                        help="instead: compare the one RESULT.json (the same benchmark run again) with STORED.json, "
                             "both judged by today's rules")
    parser.add_argument("--rule-from", metavar="COMMIT",
                        help="judge with the collapse rule (evaluation/collapse.py's detect_collapse) of this git "
                             "commit instead of today's")
    args = parser.parse_args(argv)
    global detect_collapse
    today = detect_collapse
    if args.rule_from:
        detect_collapse = rule_from(args.rule_from)
    try:
        return _judge_files(args, argv)
    finally:
        detect_collapse = today  # a later call in the same process judges by today's rule again


def _judge_files(args: argparse.Namespace, argv: list[str] | None) -> int:
    if args.against is not None:
        if len(args.results) != 1:
            raise SystemExit("--against takes exactly one RESULT.json")
        provenance.announce(__spec__.name, argv)
        _say_rule(args.rule_from)
        print(against(args.against, args.results[0]))
        return 0
    paths = args.results or sorted(RESULTS_DIR.glob("collapse_benchmark*.json"))
    if not paths:
        raise SystemExit(f"no benchmark results under {RESULTS_DIR}; run python -m experiments.collapse.benchmark first")
    provenance.announce(__spec__.name, argv)
    _say_rule(args.rule_from)
    status = 0
    for path in paths:
        try:
            result = json.loads(path.read_text())
            print(degraded_report(path.name, result) if "degradations" in result else report(path.name, result))
        except (OSError, json.JSONDecodeError, KeyError) as error:
            print(f"{path}: not a collapse benchmark result ({error})", file=sys.stderr)
            status = 1
        except StaleResult as error:
            print(f"{path}: {error}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
