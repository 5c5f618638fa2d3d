"""The evidence page: one static HTML file that shows why a checkpoint was chosen.

A person should not have to trust the numbers: the page puts the decision beside what it rests
on, readable in under a minute. At the top the reason for the choice in one sentence; then

- the scores against epoch (:func:`evaluation.ranking.scores_figure`) with the onset and the
  choice marked;
- a sample grid each of the chosen checkpoint, the onset(s) (collapse, copying, an unconfirmed
  drop) and the last checkpoint, side by side, the same samples (fixed latents) in each;
- where collapse was found: the largest groups of near-identical samples at its onset, one row
  each (:func:`near_identical_groups`);
- for the chosen checkpoint always, and where copying was found: the samples closest to the
  training set, each beside its nearest training image, with Gu et al. 2023's distance ratio
  (nearest / second nearest) against the copy threshold and the chance level
  (:func:`closest_copies`);
- the ranking table.

The page is one self-contained file: images are embedded as ``data:image/png`` at their own
pixel size and enlarged by the browser without smoothing (``image-rendering: pixelated``), which
keeps a page well under 2 MB; inline CSS, no script, no external address. It opens from disk, as
an email attachment and in MLflow's artifact viewer alike. :mod:`facegan.scoring` builds it after
every evaluation: an MLflow run gets it as the artifact ``evaluation/<space>_report.html`` (a
study run as ``study/<space>_report.html``), and ``facegan evaluate --report DIR`` writes it to
``DIR/<space>_report.html`` for any source.

Only the shown checkpoints are drawn again (generators draw the same fixed latents as when they
were scored, folders hand back the same files, so the page shows the samples the scores came
from), and only those with groups or copies to show are embedded again.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from evaluation import metrics
from evaluation.engine import Checkpoint, Scorer
from evaluation.ranking import Evaluation, pyplot, scores_figure
from facegan.common import atomic_write, error_text, images_to_grid
from facegan.errors import FaceganError

__all__ = [
    "CopyPair", "check_report_dir", "closest_copies", "copy_ratio", "evaluation_page", "near_identical_groups",
    "report_name", "study_grids", "study_page", "write_page",
]

GRID_IMAGES = 16  # samples in each checkpoint's grid
MAX_GROUPS, GROUP_IMAGES = 6, 8  # near-identical groups shown, and samples shown per group
MAX_COPIES = 8  # closest-to-training samples shown per checkpoint
_GRID_FACE, _GROUP_FACE, _PAIR_FACE = 75, 72, 128  # CSS pixels a face is enlarged to, about


def copy_ratio() -> float:
    """The nearest/second-nearest distance ratio below which a sample counts as a copy."""
    return metrics.COPY_RATIO


def copy_share(scores: Mapping[str, float]) -> float | None:
    """The checkpoint's scored share of copies (the ratio test's ``copy_share``)."""
    value = scores.get("copy_share")
    return None if value is None else float(value)


def report_name(space: str) -> str:
    """The page's file name for a feature space: ``<space>_report.html``."""
    return f"{space}_report.html"


# ----------------------------------------------------------------------------------------------
# What the page shows, computed


