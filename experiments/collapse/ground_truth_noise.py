"""How finely does the collapse benchmark's ground truth resolve a checkpoint's modes?

The collapse benchmark (``experiments/collapse/benchmark.py``) counts each checkpoint's modes
once, on facegan's fixed 10,000 latents: a mode counts when at least one of its samples is
classified confidently. With about 15% of the samples confident, a rare mode has one or two
confident samples, and another draw of 10,000 latents may miss it. The benchmark's targets
compare such counts (a choice must keep >= 95% of the best checkpoint's modes), so how much a
count moves between latent draws says which misses the ground truth can tell apart from luck.

This script leaves the benchmark's runs and ground truth as they are. It reloads the stored
checkpoints of a benchmark run from its MLflow store, classifies each on ``--repeats`` further
draws of the same number of latents (seeds other than facegan's), and reports per checkpoint the
modes' mean and standard deviation beside the stored count, then per run and feature space the
share of the best checkpoint's modes that facegan's choice and the lowest-FID checkpoint keep,
on the stored counts and on the resampled means.

``--features LABEL=SPEC`` (e.g. ``encoder=torchscript:enc.pt``, ``random=random``) also scores the
first ``num_samples`` images of every draw in that feature space, against the run's own real
images as ``facegan evaluate`` does, for the runs the benchmark scored under LABEL: how firmly
facegan's FID orders the same checkpoints, and which checkpoint has the lowest mean FID.

Usage::

    python -m experiments.collapse.ground_truth_noise [RESULT.json] --tracking-uri URI [--repeats 5] [--from-epoch 18]
        [--features LABEL=SPEC ...]

RESULT.json defaults to ``experiments/results/collapse_benchmark.json``; URI is the store the
benchmark trained its runs into (its ``--tracking-uri``; checkpoints are read, never written).
Writes ``<RESULT>-gt_noise.json`` and ``.md`` under ``--out`` (default ``experiments/results/``) and
prints the tables.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from evaluation.engine import LATENT_SEED, Scorer, generator_batches
from evaluation.features import get_extractor
from evaluation.sources import ImagesCheckpoint
from facegan.errors import FaceganError
from facegan.scoring import real_images, run_training_data

from experiments import RESULTS_DIR, provenance
from experiments.collapse import ground_truth as gt

PICKS = ("facegan", "lowest_fid")


def latent_draw(generator: torch.nn.Module, num_samples: int, seed: int) -> torch.Tensor:
    """uint8 samples from ``num_samples`` latents drawn with ``seed``, as ``facegan evaluate`` draws its own."""
    return torch.cat(list(generator_batches(generator, num_samples, torch.device("cpu"), seed=seed)))


def run_scorers(payload: dict, spaces: dict[str, object], num_scored: int) -> dict[str, Scorer]:
    """The evaluation engine's scorer in each space against the run's own training images, as
    ``facegan evaluate`` compares."""
    if not spaces:
        return {}
    real = real_images(run_training_data(payload, None, progress=False))
    return {label: Scorer(extractor, real, num_scored) for label, extractor in spaces.items()}


def score_draw(generator: torch.nn.Module, epoch: int, seed: int, num_samples: int, classifier,
               scorers: dict[str, Scorer]) -> tuple[int, dict[str, float]]:
    """One draw of latents: its ground-truth modes, and facegan's FID of its first ``num_scored``
    images (each scorer's sample count) in each space."""
    images = latent_draw(generator, num_samples, seed)
    fids = {label: scorer.score(ImagesCheckpoint(epoch, images))[0]["fid"] for label, scorer in scorers.items()}
    return classifier.count_modes(images).modes, fids


def resample_run(run_id: str, tracking_uri: str, classifier, num_samples: int, repeats: int,
                 from_epoch: int, spaces: dict[str, object], num_scored: int) -> tuple[dict, dict]:
    """For the run's checkpoints from ``from_epoch`` on: ``{epoch: [modes on each further draw]}``
    and ``{label: {epoch: [FID on each draw]}}`` for ``spaces`` (``{label: extractor}``)."""
    from facegan.tracking import MlflowRunSource

    counts, fids, scorers = {}, {label: {} for label in spaces}, None
    with MlflowRunSource.open(tracking_uri, run_id) as source:
        for checkpoint in source.checkpoints():
            if checkpoint.epoch < from_epoch:
                continue
            generator, payload = checkpoint.load()
            scorers = scorers if scorers is not None else run_scorers(payload, spaces, num_scored)
            draws = [score_draw(generator, checkpoint.epoch, LATENT_SEED + r, num_samples, classifier, scorers)
                     for r in range(1, repeats + 1)]
            counts[checkpoint.epoch] = [modes for modes, _ in draws]
            for label in spaces:
                fids[label][checkpoint.epoch] = [draw_fids[label] for _, draw_fids in draws]
    return counts, fids


def summarise(result: dict, counts: dict[str, dict[int, list[int]]], fids: dict | None = None) -> list[dict]:
    """Per run and feature space: stored and resampled modes of the picks, and the shares kept.

    ``fids`` (``{run_id: {label: {epoch: [FID per draw]}}}``) adds, for the runs scored under a
    label, the checkpoint with the lowest mean FID over the draws (onsets aside: every run's
    choice so far is its lowest-FID checkpoint before the onset, and no onset moves with a draw).
    """
    rows = []
    for run in result["histories"]["runs"]:
        resampled = counts[run["run_id"]]
        stored = {c["epoch"]: c["gt"]["modes"] for c in run["checkpoints"] if c["epoch"] in resampled}
        means = {e: float(np.mean(v)) for e, v in resampled.items()}
        best_stored = max(stored, key=lambda e: (stored[e], -e))
        best_mean = max(means, key=lambda e: (means[e], -e))
        row = {"run": run["run"], "features": run["features"],
               "gt_best": {"stored": [best_stored, stored[best_stored]],
                           "resampled": [best_mean, round(means[best_mean], 1)]}}
        for pick in PICKS:
            epoch = run["picks"][pick]["epoch"]
            if epoch not in resampled:  # chosen before --from-epoch: outside what was resampled
                row[pick] = {"epoch": epoch, "note": "before --from-epoch"}
                continue
            row[pick] = {
                "epoch": epoch,
                "stored_modes": stored[epoch],
                "resampled_mean": round(means[epoch], 1),
                "resampled_std": round(float(np.std(resampled[epoch], ddof=1)), 1),
                "kept_stored": round(stored[epoch] / max(stored[best_stored], 1), 3),  # as the benchmark
                "kept_resampled": round(means[epoch] / max(means[best_mean], 1), 3),
            }
        run_fids = ((fids or {}).get(run["run_id"]) or {}).get(run["features"])
        if run_fids:
            onset = run["detected_onset"]
            before = [e for e in run_fids if onset is None or e < onset]
            fid_means = {e: float(np.mean(run_fids[e])) for e in before}
            epoch = min(fid_means, key=fid_means.get)
            row["lowest_mean_fid"] = {"epoch": epoch, "fid_mean": round(fid_means[epoch], 4),
                                      "resampled_mean": round(means[epoch], 1),
                                      "kept_resampled": round(means[epoch] / max(means[best_mean], 1), 3)}
        rows.append(row)
    return rows


def markdown(result_name: str, settings: dict, counts: dict, rows: list[dict], result: dict,
             fids: dict | None = None, record: dict | None = None) -> str:
    lines = [f"# Ground-truth resolution of `{result_name}`", "",
             (f"{settings['repeats']} further draws of {settings['num_samples']} latents per checkpoint "
              f"(from epoch {settings['from_epoch']}); the stored count is the benchmark's, on facegan's own latents. "
              "A pick keeps a share of the best checkpoint's modes: on the stored counts, as the benchmark judges, "
              "and on the resampled means."), "",
             "## Modes per checkpoint: stored, resampled mean ± sd", ""]
    seen = set()
    for run in result["histories"]["runs"]:
        if run["run_id"] in seen:
            continue
        seen.add(run["run_id"])
        stored = {c["epoch"]: c["gt"]["modes"] for c in run["checkpoints"]}
        cells = [f"{e}: {stored[e]} / {np.mean(v):.1f} ± {np.std(v, ddof=1):.1f}"
                 for e, v in sorted(counts[run["run_id"]].items())]
        lines.append(f"- **{run['run']}**: " + "; ".join(cells))
    lines += ["", "## Share of the best checkpoint's modes kept", "",
              ("| run | space | GT best: stored / resampled | facegan: epoch, stored, resampled | kept stored / resampled "
               "| lowest FID: epoch, stored, resampled | kept stored / resampled |"),
              "|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [row["run"], row["features"],
                 (f"ep {row['gt_best']['stored'][0]} ({row['gt_best']['stored'][1]}) / "
                  f"ep {row['gt_best']['resampled'][0]} ({row['gt_best']['resampled'][1]})")]
        for pick in PICKS:
            p = row[pick]
            if "note" in p:
                cells += [f"ep {p['epoch']} ({p['note']})", ""]
                continue
            cells += [f"ep {p['epoch']}, {p['stored_modes']}, {p['resampled_mean']} ± {p['resampled_std']}",
                      f"{100 * p['kept_stored']:.0f} / {100 * p['kept_resampled']:.0f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    if fids:
        lines += ["", f"## facegan's FID on the same draws (first {settings['num_scored']} images): mean ± sd", ""]
        seen = set()
        for run in result["histories"]["runs"]:
            per_label = fids.get(run["run_id"], {})
            if run["run_id"] in seen or not per_label:
                continue
            seen.add(run["run_id"])
            for label, by_epoch in per_label.items():
                cells = [f"{e}: {np.mean(v):.4g} ± {np.std(v, ddof=1):.2g}" for e, v in sorted(by_epoch.items())]
                lines.append(f"- **{run['run']}**, {label}: " + "; ".join(cells))
        lines += ["", "| run | space | lowest mean FID before the onset: epoch, GT modes resampled | kept resampled |",
                  "|---|---|---|---|"]
        for row in rows:
            if "lowest_mean_fid" in row:
                p = row["lowest_mean_fid"]
                lines.append(f"| {row['run']} | {row['features']} | ep {p['epoch']}, {p['resampled_mean']} "
                             f"| {100 * p['kept_resampled']:.0f}% |")
    if record is not None:
        lines += provenance.markdown_lines(record)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("result", nargs="?", type=Path, default=RESULTS_DIR / "collapse_benchmark.json",
                        help="a collapse benchmark's JSON (default experiments/results/collapse_benchmark.json)")
    parser.add_argument("--tracking-uri", required=True, help="the store the benchmark trained its runs into")
    parser.add_argument("--repeats", type=int, default=5, help="further latent draws per checkpoint (default 5)")
    parser.add_argument("--from-epoch", type=int, default=18,
                        help="resample checkpoints from this epoch on (default 18: the full benchmark's choices and "
                             "best checkpoints all lie there; --quick's need 8)")
    parser.add_argument("--features", action="append", default=[], metavar="LABEL=SPEC",
                        help="also score every draw with facegan's FID in this feature space, for the runs the "
                             "benchmark scored under LABEL (e.g. encoder=torchscript:enc.pt, random=random; "
                             "repeatable)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR,
                        help="folder for <RESULT>-gt_noise.json and .md (default experiments/results)")
    args = parser.parse_args(argv)
    if args.repeats < 2:
        parser.error(f"--repeats must be at least 2 (a spread needs two draws), got {args.repeats}")
    try:
        result = json.loads(args.result.read_text())
        runs = result["histories"]["runs"]
        num_samples = int(result["settings"]["gt_samples"])
        gt_best = {run["run"]: int(run["picks"]["gt_best"]["epoch"]) for run in runs}
    except FileNotFoundError:
        parser.error(f"no such result file: {args.result}")
    except (json.JSONDecodeError, KeyError, TypeError):
        parser.error(f"{args.result} is not a collapse benchmark result (collapse_benchmark*.json)")

    labels = {run.get("features") for run in runs}
    specs = {}
    for item in args.features:
        label, _, spec = item.partition("=")
        if not spec:
            parser.error(f"--features takes LABEL=SPEC (e.g. encoder=torchscript:enc.pt), got {item!r}")
        if label not in labels:
            parser.error(f"no run of {args.result.name} was scored under {label!r}; it has "
                         + ", ".join(sorted(str(x) for x in labels)))
        specs[label] = spec
    for name, epoch in gt_best.items():  # the shares kept are relative to the best: resample it too
        if epoch < args.from_epoch:
            parser.error(f"--from-epoch {args.from_epoch} leaves out the ground-truth best of {name} "
                         f"(epoch {epoch}); give a lower one")
    if args.tracking_uri.startswith("sqlite:///") and not Path(args.tracking_uri[len("sqlite:///"):]).is_file():
        parser.error(f"no store at {args.tracking_uri} (give the benchmark's own --tracking-uri)")
    record = provenance.announce(__spec__.name, argv)
    started = time.perf_counter()
    classifier = gt.FaceClassifier.load_or_train()  # every benchmark scale's classifier (gt.FACE_SETTINGS)
    counts, fids = {}, {}
    try:
        spaces = {label: get_extractor(spec) for label, spec in specs.items()}
        for run in runs:
            if run["run_id"] in counts:
                continue
            counts[run["run_id"]], fids[run["run_id"]] = resample_run(
                run["run_id"], args.tracking_uri, classifier, num_samples, args.repeats, args.from_epoch,
                spaces, int(result.get("num_samples", num_samples)))
            print(f"[{time.perf_counter() - started:5.0f} s] {run['run']}: "
                  + ", ".join(f"{e}: {np.mean(v):.1f}±{np.std(v, ddof=1):.1f}" for e, v in counts[run['run_id']].items()),
                  flush=True)
    except FaceganError as error:
        parser.exit(2, f"error: {error}\n")
    settings = {"result": args.result.name, "repeats": args.repeats, "num_samples": num_samples,
                "from_epoch": args.from_epoch, "seeds": [LATENT_SEED + r for r in range(1, args.repeats + 1)],
                "features": specs, "num_scored": int(result.get("num_samples", num_samples))}
    fids = {k: v for k, v in fids.items() if any(v.values())} if specs else {}
    rows = summarise(result, counts, fids)
    report = {"provenance": record, "settings": settings,
              "counts": {k: {str(e): v for e, v in c.items()} for k, c in counts.items()},
              "fids": {k: {label: {str(e): v for e, v in by_epoch.items()} for label, by_epoch in per.items()}
                       for k, per in fids.items()},
              "runs": rows, "seconds": round(time.perf_counter() - started, 1)}
    stem = args.result.stem + "-gt_noise"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    text = markdown(args.result.name, settings, counts, rows, result, fids, record)
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
