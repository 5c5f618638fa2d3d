"""A study: several runs scored in one feature space against the same real images, compared.

The tutorial trains DCGAN, WGAN and WGAN-GP and compares them by eye. A :class:`Study` holds each
run's :class:`evaluation.ranking.Evaluation` (its own onset and choice) and the study's best: the
lowest FID among the runs' choices. That comparison is fair only because every run is scored
with the same feature space, the same real images and the same number of samples, which is what
``facegan evaluate --experiment`` guarantees (runs trained on other data are refused).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from evaluation.ranking import Evaluation, pyplot


@dataclass
class StudyRun:
    """One run of a study: its identity, how it was trained, and its evaluation."""

    run_id: str
    name: str
    loss: str
    evaluation: Evaluation

    @property
    def best(self):
        return next(c for c in self.evaluation.checkpoints if c.epoch == self.evaluation.best_epoch)


@dataclass
class Study:
    features: str
    note: str
    num_samples: int
    runs: list[StudyRun]
    study_run_id: str | None = None
    registered: str | None = None
    registration_lines: list[str] = field(default_factory=list)  # what registering did, for people
    pages: list[str] = field(default_factory=list)  # where its evidence page went (files, MLflow artifacts)

    @property
    def best(self) -> StudyRun:
        """The run whose choice has the lowest FID (all scored alike, so comparable)."""
        return min(self.runs, key=lambda r: r.best.scores["fid"])

    def table_columns(self) -> dict[str, list]:
        """One row per run (MLflow's table view)."""
        best = self.best
        rows = [{
            "run_id": r.run_id, "run_name": r.name, "loss": r.loss, "best_epoch": r.evaluation.best_epoch,
            "fid": r.best.scores["fid"], "diversity": r.best.scores["diversity"], "coverage": r.best.scores["coverage"],
            "collapse_epoch": r.evaluation.collapse.onset_epoch,
            "memorisation_epoch": None if r.evaluation.memorisation is None else r.evaluation.memorisation.onset_epoch,
            "checkpoints": len(r.evaluation.checkpoints), "study_best": r is best,
        } for r in self.runs]
        return {key: [row[key] for row in rows] for key in rows[0]}

    def render_table(self) -> str:
        best = self.best
        head = f"{'run':34} {'loss':8} {'best ep':>7} {'FID':>9} {'divers':>6} {'cover':>5} {'onset':>6} {'copies':>6}"
        lines = [head, "-" * len(head)]
        for r in sorted(self.runs, key=lambda r: r.best.scores["fid"]):
            onset = r.evaluation.collapse.onset_epoch
            copies = None if r.evaluation.memorisation is None else r.evaluation.memorisation.onset_epoch
            lines.append(f"{(r.name or r.run_id)[:34]:34} {r.loss[:8]:8} {r.evaluation.best_epoch:>7} "
                         f"{r.best.scores['fid']:>9.3f} {r.best.scores['diversity']:>6.2f} {r.best.scores['coverage']:>5.2f} "
                         f"{'-' if onset is None else onset:>6} {'-' if copies is None else copies:>6}"
                         + ("  <- study best" if r is best else ""))
        lines += ["", f"study best: run {best.run_id} ({best.name}), epoch {best.evaluation.best_epoch} "
                      f"(lowest FID of the runs' choices, {best.best.scores['fid']:.4g})",
                  f"features: {self.features} — {self.note}; {self.num_samples} samples per checkpoint"]
        return "\n".join(lines)

    def to_json(self) -> dict:
        best = self.best
        return {
            "features": self.features, "num_samples": self.num_samples, "study_run_id": self.study_run_id,
            "registered": self.registered, "registration": self.registration_lines,
            "best": {"run_id": best.run_id, "epoch": best.evaluation.best_epoch, "fid": best.best.scores["fid"]},
            "runs": [{"run_id": r.run_id, "name": r.name, "loss": r.loss, **r.evaluation.to_json()} for r in self.runs],
        }


def study_figure(study: Study):
    """FID and diversity against epoch, one line per run; onsets dashed, choices starred."""
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), dpi=110, sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(study.runs):
        colour = colours[i % len(colours)]
        label = f"{run.name or run.run_id[:8]} ({run.loss})"
        points = run.evaluation.checkpoints
        epochs = [c.epoch for c in points]
        top.plot(epochs, [c.scores["fid"] for c in points], "o-", color=colour, markersize=3, label=label)
        bottom.plot(epochs, [c.scores["diversity"] for c in points], "o-", color=colour, markersize=3)
        onset = run.evaluation.collapse.onset_epoch
        for axis in (top, bottom):
            if onset is not None:
                axis.axvline(onset, color=colour, linestyle="--", linewidth=1)
        best = run.best
        marker = dict(marker="*", markersize=16 if run is study.best else 11, color=colour,
                      markeredgecolor="black", linestyle="none")
        top.plot([best.epoch], [best.scores["fid"]], **marker)
        bottom.plot([best.epoch], [best.scores["diversity"]], **marker)
    top.set_ylabel("FID (lower is better)")
    bottom.set_ylabel("diversity (1 = as diverse as real)")
    bottom.set_xlabel("epoch")
    top.legend(fontsize=8)
    best = study.best
    top.set_title(f"study ({study.features} features): choices starred (largest: the study's best, "
                  f"{best.name or best.run_id[:8]} epoch {best.evaluation.best_epoch}); dashed: collapse onsets",
                  fontsize=9)
    fig.tight_layout()
    return fig
