"""The result of an evaluation: the ranked checkpoints, the decision, and how they are shown.

:class:`Evaluation` is what :func:`evaluation.engine.evaluate` returns, for any source: every
checkpoint's scores, the collapse onset and the choice. It renders itself as the ranking table
the CLI prints, as the ``--json`` file, as columns for MLflow's table view, and (with
:func:`scores_figure`) as a plot of the scores against epoch.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

from evaluation.collapse import Choice, CollapseResult
from evaluation.memorisation import DISTANCE_TEST, RATIO_TEST, MemorisationResult
from evaluation.metrics import SCORE_KEYS


@dataclass
class Scored:
    epoch: int
    label: str
    scores: dict[str, float]
    model_id: str | None = None
    reused: bool = False  # read back from where the source keeps scores rather than computed now
    num_samples: int | None = None  # images the scores came from


@dataclass
class Evaluation:
    """Everything one evaluation found; ``to_json`` is the ``--json`` file."""

    features: str
    note: str
    checkpoints: list[Scored]
    collapse: CollapseResult
    choice: Choice
    noise: dict[str, float]
    num_samples: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    run_id: str | None = None
    registered: str | None = None
    memorisation: MemorisationResult | None = None
    real_digest: str | None = None  # identifies the real images the scores are against
    registration_lines: list[str] = field(default_factory=list)  # what registering the choice did, for people
    pages: list[str] = field(default_factory=list)  # where its evidence page went (files, MLflow artifacts)

    def memorised(self, epoch: int) -> bool:
        """Whether the checkpoint at ``epoch`` copies training images beyond chance (the deciding test)."""
        return self.memorisation is not None and epoch in self.memorisation.memorised_epochs

    def _test_rows(self) -> dict[int, dict[str, dict]]:
        """Per epoch, per copy test: the figures that test decided on."""
        rows: dict[int, dict[str, dict]] = {}
        if self.memorisation is not None:
            for name, test in self.memorisation.tests.items():
                for row in test.get("checkpoints", []):
                    rows.setdefault(row["epoch"], {})[name] = {k: v for k, v in row.items() if k != "epoch"}
        return rows

    @property
    def best_epoch(self) -> int:
        return self.choice.epoch

    def to_json(self) -> dict:
        collapsed = dict(zip(self.collapse.epochs, self.collapse.collapsed))
        tests = self._test_rows()
        return {
            "features": self.features,
            "features_note": self.note,
            "best_epoch": self.choice.epoch,
            "collapse_epoch": self.collapse.onset_epoch,
            "passing_collapse_epochs": self.collapse.passing_epochs,
            "unconfirmed_drop_epoch": self.collapse.unconfirmed_epoch,
            "memorisation_epoch": None if self.memorisation is None else self.memorisation.onset_epoch,
            "memorised_epochs": [] if self.memorisation is None else self.memorisation.memorised_epochs,
            "memorisation": None if self.memorisation is None else {
                "test": self.memorisation.test, "key": self.memorisation.key,
                "threshold": self.memorisation.threshold, "chance": self.memorisation.chance,
                "reference": self.memorisation.reference, "sample_size": self.memorisation.sample_size,
                # each test's rule, parameters, threshold and chance level with its source; the
                # per-checkpoint figures are in each checkpoint's "copy_tests"
                "tests": {name: {k: v for k, v in test.items() if k != "checkpoints"}
                          for name, test in self.memorisation.tests.items()}},
            "choice_reason": self.choice.reason,
            "run_id": self.run_id,
            "registered": self.registered,
            "registration": self.registration_lines,
            "real_digest": self.real_digest,
            "num_samples": self.num_samples,
            "checkpoints": [
                {"epoch": c.epoch, **{k: c.scores[k] for k in SCORE_KEYS if k in c.scores},
                 "collapsed": collapsed[c.epoch], "memorised": self.memorised(c.epoch),
                 "copy_tests": tests.get(c.epoch, {}), "model_id": c.model_id}
                for c in self.checkpoints
            ],
            "thresholds": self.collapse.thresholds,
            "noise": self.noise,
            "skipped": [{"checkpoint": label, "reason": reason} for label, reason in self.skipped],
        }

    def _collapsed_and_rank(self) -> tuple[dict[int, bool], dict[int, int]]:
        """Per epoch: collapsed or not, and the rank by FID (1 = lowest)."""
        collapsed = dict(zip(self.collapse.epochs, self.collapse.collapsed))
        by_fid = sorted(self.checkpoints, key=lambda c: c.scores["fid"])
        return collapsed, {c.epoch: i + 1 for i, c in enumerate(by_fid)}

    def table_columns(self) -> dict[str, list]:
        """The ranking as columns (for MLflow's table view)."""
        collapsed, order = self._collapsed_and_rank()
        cols: dict[str, list] = {"epoch": [], "fid_rank": []}
        for key in SCORE_KEYS:
            cols[key] = []
        cols["collapsed"], cols["memorised"], cols["chosen"] = [], [], []
        for c in self.checkpoints:
            cols["epoch"].append(c.epoch)
            cols["fid_rank"].append(order[c.epoch])
            for key in SCORE_KEYS:
                cols[key].append(c.scores.get(key))
            cols["collapsed"].append(collapsed[c.epoch])
            cols["memorised"].append(self.memorised(c.epoch))
            cols["chosen"].append(c.epoch == self.choice.epoch)
        return cols

    def render_table(self) -> str:
        collapsed, order = self._collapsed_and_rank()
        head = (f"{'epoch':>7} {'rank':>4} {'FID':>9} {'KID':>8} {'prec':>5} {'recall':>6} {'cover':>5} {'divers':>6} "
                f"{'dupl':>5} {'copy':>5}  ")
        lines = [head, "-" * len(head)]
        unconfirmed = self.collapse.unconfirmed_epoch
        dips = set(self.collapse.dip_epochs)
        tests = self._test_rows()
        for c in self.checkpoints:
            s = c.scores
            mark = []
            if c.epoch == self.choice.epoch:
                mark.append("<- best")
            if c.epoch == self.collapse.onset_epoch:
                mark.append("<- collapse onset")
            elif collapsed[c.epoch]:
                mark.append("collapsed" if self.collapse.onset_epoch is not None
                            and c.epoch > self.collapse.onset_epoch else "passing collapse")
            elif unconfirmed is not None and c.epoch >= unconfirmed:
                mark.append("drop, unconfirmed")
            elif c.epoch in dips:
                mark.append("dip, recovered")
            if self.memorised(c.epoch):
                onset_mark = ", onset" if c.epoch == self.memorisation.onset_epoch else ""
                mark.append(f"copying ({self.memorisation.test}{onset_mark})")
            elif tests.get(c.epoch, {}).get(DISTANCE_TEST, {}).get("flagged"):
                mark.append(f"near training ({DISTANCE_TEST} only, not deciding)")
            lines.append(
                f"{c.epoch:>7} {order[c.epoch]:>4} {s['fid']:>9.3f} {s['kid']:>8.4f} {s['precision']:>5.2f} "
                f"{s['recall']:>6.2f} {s['coverage']:>5.2f} {s['diversity']:>6.2f} {s['duplicate_share']:>5.2f} "
                f"{s['copy_share']:>5.2f}  " + " ".join(mark)
            )
        onset = self.collapse.onset_epoch
        if onset is not None:
            onset_text = f"epoch {onset}"
        else:
            onset_text = "none detected" if unconfirmed is None else "none confirmed"
        lines += [
            "",
            f"best checkpoint: epoch {self.choice.epoch} ({self.choice.reason})",
            f"collapse onset: {onset_text}"
            + (f" (passing collapses, recovered from: epochs {', '.join(map(str, self.collapse.passing_epochs))})"
               if self.collapse.passing_epochs else ""),
        ]
        if self.memorisation is not None:
            m = self.memorisation
            copied = m.memorised_epochs
            lines.append(
                f"copying training images ({m.test}): "
                + (f"epochs {', '.join(map(str, copied))}" + (f" (from epoch {m.onset_epoch} on)" if m.onset_epoch else "")
                   if copied else "none detected")
                + f" (copy share above {m.threshold:.3f} at {m.sample_size} samples; by chance {m.chance:.3f}, "
                  f"from {m.reference})")
            distance = m.tests.get(DISTANCE_TEST)
            if distance is not None:
                near = m.flagged_epochs(DISTANCE_TEST)
                lines.append(
                    f"{DISTANCE_TEST} (reported, not deciding: near the data in general is not a copy): "
                    + (f"epochs {', '.join(map(str, near))}" if near else "none")
                    + f" (memorised share above {distance['threshold']:.3f}; by chance {distance['chance']:.3f}, "
                      f"from {distance['chance_source']})")
        if unconfirmed is not None:
            reasons = self.collapse.drops[self.collapse.epochs.index(unconfirmed)]
            lines.append(
                f"unconfirmed drop: from epoch {unconfirmed} to the last checkpoint ({'; '.join(reasons)}); "
                "too short to tell a dip from a collapse: evaluate again when later checkpoints exist"
            )
        lines.append("columns: rank = FID rank, prec = precision, cover = coverage, divers = diversity (Vendi vs "
                     f"real), dupl = duplicate share, copy = copy share ({RATIO_TEST})")
        lines.append(f"features: {self.features} — {self.note}")
        for label, reason in self.skipped:
            lines.append(f"skipped {label}: {reason}")
        return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no window, works headless); every figure
    of facegan's is drawn through it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def preload_pyplot() -> threading.Thread:
    """Import pyplot on a background thread now, so the figure at the end of a run does not wait
    for it: importing matplotlib takes about 1.5 s here, a tenth of what scoring a Quickstart run
    while training may cost, and the import overlaps the training steps (whose arithmetic releases
    the GIL). Returns the thread (daemon: it never holds up exiting)."""
    thread = threading.Thread(target=pyplot, name="facegan-preload-pyplot", daemon=True)
    thread.start()
    return thread


