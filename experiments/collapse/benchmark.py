"""The collapse benchmark at 32 x 32 on the CPU: facegan's collapse scoring against ground truth (issue 4).

The study (:mod:`experiments.collapse.study`: ladders, training histories, their targets) on both
datasets, the synthetic faces and stacked digits, at 32 x 32. The runs are trained into a real
MLflow store and scored with ``score_run`` (what ``facegan evaluate --run`` does) in each
feature space: ``random`` and ``encoder``, a SimCLR encoder trained on the real images
(``evaluation/encoder.py``, ``facegan encoder``). The same at 80 x 80 on a GPU:
``experiments/collapse/benchmark_gpu.py``, which runs on a bare GPU machine (no MLflow there).

Two other studies on the same settings: ``--copying``, only the copying ladders (the memorisation
rule against sets with a known share of training images copied), and ``--online``, every run
trained with in-training evaluation and stopping on collapse (``facegan train --evaluate
FEATURES --stop-on-collapse``), then compared with ``facegan evaluate --force`` on the same
checkpoints.

Usage (from the repository root)::

    python -m experiments.collapse.benchmark [--quick | --tiny] [--encoder-epochs N] [--copying | --online]
        [--tracking-uri URI] [--out DIR]

Writes ``collapse_benchmark[-quick|-tiny][-encoderN][-copying|-online].json`` and ``.md`` under
``experiments/results/``, logs the study as one MLflow run (experiment
``facegan-collapse-benchmark``; the training runs sit in the same experiment), prints a summary
and, as its last line, one JSON object with every figure. The JSON keeps every checkpoint's
scores and the chance levels, so ``python -m experiments.collapse.replay`` can judge a changed
collapse rule on the same runs in seconds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from evaluation.encoder import EncoderSettings, encoder_format, save_encoder, train_encoder
from evaluation.engine import generator_batches
from evaluation.features import get_extractor
from facegan.config import ScoringOptions
from facegan.scoring import score_run
from facegan.synthetic import synthetic_faces

from experiments import RESULTS_DIR, provenance
from experiments.collapse import ground_truth as gt
from experiments.collapse.study import (
    EXPERIMENT, STABLE, Domain, RunSpec, Scale, copying_markdown, copying_targets, finish, gt_best_epoch, gt_onset,
    headline, index_gap, json_default, log_study, markdown, references_of, run_study, score_copying, train_into,
    write_result,
)

# Shared by every run: small DCGANs on 32 x 32 synthetic faces, a checkpoint every 2 epochs.
BASE_OVERRIDES = {
    "train.loss": "dcgan",
    "model.image_size": 32,
    "model.g_width": 32,
    "model.d_width": 32,
    "train.batch_size": 64,
    "train.schedule": "fixed",
    "train.device": "cpu",
    "tracking.sample_every": 1000,
    "tracking.resume_every": 1000,
    "tracking.num_samples": 64,
}


SCALES = {
    "full": Scale(
        name="full", num_real=2000, num_samples=1000, gt_samples=10000,
        face_modes_ladder=(96, 72, 48, 32, 24, 16, 12, 8, 4, 2, 1),
        digit_modes_ladder=(1000, 700, 500, 300, 200, 100, 50, 20, 10, 5, 2, 1),
        repeats_ladder=(1000, 500, 250, 120, 60, 30, 15, 8, 4, 2, 1),
        runs=(RunSpec("collapsing", STABLE, True, (0, 1, 2), collapse_after=28),
              RunSpec("stable", STABLE, False, (0, 1))),
        epochs=40, checkpoint_every=2, num_train_images=2000,
    ),
    "quick": Scale(
        name="quick", num_real=1000, num_samples=500, gt_samples=5000,
        face_modes_ladder=(96, 48, 24, 12, 6, 3, 1),
        digit_modes_ladder=(1000, 400, 150, 50, 15, 5, 1),
        repeats_ladder=(500, 150, 50, 15, 5, 1),
        runs=(RunSpec("collapsing", STABLE, True, (0, 1), collapse_after=16),
              RunSpec("stable", STABLE, False, (0,))),
        epochs=24, checkpoint_every=2, num_train_images=2000,
        # 30 epochs, not the default 60: two encoders at 60 would take --quick past 10 minutes.
        encoder=EncoderSettings(epochs=30),
    ),
    # For tests: seconds, not a measurement.
    "tiny": Scale(
        name="tiny", num_real=120, num_samples=60, gt_samples=60, encoder=EncoderSettings(epochs=1, batch_size=32),
        face_modes_ladder=(96, 12, 1), digit_modes_ladder=(1000, 30, 1), repeats_ladder=(60, 6, 1),
        runs=(RunSpec("collapsing", {**STABLE, "model.g_width": 8, "model.d_width": 8}, True, (0,),
                      collapse_after=1),),
        epochs=3, checkpoint_every=1, num_train_images=64,
    ),
}



def make_domains(scale: Scale) -> tuple[list[Domain], dict]:
    """Both domains and the classifiers' accuracies and training times."""
    faces = gt.FaceClassifier.load_or_train(settings=scale.face_classifier)
    digits = gt.DigitClassifier.train()
    domains = [
        Domain("faces", synthetic_faces(scale.num_real, gt.IMAGE_SIZE, seed=0).images, faces,
               gt.num_face_modes(), scale.face_modes_ladder),
        Domain("digits", torch.from_numpy(gt.stacked_digits(scale.num_real, seed=0)[0]), digits,
               gt.NUM_DIGIT_MODES, scale.digit_modes_ladder),
    ]
    info = {
        domain.name: {
            "held_out_accuracy": domain.classifier.accuracy,
            "train_seconds": round(domain.classifier.seconds, 1),
            "real_set": domain.classifier.count_modes(domain.real).to_dict(),
        }
        for domain in domains
    }
    return domains, info