def near_identical_groups(features: np.ndarray, threshold: float, *, block_rows: int = 512) -> list[np.ndarray]:
    """Groups of near-identical samples, largest first: the connected components (of two samples or
    more) of the graph joining every two samples whose feature distance is under ``threshold``.

    Single linkage: a chain of close pairs is one group, so a group is "one mode" of a collapsed
    generator even when its ends differ a little. Ties in size go by the smallest member.

    Example:
        >>> points = np.array([[0.0], [0.1], [5.0], [5.05], [5.1], [9.0]])
        >>> [g.tolist() for g in near_identical_groups(points, 0.2)]
        [[2, 3, 4], [0, 1]]
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    squared = np.einsum("ij,ij->i", x, x)
    rows, cols = [], []
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        block = squared[start:stop, None] + squared[None, :] - 2.0 * (x[start:stop] @ x.T)
        i, j = np.nonzero(block < threshold**2)
        keep = i + start < j  # each pair once, never a sample with itself
        rows.append(i[keep] + start)
        cols.append(j[keep])
    i, j = (np.concatenate(rows), np.concatenate(cols)) if rows else (np.empty(0, int), np.empty(0, int))
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    groups = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    return sorted((g for g in groups if len(g) >= 2), key=lambda g: (-len(g), g[0]))


@dataclass(frozen=True)
class CopyPair:
    """A sample and its nearest training image: indices, distances to the nearest and second nearest."""

    sample: int
    training: int
    first: float
    second: float

    @property
    def ratio(self) -> float:
        return self.first / max(self.second, np.finfo(float).tiny)


def closest_copies(features: np.ndarray, training: np.ndarray, count: int = MAX_COPIES, *,
                   nearest: metrics.NearestTraining | None = None) -> list[CopyPair]:
    """The ``count`` samples most like copies: lowest nearest/second-nearest ratio first
    (:func:`evaluation.metrics.nearest_training`, or ``nearest`` when the caller has it already),
    each training image once before any twice (a generator that copies one face a hundred times
    shows it once, and room is left for the others; samples that all lie nearest one training
    image still fill the rows)."""
    if nearest is None:
        nearest = metrics.nearest_training(features, training)
    order = np.argsort(nearest.ratio, kind="stable")
    _, first_of = np.unique(nearest.index[order], return_index=True)
    distinct = order[np.sort(first_of)]
    chosen = np.concatenate([distinct, order[~np.isin(order, distinct)]])[:count]
    chosen = sorted(chosen, key=lambda i: (nearest.ratio[i], i))
    return [CopyPair(int(i), int(nearest.index[i]), float(nearest.first[i]), float(nearest.second[i])) for i in chosen]


def _roles(evaluation: Evaluation) -> dict[int, list[str]]:
    """The checkpoints shown, in epoch order, each with what it is (chosen, an onset, last)."""
    roles: dict[int, list[str]] = {}
    copying, copy_role = _copying_epoch(evaluation)
    for epoch, role in ((evaluation.choice.epoch, "chosen"),
                        (evaluation.collapse.onset_epoch, "collapse onset"),
                        (evaluation.collapse.unconfirmed_epoch, "unconfirmed drop"),
                        (copying, copy_role),
                        (evaluation.checkpoints[-1].epoch, "last")):
        if epoch is not None:
            roles.setdefault(epoch, []).append(role)
    return dict(sorted(roles.items()))


def _copying_epoch(evaluation: Evaluation) -> tuple[int | None, str]:
    """The checkpoint whose copies are shown beside the chosen one's: the copying onset, or where
    copying comes and goes, the first checkpoint that copies."""
    m = evaluation.memorisation
    if m is None or not m.memorised_epochs:
        return None, ""
    if m.onset_epoch is not None:
        return m.onset_epoch, "copying onset"
    return m.memorised_epochs[0], "copies training images"


def _draw(checkpoint: Checkpoint, count: int, device: torch.device) -> torch.Tensor:
    batches = list(checkpoint.samples(count, device))
    if not batches:
        raise FaceganError("no images")
    return torch.cat([b.cpu() for b in batches])[:count]


# ----------------------------------------------------------------------------------------------
# HTML pieces


def _png(pixels: np.ndarray) -> str:
    """H x W x 3 uint8 as a ``data:`` URI."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(pixels: np.ndarray, *, side: int, face: int, alt: str, css: str = "") -> str:
    """An embedded image of faces ``side`` pixels wide, enlarged by the whole factor that shows a
    face nearest ``face`` CSS pixels wide."""
    height, width = pixels.shape[:2]
    scale = max(1, round(face / side))
    klass = f' class="{css}"' if css else ""
    return (f'<img{klass} src="{_png(pixels)}" width="{width * scale}" height="{height * scale}" '
            f'alt="{html.escape(alt)}">')


def _face(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy()


def _row(images: torch.Tensor) -> np.ndarray:
    return images_to_grid(images, nrow=len(images))


def _percent(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def _number(value) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "", None: "–"}[value]
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.4g}" if abs(value) >= 10 else f"{value:.3f}"
    return html.escape(str(value))


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 20px 28px; color: #1d1d1f;
       background: #fff; max-width: 1500px; }