def scores_figure(evaluation: Evaluation):
    """FID, diversity, coverage and the copy share against epoch, the onset, the copies and the choice marked."""
    plt = pyplot()
    epochs = [c.epoch for c in evaluation.checkpoints]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    ax.plot(epochs, [c.scores["fid"] for c in evaluation.checkpoints], "o-", color="tab:blue", label="FID")
    ax.set_xlabel("epoch")
    ax.set_ylabel("FID (lower is better)", color="tab:blue")
    right = ax.twinx()
    right.plot(epochs, [c.scores["diversity"] for c in evaluation.checkpoints], "s-", color="tab:orange", label="diversity")
    right.plot(epochs, [c.scores["coverage"] for c in evaluation.checkpoints], "^-", color="tab:green", label="coverage")
    right.plot(epochs, [c.scores["copy_share"] for c in evaluation.checkpoints], "d-", color="tab:brown",
               label=f"copy share ({RATIO_TEST})")
    if evaluation.memorisation is not None:
        right.axhline(evaluation.memorisation.threshold, color="tab:brown", linestyle=":", linewidth=1,
                      label="copy share threshold")
    right.set_ylabel("diversity, coverage (higher is better); copy share")
    right.set_ylim(0, max(1.05, *[c.scores["diversity"] for c in evaluation.checkpoints]))
    if evaluation.collapse.onset_epoch is not None:
        ax.axvline(evaluation.collapse.onset_epoch, color="tab:red", linestyle="--", label="collapse onset")
    if evaluation.collapse.unconfirmed_epoch is not None:
        ax.axvline(evaluation.collapse.unconfirmed_epoch, color="tab:red", linestyle=":", label="unconfirmed drop")
    copied = [c for c in evaluation.checkpoints if evaluation.memorised(c.epoch)]
    if copied:
        ax.plot([c.epoch for c in copied], [c.scores["fid"] for c in copied], marker="x", markersize=10,
                color="tab:purple", linestyle="none", label="copies training images")
    best = next(c for c in evaluation.checkpoints if c.epoch == evaluation.choice.epoch)
    ax.plot([best.epoch], [best.scores["fid"]], marker="*", markersize=18, color="gold",
            markeredgecolor="black", linestyle="none", label=f"chosen (epoch {best.epoch})")
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, ncol=4, frameon=False)
    ax.set_title(f"checkpoint scores ({evaluation.features} features)")
    fig.tight_layout()
    return fig


def write_json(evaluation, path: str) -> None:
    """``evaluation.to_json()`` (an :class:`Evaluation` or a study) to ``path``; NaN and infinity as null."""
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(clean(evaluation.to_json()), indent=2))