def feature_specs(scale: Scale, name: str, real: torch.Tensor, folder: Path) -> tuple[dict[str, str], dict]:
    """``{label: --features spec}`` for one dataset; trains its encoder when asked for one."""
    specs, info = {}, {}
    for space in scale.features:
        if space != "encoder":
            specs[space] = space
            continue
        started = time.perf_counter()
        encoder = train_encoder(real, scale.encoder, progress=False)
        # A torch.export program, as `facegan encoder` writes (TorchScript is deprecated by PyTorch).
        path = save_encoder(encoder, folder / f"encoder-{name}.pt2")
        specs[space] = f"{encoder_format(path)}:{path}"
        info = {"train_images": int(real.shape[0]), "seconds": round(time.perf_counter() - started, 1)}
    return specs, info


# --------------------------------------------------------------------------------------------
# The runs: in an MLflow store, scored with score_run
# --------------------------------------------------------------------------------------------


def train_run(spec: RunSpec, seed: int, scale: Scale, tracking_uri: str) -> str:
    """Train one run into the MLflow store; returns its run id."""
    from facegan.tracking import MlflowRunTracker

    tracker = MlflowRunTracker.start(tracking_uri, EXPERIMENT, f"{scale.name}-{spec.name}-seed{seed}")
    train_into(tracker, spec, seed, scale, BASE_OVERRIDES)
    return tracker.run_id


def checkpoint_truth(run_id: str, tracking_uri: str, classifier, num_samples: int, keep_epoch=None):
    """Ground truth of every checkpoint on facegan's own fixed latents; optionally keep one generator."""
    from facegan.tracking import MlflowRunSource

    truth, kept = {}, None
    with MlflowRunSource.open(tracking_uri, run_id) as source:
        for checkpoint in source.checkpoints():
            generator, _ = checkpoint.load()
            images = torch.cat(list(generator_batches(generator, num_samples, torch.device("cpu"))))
            truth[checkpoint.epoch] = classifier.count_modes(images).to_dict()
            if keep_epoch is not None and checkpoint.epoch == keep_epoch(truth):
                kept = generator
    return truth, kept