h1 { font-size: 20px; margin: 0 0 6px; }
h2 { font-size: 16px; margin: 26px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 3px; }
.reason { font-size: 16px; background: #fff8dc; border-left: 5px solid #e0b000; padding: 8px 12px; margin: 8px 0; }
.facts { margin: 6px 0; padding-left: 20px; }
.facts li { margin: 2px 0; }
.note { color: #555; font-size: 13px; }
.row { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
figure { margin: 0; width: min-content; }
figcaption { font-size: 13px; margin-top: 4px; min-width: 220px; }
img { image-rendering: pixelated; image-rendering: crisp-edges; display: block; }
img.plot { image-rendering: auto; max-width: 100%; height: auto; }
.role { font-weight: 600; }
.chosen .role { color: #8a6d00; } .collapse .role { color: #c62828; } .copying .role { color: #6a1b9a; }
.group { display: flex; align-items: center; gap: 12px; margin: 6px 0; }
.group .label { font-size: 13px; width: 170px; flex: none; }
.pairs { display: flex; flex-wrap: wrap; gap: 14px; }
.pair { border: 1px solid #ddd; border-radius: 4px; padding: 6px; }
.pair .faces { display: flex; gap: 4px; }
.pair .who { display: flex; gap: 4px; font-size: 11px; color: #555; }
.pair .who span { width: 50%; text-align: center; }
.pair.copy { border-color: #6a1b9a; background: #f6eefa; }
.badge { font-size: 11px; padding: 0 5px; border-radius: 3px; background: #eee; }
.pair.copy .badge { background: #6a1b9a; color: #fff; }
table { border-collapse: collapse; font-size: 12px; font-variant-numeric: tabular-nums; }
th, td { padding: 2px 7px; text-align: right; border-bottom: 1px solid #eee; }
th { background: #f4f4f4; position: sticky; top: 0; }
tr.chosen td { background: #fff3bf; font-weight: 600; }
tr.collapse td { background: #ffe3e3; }
tr.copying td { background: #f0e0f7; }
tr.collapsed td { color: #a33; }
tr.copied td { color: #6a1b9a; }
"""


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def _figure_png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _plot(figure_of, subject, alt: str) -> str:
    plt = pyplot()
    figure = figure_of(subject)
    try:
        uri = _figure_png(figure)
    finally:
        plt.close(figure)
    return f'<img class="plot" src="{uri}" alt="{html.escape(alt)}">'


def _table(columns: Mapping[str, list], row_classes: Sequence[str]) -> str:
    keys = list(columns)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = []
    for i, css in enumerate(row_classes):
        cells = "".join(f"<td>{_number(columns[k][i])}</td>" for k in keys)
        body.append(f'<tr class="{css}">{cells}</tr>' if css else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _role_class(roles: Sequence[str]) -> str:
    if "chosen" in roles:
        return "chosen"
    if "collapse onset" in roles or "unconfirmed drop" in roles:
        return "collapse"
    if "copying onset" in roles or "copies training images" in roles:
        return "copying"
    return ""


# ----------------------------------------------------------------------------------------------
# The pages


def evaluation_page(evaluation: Evaluation, checkpoints: Sequence[Checkpoint], scorer: Scorer, *,
                    title: str, progress: bool = False) -> str:
    """The evidence page of one evaluation, as HTML text.

    Args:
        evaluation: what :func:`evaluation.engine.evaluate` returned for ``checkpoints``.
        checkpoints: the source's checkpoints; only the shown ones (chosen, onsets, last) are drawn.
        scorer: the scorer the evaluation used: its extractor embeds the shown samples, its real
            images (in the order of its reference features) are the training images compared with.
        title: what was evaluated, for the heading (``run 1a2b…``, ``samples under runs/x``).
        progress: a progress bar over the checkpoints drawn again.
    """
    roles = _roles(evaluation)
    by_epoch = {c.epoch: c for c in checkpoints}
    scored = {c.epoch: c for c in evaluation.checkpoints}
    collapsed = dict(zip(evaluation.collapse.epochs, evaluation.collapse.collapsed))
    # Where the collapse begins; the last checkpoint only when no onset was confirmed (its groups
    # would mostly repeat the onset's, at the cost of the page's size).
    onset = evaluation.collapse.onset_epoch
    if onset is None:
        onset = evaluation.collapse.unconfirmed_epoch
    last = evaluation.checkpoints[-1].epoch
    group_epochs = [onset] if onset is not None else [last] if collapsed.get(last) else []
    copy_epochs = [e for e in roles if e in (evaluation.choice.epoch, _copying_epoch(evaluation)[0])]
    real = scorer.real.images
    if real.shape[0] != scorer.reference.num_samples:
        raise FaceganError(f"{real.shape[0]} real images but {scorer.reference.num_samples} reference features")

    samples: dict[int, torch.Tensor] = {}
    features: dict[int, np.ndarray] = {}
    failures: dict[int, str] = {}
    bar = tqdm(list(roles), desc="evidence page", unit="ckpt", disable=not progress, file=sys.stderr)
    for epoch in bar:
        bar.set_postfix_str(f"epoch {epoch}")
        try:
            if epoch not in by_epoch:
                raise FaceganError("the checkpoint is not among those given")
            samples[epoch] = _draw(by_epoch[epoch], evaluation.num_samples, scorer.device)
            if epoch in group_epochs or epoch in copy_epochs:
                features[epoch] = scorer.extractor.extract(samples[epoch])
        except FaceganError as exc:
            failures[epoch] = error_text(exc)

    parts = [f"<h1>{html.escape(title)}: evaluation in {html.escape(evaluation.features)} features</h1>",
             f'<p class="reason"><b>Chosen: epoch {evaluation.choice.epoch}</b>: '
             f"{html.escape(evaluation.choice.reason)}.</p>",
             f'<ul class="facts">{"".join(f"<li>{html.escape(fact)}</li>" for fact in _facts(evaluation))}</ul>',
             "<h2>Scores against epoch</h2>",
             _plot(scores_figure, evaluation, "scores against epoch"),
             "<h2>Samples</h2>",
             f'<p class="note">The first {GRID_IMAGES} samples of each checkpoint (the same latents in every one).</p>',
             '<div class="row grids">']
    for epoch, what in roles.items():
        caption = (f'<span class="role">{html.escape(", ".join(what))}</span>: epoch {epoch}'
                   + _score_line(scored.get(epoch)))
        if epoch in samples:
            grid = images_to_grid(samples[epoch][:GRID_IMAGES])
            image = _img(grid, side=samples[epoch].shape[-1], face=_GRID_FACE, alt=f"samples of epoch {epoch}")
        else:
            image = f'<p class="note">could not draw its samples: {html.escape(failures[epoch])}</p>'
        parts.append(f'<figure class="{_role_class(what)}">{image}<figcaption>{caption}</figcaption></figure>')
    parts.append("</div>")

    for epoch in group_epochs:
        if epoch in features:
            parts.append(_groups_section(epoch, roles[epoch], samples[epoch], features[epoch], scorer))
    for epoch in copy_epochs:
        if epoch in features:
            parts.append(_copies_section(evaluation, epoch, roles[epoch], samples[epoch], features[epoch], real,
                                         scorer))

    parts += ["<h2>All checkpoints</h2>", _evaluation_table(evaluation),
              f'<p class="note">features: {html.escape(evaluation.features)} ({html.escape(evaluation.note)}); '
              f"{evaluation.num_samples} samples per checkpoint.</p>"]
    for label, reason in evaluation.skipped:
        parts.append(f'<p class="note">skipped {html.escape(label)}: {html.escape(reason)}</p>')
    return _page(f"{title}: evaluation", "\n".join(parts))


def _facts(evaluation: Evaluation) -> list[str]:
    c = evaluation.collapse
    facts = []
    if c.onset_epoch is not None:
        facts.append(f"Collapse from epoch {c.onset_epoch} on.")
    elif c.unconfirmed_epoch is not None:
        facts.append(f"A drop at epoch {c.unconfirmed_epoch}, too late to confirm as collapse.")
    else:
        facts.append("No collapse detected.")
    if c.passing_epochs:
        facts.append(f"Passing collapses, recovered from: epoch {', '.join(map(str, c.passing_epochs))}.")
    m = evaluation.memorisation
    if m is not None:
        copied = m.memorised_epochs
        facts.append((f"Copies training images beyond chance: epoch {', '.join(map(str, copied))}"
                      + (f" (from epoch {m.onset_epoch} on)." if m.onset_epoch is not None else ".")) if copied
                     else "No copying of training images beyond chance.")
    if evaluation.registration_lines:
        facts.extend(evaluation.registration_lines)
    return facts


def _score_line(checkpoint) -> str:
    if checkpoint is None:
        return ""
    s = checkpoint.scores
    return (f"<br>FID {_number(s.get('fid'))} · diversity {_number(s.get('diversity'))} · "
            f"coverage {_number(s.get('coverage'))} · copies {_percent(copy_share(s))}")


def _evaluation_table(evaluation: Evaluation) -> str:
    columns = evaluation.table_columns()
    columns.pop("kid_std", None)
    roles = _roles(evaluation)
    collapsed = dict(zip(evaluation.collapse.epochs, evaluation.collapse.collapsed))
    classes = []
    for epoch in columns["epoch"]:
        css = _role_class([r for r in roles.get(epoch, []) if r != "last"])
        classes.append(css or ("collapsed" if collapsed.get(epoch) else "copied" if evaluation.memorised(epoch) else ""))
    return _table(columns, classes)


def _groups_section(epoch: int, roles: list[str], images: torch.Tensor, features: np.ndarray,
                    scorer: Scorer) -> str:
    threshold = scorer.reference.duplicate_threshold(len(features))
    groups = near_identical_groups(features, threshold)
    head = (f"<h2>Near-identical samples: epoch {epoch} ({html.escape(', '.join(roles))})</h2>"
            f'<p class="note">Samples closer to each other than all but 1% of real images are to their nearest '
            f"real neighbour (feature distance under {threshold:.3g}), joined into groups; the largest "
            f"{MAX_GROUPS}, up to {GROUP_IMAGES} of each.</p>")
    if not groups:
        return head + ("<p>No near-identical samples: this collapse shows as lost coverage or diversity, "
                       "not as repeats; compare the grids above.</p>")
    in_groups = sum(len(g) for g in groups)
    rows = [f"<p>{in_groups} of {len(features)} samples ({_percent(in_groups / len(features))}) lie in "
            f"{len(groups)} group{'s' if len(groups) != 1 else ''} of near-identical samples.</p>"]
    for group in groups[:MAX_GROUPS]:
        shown = torch.as_tensor(group[:GROUP_IMAGES])
        strip = _row(images[shown])
        rows.append(f'<div class="group"><div class="label">{len(group)} samples '
                    f"({_percent(len(group) / len(features))})</div>"
                    f"{_img(strip, side=images.shape[-1], face=_GROUP_FACE, alt=f'a group of {len(group)} samples')}</div>")
    return head + "".join(rows)


def _copies_section(evaluation: Evaluation, epoch: int, roles: list[str], images: torch.Tensor,
                    features: np.ndarray, real: torch.Tensor, scorer: Scorer) -> str:
    ratio_limit = copy_ratio()
    nearest = metrics.nearest_training(features, scorer.reference.features)
    pairs = closest_copies(features, scorer.reference.features, nearest=nearest)
    below = float(nearest.copies.mean())
    m = evaluation.memorisation
    share = copy_share(evaluation_scores(evaluation, epoch))
    verdict = ("copies training images beyond chance" if evaluation.memorised(epoch)
               else "no more copies than chance")
    chance = "" if m is None else (f"; flagged above {_percent(m.threshold)}, by chance {_percent(m.chance)} "
                                   f"({html.escape(m.reference)})")
    head = (f"<h2>Closest to the training set: epoch {epoch} ({html.escape(', '.join(roles))})</h2>"
            f'<p><b>{verdict}</b>: copy share {_percent(share)}{chance}. Of the {len(features)} samples drawn here, '
            f"{_percent(below)} lie much closer to one training image than to any other (ratio below "
            f"{ratio_limit:.2f}).</p>"
            f'<p class="note">Each sample (left) beside its nearest training image (right), most copy-like first. '
            f"ratio = distance to the nearest training image / to the second nearest (Gu et al. 2023): a copy "
            f"is far closer to one training image than to any other (ratio below {ratio_limit:.2f}); a novel "
            f"face is about as close to several (ratio near 1).</p>")
    cards = []
    for pair in pairs:
        is_copy = pair.ratio < ratio_limit
        faces = torch.stack([images[pair.sample], real[pair.training]])
        strip = _row(faces)
        cards.append(f'<div class="pair{" copy" if is_copy else ""}">'
                     f'<div class="faces">{_img(strip, side=images.shape[-1], face=_PAIR_FACE, alt="sample and nearest training image")}</div>'
                     f'<div class="who"><span>sample {pair.sample}</span><span>training {pair.training}</span></div>'
                     f'<div>ratio {pair.ratio:.2f} <span class="badge">{"copy" if is_copy else "novel"}</span>'
                     f"<br>distance {pair.first:.3g}</div></div>")
    return head + f'<div class="pairs">{"".join(cards)}</div>'


def evaluation_scores(evaluation: Evaluation, epoch: int) -> dict[str, float]:
    return next((c.scores for c in evaluation.checkpoints if c.epoch == epoch), {})


def study_grids(study, checkpoints: Mapping[str, Sequence[Checkpoint]], *, device: torch.device | str = "cpu",
                progress: bool = False) -> dict[str, str]:
    """Each run's chosen checkpoint's grid as the study page's HTML, by run id, drawn once for
    every page of the study (:func:`study_page`).

    ``checkpoints``: each run's checkpoints by run id (only the chosen one is drawn).
    """
    grids = {}
    bar = tqdm(study.runs, desc="evidence page", unit="run", disable=not progress, file=sys.stderr)
    for run in bar:
        chosen = next((c for c in checkpoints.get(run.run_id, []) if c.epoch == run.evaluation.best_epoch), None)
        try:
            if chosen is None:
                raise FaceganError("the checkpoint is not among those given")
            drawn = _draw(chosen, GRID_IMAGES, torch.device(device))
            grids[run.run_id] = _img(images_to_grid(drawn), side=drawn.shape[-1], face=_GRID_FACE,
                                     alt=f"samples of run {run.run_id}")
        except FaceganError as exc:
            grids[run.run_id] = f'<p class="note">could not draw its samples: {html.escape(error_text(exc))}</p>'
    return grids


def study_page(study, grids: Mapping[str, str], *, links: Mapping[str, str] | None = None) -> str:
    """The evidence page of a study (:class:`evaluation.study.Study`): the comparison plot, the
    table of runs and each run's chosen checkpoint's grid, the study's best first.

    ``grids``: :func:`study_grids`; ``links``: each run's own page by run id, a relative address,
    where there is one.
    """
    from evaluation.study import study_figure

    best = study.best
    runs = sorted(study.runs, key=lambda r: r.best.scores["fid"])
    parts = [f"<h1>Study in {html.escape(study.features)} features: {len(study.runs)} runs</h1>",
             f'<p class="reason"><b>Study best: {html.escape(best.name or best.run_id)} ({html.escape(best.loss)}), '
             f"epoch {best.evaluation.best_epoch}</b>: the lowest FID of the runs' choices "
             f"({best.best.scores['fid']:.4g}); each run chose within itself, before its collapse onset.</p>",
             "<h2>Scores against epoch</h2>", _plot(study_figure, study, "the runs' scores"),
             "<h2>Each run's choice</h2>", '<div class="row grids">']
    for run in runs:
        image = grids[run.run_id]
        name = html.escape(run.name or run.run_id)
        if links and run.run_id in links:
            name = f'<a href="{html.escape(links[run.run_id])}">{name}</a>'
        onset = run.evaluation.collapse.onset_epoch
        caption = (f'<span class="role">{name}</span> ({html.escape(run.loss)}){" — study best" if run is best else ""}'
                   f"<br>chosen epoch {run.evaluation.best_epoch}; collapse "
                   f"{'none' if onset is None else f'from epoch {onset}'}" + _score_line(run.best))
        parts.append(f'<figure class="{"chosen" if run is best else ""}">{image}<figcaption>{caption}</figcaption></figure>')
    parts.append("</div>")
    columns = study.table_columns()
    parts += ["<h2>Runs</h2>", _table(columns, ["chosen" if b else "" for b in columns["study_best"]]),
              f'<p class="note">features: {html.escape(study.features)} ({html.escape(study.note)}); '
              f"{study.num_samples} samples per checkpoint.</p>"]
    parts.extend(f'<p class="note">{html.escape(line)}</p>' for line in study.registration_lines)
    return _page(f"study in {study.features} features", "\n".join(parts))


# ----------------------------------------------------------------------------------------------
# Where pages go


def check_report_dir(folder: str | os.PathLike) -> Path:
    """``--report DIR``: made if missing and checked writable now, before any scoring, so a bad
    folder costs one clear error instead of a finished evaluation without its page.

    Raises:
        FaceganError: it is a file, or cannot be made or written.
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise FaceganError(f"--report {folder}: is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise FaceganError(f"--report {folder}: cannot write there ({exc.strerror or error_text(exc)})") from None
    return path


def write_page(text: str, path: str | os.PathLike) -> Path:
    """Write a page whole or not at all; returns its path."""
    data = text.encode("utf-8")
    path = atomic_write(path, lambda f: f.write(data))
    path.chmod(0o644)  # a page to share, not a secret (the temporary file it was written as is private)
    return path