class StoreHistories:
    """The study's runs as a user's: trained into the MLflow store at ``tracking_uri`` and scored with
    ``score_run`` (``facegan evaluate --run``) in each space (``{label: --features spec}``)."""

    def __init__(self, scale: Scale, tracking_uri: str, classifier, spaces: dict[str, str]):
        self.scale, self.tracking_uri, self.classifier, self.spaces = scale, tracking_uri, classifier, spaces

    def train(self, spec: RunSpec, seed: int) -> str:
        return train_run(spec, seed, self.scale, self.tracking_uri)

    def ground_truth(self, run_id: str, *, keep_best: bool):
        return checkpoint_truth(run_id, self.tracking_uri, self.classifier, self.scale.gt_samples,
                                gt_best_epoch if keep_best else None)

    def evaluate(self, run_id: str, space: str):
        options = ScoringOptions(self.spaces[space], num_samples=self.scale.num_samples, device="cpu", register=None)
        return score_run(run_id, options, tracking_uri=self.tracking_uri, progress=False)


# --------------------------------------------------------------------------------------------
# In-training evaluation (--online)
# --------------------------------------------------------------------------------------------


def train_online(spec: RunSpec, seed: int, scale: Scale, tracking_uri: str, features: str, label: str):
    """Train one run with every checkpoint scored as it is written, stopping at a confirmed collapse
    (``facegan train --evaluate FEATURES --stop-on-collapse``); returns (run id, trainer)."""
    from facegan.scoring import training_judge, training_scorer
    from facegan.tracking import MlflowRunSource, MlflowRunTracker

    tracker = MlflowRunTracker.start(tracking_uri, EXPERIMENT, f"{scale.name}-{spec.name}-seed{seed}-online-{label}")
    evaluate = {"evaluate.features": features, "evaluate.num_samples": scale.num_samples,
                "evaluate.stop_on_collapse": True, "evaluate.register": None}

    def judge_for(cfg, data):
        source = MlflowRunSource(tracker.client, tracker.run_id, tracker=tracker)  # a new run: nothing to download
        return training_judge(cfg, training_scorer(cfg, data, progress=False), source, progress=False)

    trainer = train_into(tracker, spec, seed, scale, {**BASE_OVERRIDES, **evaluate}, judge_for=judge_for)
    return tracker.run_id, trainer


def run_online(scale: Scale, tracking_uri: str, spaces: dict[str, str], faces: Domain, log) -> list[dict]:
    """Every run trained again per feature space with in-training evaluation and stopping on collapse.

    Per run: where it stopped (or not), the share of its planned epochs it did not train, the
    ground-truth onset of the checkpoints it did write, and ``facegan evaluate --force`` on those
    same checkpoints afterwards: whether the scores, the onset and the choice are the ones training
    logged and acted on.
    """
    runs = []
    for spec in scale.runs:
        for seed in spec.seeds:
            name = f"{spec.name}-seed{seed}"
            for label, features in spaces.items():
                started = time.perf_counter()
                run_id, trainer = train_online(spec, seed, scale, tracking_uri, features, label)
                seconds = {"train_and_judge": round(time.perf_counter() - started, 1)}
                online = trainer.judge.evaluation
                truth, _ = checkpoint_truth(run_id, tracking_uri, faces.classifier, scale.gt_samples)
                started = time.perf_counter()
                options = ScoringOptions(features, num_samples=scale.num_samples, device="cpu", register=None)
                offline = score_run(run_id, options, force=True, tracking_uri=tracking_uri, progress=False)
                seconds["offline_evaluate"] = round(time.perf_counter() - started, 1)
                runs.append(summarise_online(name, seed, spec, scale, label, trainer, online, offline, truth, seconds))
                r = runs[-1]
                log(f"  online {name} [{label}]: stopped at {r['stopped_epoch']} of {r['planned_epochs']} "
                    f"(GT onset {r['gt_onset']}, saved {r['epochs_saved_share']:.0%}); choice {r['online_choice']} "
                    f"online, {r['offline_choice']} offline")
    return runs


def summarise_online(name: str, seed: int, spec: RunSpec, scale: Scale, label: str, trainer, online, offline,
                     truth: dict[int, dict], seconds: dict) -> dict:
    epochs = sorted(truth)
    gt = gt_onset(epochs, [truth[e]["modes"] for e in epochs])
    stopped = trainer.epoch if trainer.stopped is not None else None
    online_scores = {c.epoch: c.scores for c in online.checkpoints}
    differences = [abs(online_scores[c.epoch][k] - v) / max(abs(v), 1e-12)
                   for c in offline.checkpoints for k, v in c.scores.items()]
    designed = None
    if spec.collapse_after is not None:  # the first checkpoint trained with the collapsing learning rates
        designed = next((e for e in epochs if e > spec.collapse_after), None)
    return {
        "run": name, "seed": seed, "config": spec.name, "features": label, "run_id": offline.run_id,
        "designed_to_collapse": spec.designed_to_collapse,
        "planned_epochs": scale.epochs,
        "trained_epochs": trainer.epoch,
        "stopped_epoch": stopped,
        "stop_reason": None if trainer.stopped is None else trainer.stopped[1],
        "epochs_saved_share": round(1 - trainer.epoch / scale.epochs, 3),
        "gt_onset": gt,
        "designed_collapse_checkpoint": designed,
        "stop_checkpoints_after_gt_onset": index_gap(epochs, stopped, gt),
        "online_onset": online.collapse.onset_epoch,
        "online_choice": online.best_epoch,
        "offline_onset": offline.collapse.onset_epoch,
        "offline_choice": offline.best_epoch,
        "choice_equals_offline": online.best_epoch == offline.best_epoch,
        "max_relative_score_difference": max(differences),
        "choice_gt": truth[online.best_epoch],
        "gt_best": {"epoch": gt_best_epoch(truth), **truth[gt_best_epoch(truth)]},
        "gt_modes": [truth[e]["modes"] for e in epochs],
        "seconds": seconds,
    }


def online_targets(runs: list[dict]) -> dict:
    """Issue 15's targets for in-training evaluation, per feature space."""
    targets = {}
    for space in sorted({r["features"] for r in runs}):
        mine = [r for r in runs if r["features"] == space]
        collapsing = [r for r in mine if r["designed_to_collapse"]]
        stable = [r for r in mine if not r["designed_to_collapse"]]
        targets[f"{space}.designed_collapses_stop_within_two_checkpoints_of_gt_onset"] = bool(collapsing) and all(
            r["stop_checkpoints_after_gt_onset"] is not None and 0 <= r["stop_checkpoints_after_gt_onset"] <= 2
            for r in collapsing)
        targets[f"{space}.stable_runs_do_not_stop"] = all(r["stopped_epoch"] is None for r in stable)
        targets[f"{space}.choice_equals_offline_evaluate"] = all(r["choice_equals_offline"] for r in mine)
        targets[f"{space}.mean_epochs_saved_on_collapsing_runs"] = (
            round(float(np.mean([r["epochs_saved_share"] for r in collapsing])), 3) if collapsing else None)
    return targets


def online_markdown(result: dict) -> str:
    lines = [f"# Collapse benchmark, in-training evaluation ({result['scale']})", "",
             f"Every run trained with `--evaluate FEATURES --stop-on-collapse` (samples per checkpoint: "
             f"{result['num_samples']}); afterwards `facegan evaluate --force` on the checkpoints it wrote. "
             f"Total {result['seconds_total']:.0f} s.", "",
             "| run | features | stopped at | of | epochs saved | GT onset | designed collapse | checkpoints after "
             "GT onset | choice online / offline | scores differ by | GT modes at choice / GT best |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(
            f"| {r['run']} | {r['features']} | {r['stopped_epoch'] or 'not stopped'} | {r['planned_epochs']} | "
            f"{r['epochs_saved_share']:.0%} | {r['gt_onset']} | {r['designed_collapse_checkpoint']} | "
            f"{r['stop_checkpoints_after_gt_onset']} | {r['online_choice']} / {r['offline_choice']} | "
            f"{r['max_relative_score_difference']:.1e} | {r['choice_gt']['modes']} / {r['gt_best']['modes']} |")
    lines += ["", "## Targets", ""] + [f"- {key}: {value}" for key, value in result["targets"].items()]
    if "provenance" in result:
        lines += provenance.markdown_lines(result["provenance"])
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="within 10 minutes on 2 CPU cores")
    size.add_argument("--tiny", action="store_true", help="seconds; for tests, not a measurement")
    parser.add_argument("--encoder-epochs", type=int, metavar="N",
                        help="train the encoder feature space N epochs instead of the scale's (an experiment on "
                             "the feature space: the runs and the ground truth stay the same); adds -encoderN "
                             "to the result files' names")
    parser.add_argument("--copying", action="store_true",
                        help="instead: only the copying ladders (memorisation against ground truth), in each feature "
                             "space (writes ...-copying.json/.md)")
    parser.add_argument("--online", action="store_true",
                        help="instead: train every run with in-training evaluation and stopping on collapse, in each "
                             "feature space, and compare with `facegan evaluate` on the same checkpoints (writes "
                             "...-online.json/.md)")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                        help="train every run configuration with these seeds instead of the scale's (held-out runs "
                             "for a changed rule); adds -seedsA-B... to the result files' names")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    scale = SCALES["tiny" if args.tiny else "quick" if args.quick else "full"]
    suffix = "" if scale.name == "full" else f"-{scale.name}"
    if args.seeds:
        scale = replace(scale, runs=tuple(replace(run, seeds=tuple(args.seeds)) for run in scale.runs))
        suffix += "-seeds" + "-".join(map(str, args.seeds))
    if args.encoder_epochs is not None:
        if args.encoder_epochs < 1:
            parser.error(f"--encoder-epochs must be at least 1, got {args.encoder_epochs}")
        scale = replace(scale, encoder=replace(scale.encoder, epochs=args.encoder_epochs))
        suffix += f"-encoder{args.encoder_epochs}"
    record = provenance.announce(__spec__.name, argv)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {message}", flush=True)

    from facegan.tracking import connect

    connect(args.tracking_uri)  # create the store once, before anything else touches it
    domains, ground_truth = make_domains(scale)
    log(f"ground truth ready: {json.dumps({k: v['held_out_accuracy'] for k, v in ground_truth.items()})}")
    encoder_dir = Path(tempfile.mkdtemp(prefix="facegan-encoders-"))
    try:
        specs, encoders = {}, {}
        for domain in domains:
            # The faces' encoder learns from the training runs' own images, as a user's would.
            train_images = (synthetic_faces(scale.num_train_images, gt.IMAGE_SIZE, seed=0).images
                            if domain.name == "faces" else domain.real)
            specs[domain.name], encoders[domain.name] = feature_specs(scale, domain.name, train_images, encoder_dir)
            log(f"feature spaces for {domain.name}: {specs[domain.name]} ({encoders[domain.name]})")
            if args.online:
                break  # the training histories are faces only
        if args.online:
            return main_online(args, scale, suffix, domains[0], specs["faces"], encoders["faces"], started, log,
                               record)
        extractors = {name: {space: get_extractor(spec) for space, spec in specs[name].items()} for name in specs}
        references = references_of(domains, extractors)

        copying = {domain.name: score_copying(domain, extractors[domain.name], references[domain.name],
                                              scale.num_samples)
                   for domain in domains}
        firsts = {f"{name}/{space}/{kind}": ladders[kind]["first_flagged_share"]
                  for name, spaces in copying.items() for space, ladders in spaces.items()
                  for kind in ("exact", "noisy")}
        log(f"copying ladders, first copied share flagged: {firsts}")
        if args.copying:
            return main_copying(args, scale, suffix, copying, started, record)

        result = {
            "provenance": record,
            "scale": scale.name,
            "device": "cpu",
            "num_real": scale.num_real,
            "num_samples": scale.num_samples,
            "settings": {"runs": [asdict(r) for r in scale.runs], "base_overrides": BASE_OVERRIDES,
                         "epochs": scale.epochs, "checkpoint_every": scale.checkpoint_every,
                         "num_train_images": scale.num_train_images, "features": list(scale.features),
                         "gt_samples": scale.gt_samples, "encoder": asdict(scale.encoder), "encoders": encoders},
            "ground_truth": ground_truth,
            "ladders": {},
            "copying": copying,
            "histories": {"runs": [], "reliability": {}},
            "targets": {},
            "gpu": "a separate script: experiments/collapse/benchmark_gpu.py (80 x 80 on a GPU machine; "
                   "results in collapse_benchmark-gpu80.md)",
        }
        histories = StoreHistories(scale, args.tracking_uri, domains[0].classifier, specs["faces"])
        run_study(result, scale, domains, extractors, references, histories, log)
    finally:
        shutil.rmtree(encoder_dir, ignore_errors=True)
    finish(result, started)
    paths = write_result(result, args.out, f"collapse_benchmark{suffix}")
    result["mlflow_study_run"] = log_study(result, args.tracking_uri, paths)
    print(markdown(result))
    print(json.dumps(headline(result), default=json_default))
    return result


def main_copying(args, scale: Scale, suffix: str, copying: dict, started: float, record: dict) -> dict:
    result = {"provenance": record, "scale": scale.name, "device": "cpu", "num_samples": scale.num_samples,
              "num_real": scale.num_real, "copying": copying, "targets": copying_targets(copying),
              "seconds_total": time.perf_counter() - started}
    args.out.mkdir(parents=True, exist_ok=True)
    text = "\n".join([f"# Collapse benchmark, copying ladders ({scale.name})", "",
                      f"Samples per set: {scale.num_samples}; real (training) images: {scale.num_real}; held-out "
                      f"images: {scale.num_samples} fresh ones. Total {result['seconds_total']:.0f} s."]
                     + copying_markdown(copying) + ["", "## Targets", ""]
                     + [f"- {k}: {v}" for k, v in result["targets"].items()]
                     + provenance.markdown_lines(record)) + "\n"
    (args.out / f"collapse_benchmark{suffix}-copying.json").write_text(json.dumps(result, indent=1, default=json_default))
    (args.out / f"collapse_benchmark{suffix}-copying.md").write_text(text)
    print(text)
    print(json.dumps({"scale": scale.name, "targets": result["targets"]}, default=json_default))
    return result


def main_online(args, scale: Scale, suffix: str, faces: Domain, spaces: dict[str, str], encoder: dict,
                started: float, log, record: dict) -> dict:
    runs = run_online(scale, args.tracking_uri, spaces, faces, log)
    result = {
        "provenance": record,
        "scale": scale.name, "device": "cpu", "num_samples": scale.num_samples,
        "settings": {"runs": [asdict(r) for r in scale.runs], "base_overrides": BASE_OVERRIDES,
                     "epochs": scale.epochs, "checkpoint_every": scale.checkpoint_every,
                     "features": list(spaces), "gt_samples": scale.gt_samples, "encoder": asdict(scale.encoder),
                     "encoders": {"faces": encoder}},
        "runs": runs,
        "targets": online_targets(runs),
        "seconds_total": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"collapse_benchmark{suffix}-online.json").write_text(json.dumps(result, indent=1, default=json_default))
    (args.out / f"collapse_benchmark{suffix}-online.md").write_text(online_markdown(result))
    print(online_markdown(result))
    print(json.dumps({"scale": scale.name, "targets": result["targets"],
                      "runs": {f"{r['run']}/{r['features']}": {k: r[k] for k in (
                          "stopped_epoch", "gt_onset", "epochs_saved_share", "online_choice", "offline_choice")}
                               for r in runs}}, default=json_default))
    return result

if __name__ == "__main__":
    main()
