"""The evidence page: its groups and copies against independent references, and the page itself
in a real headless Chromium (Debian's `chromium`, driven by Playwright; never a browser of its own)."""

import re
import shutil

import numpy as np
import pytest
import torch
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import cdist, pdist, squareform

from evaluation.engine import RealImages, Scorer, evaluate
from evaluation.features import get_extractor
from evaluation.report import (
    check_report_dir, closest_copies, copy_ratio, evaluation_page, near_identical_groups, write_page,
)
from evaluation.sources import ImagesCheckpoint
from facegan.errors import FaceganError
from facegan.synthetic import synthetic_faces

CHROMIUM_FLAGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]


def test_groups_are_scipys_connected_components_of_close_pairs():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 12)) * 10
    sizes = [9, 4, 4, 2, 1]
    planted = np.concatenate([c + rng.normal(scale=0.01, size=(n, 12)) for c, n in zip(centres, sizes)])
    features = np.concatenate([planted, rng.normal(size=(40, 12)) * 10])[rng.permutation(len(planted) + 40)]
    threshold = 0.5
    # small blocks, so the block-by-block search crosses block boundaries
    groups = near_identical_groups(features, threshold, block_rows=7)

    close = squareform(pdist(features)) < threshold
    np.fill_diagonal(close, False)
    _, labels = connected_components(close, directed=False)
    expected = [np.flatnonzero(labels == k) for k in np.unique(labels) if (labels == k).sum() >= 2]
    assert sorted(map(tuple, groups)) == sorted(map(tuple, expected))
    assert [len(g) for g in groups] == sorted((len(g) for g in expected), reverse=True)
    assert [len(g) for g in groups][:4] == [9, 4, 4, 2]  # the planted groups, largest first
    assert near_identical_groups(rng.normal(size=(30, 4)) * 100, 1e-3) == []


def test_copies_are_paired_with_their_training_image():
    rng = np.random.default_rng(1)
    training = rng.normal(size=(200, 16))
    copied = np.array([17, 3, 150, 99])
    copies = training[copied] + rng.normal(scale=1e-3, size=(4, 16))
    samples = np.concatenate([rng.normal(size=(30, 16)), copies])
    pairs = closest_copies(samples, training, count=6)

    distances = cdist(samples, training)
    nearest = np.sort(distances, axis=1)
    ratio = nearest[:, 0] / nearest[:, 1]
    assert {p.sample for p in pairs[:4]} == {30, 31, 32, 33}
    for pair in pairs:
        assert pair.training == int(np.argmin(distances[pair.sample]))
        assert pair.first == pytest.approx(nearest[pair.sample, 0], rel=1e-9)
        assert pair.ratio == pytest.approx(ratio[pair.sample], rel=1e-9)
    assert {p.training for p in pairs[:4]} == set(copied.tolist())
    assert all(p.ratio < copy_ratio() for p in pairs[:4]) and all(p.ratio > copy_ratio() for p in pairs[4:])
    assert [p.ratio for p in pairs] == sorted(p.ratio for p in pairs)
    # a training image copied many times is shown once while others are left
    again = closest_copies(np.concatenate([np.repeat(copies[:1], 5, axis=0), copies[1:2]]), training, count=2)
    assert sorted(p.training for p in again) == [3, 17]
    # and samples that all lie nearest one training image still fill the rows
    assert [p.training for p in closest_copies(np.repeat(copies[:1], 5, axis=0), training, count=3)] == [17] * 3


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """An evaluation of in-memory checkpoints: good ones, then copies of half the training faces,
    then a collapse to 4 faces; its evidence page on disk."""
    import os

    root = tmp_path_factory.mktemp("report")
    os.environ["FACEGAN_CACHE_DIR"] = str(root / "cache")
    try:
        real = synthetic_faces(200, 32, seed=0).images
        checkpoints = [ImagesCheckpoint(10 * e, synthetic_faces(120, 32, seed=100 + e).images) for e in range(1, 5)]
        copies = torch.cat([real[:60], synthetic_faces(60, 32, seed=150).images])
        checkpoints.append(ImagesCheckpoint(50, copies))
        few = synthetic_faces(4, 32, seed=160).images
        checkpoints += [ImagesCheckpoint(e, few.repeat(30, 1, 1, 1)) for e in (60, 70)]
        scorer = Scorer(get_extractor("random"), RealImages(real, "report-test"), 120)
        evaluation = evaluate(checkpoints, scorer)
        text = evaluation_page(evaluation, checkpoints, scorer, title="planted")
    finally:
        del os.environ["FACEGAN_CACHE_DIR"]
    return evaluation, write_page(text, root / "random_report.html"), text


def test_page_shows_the_planted_collapse_and_copies(page):
    evaluation, path, text = page
    assert evaluation.collapse.onset_epoch == 60 and evaluation.best_epoch in (10, 20, 30, 40)
    assert 50 in evaluation.memorisation.memorised_epochs
    assert evaluation.choice.reason in text
    assert "Near-identical samples: epoch 60 (collapse onset)" in text
    assert "120 of 120 samples (100.0%) lie in 4 groups" in text
    assert "Closest to the training set: epoch 50" in text
    assert f"Closest to the training set: epoch {evaluation.best_epoch} (chosen)" in text
    # the copies at epoch 50 are paired with the training faces they are
    assert len(re.findall(r"ratio 0\.00 <span class=\"badge\">copy</span>", text)) >= 8
    assert not re.search(r"(src|href)=\"(?!data:image/png;base64,)", text), "only embedded images, no addresses"
    assert "<script" not in text
    assert path.stat().st_size < 2_000_000


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("no Chromium found on PATH: install Debian's browser with `apt-get install -y chromium`")
    return path


def test_page_in_headless_chromium(page, tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Python package playwright is missing: pip install -e '.[dev]' (never `playwright install`)")
    _, path, _ = page
    errors, requests = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 1800})
        tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: errors.append(str(e)))
        tab.on("request", lambda r: requests.append(r.url))
        tab.goto(path.as_uri(), wait_until="load")
        images = tab.eval_on_selector_all(
            "img", "all => all.map(i => ({ok: i.complete && i.naturalWidth > 0, w: i.getBoundingClientRect().width}))")
        grids = tab.eval_on_selector_all(".grids figure", "all => all.map(f => f.getBoundingClientRect().toJSON())")
        overflow = tab.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
        tab.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert errors == []
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert len(images) >= 1 + 4 + 4 + 16 and all(i["ok"] for i in images)
    assert all(i["w"] >= 60 for i in images)  # enlarged enough to see
    # the chosen, the copying onset, the collapse onset and the last: side by side in one row
    assert len(grids) == 4
    assert len({round(g["top"]) for g in grids}) == 1 and grids == sorted(grids, key=lambda g: g["left"])
    assert overflow <= 0  # nothing wider than the window


def test_report_dir_is_checked_before_anything_runs(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(FaceganError, match="is a file, not a folder"):
        check_report_dir(tmp_path / "a-file")
    with pytest.raises(FaceganError, match="cannot write there"):
        check_report_dir(tmp_path / "a-file" / "below")
    assert check_report_dir(tmp_path / "new" / "pages").is_dir()


def test_page_size_benchmark_measures_a_page_with_every_section(tmp_path, monkeypatch, capsys):
    from experiments import page_size

    monkeypatch.setenv("FACEGAN_CACHE_DIR", str(tmp_path / "cache"))
    text = page_size.planted_page(32, 60, 120)
    # every section: the chosen (40), copying-onset (60), collapse-onset (70) and last (80) grids,
    # the groups at the collapse, the copies beside their training twins
    assert re.findall(r'alt="samples of epoch (\d+)"', text) == ["40", "60", "70", "80"]
    assert "Near-identical samples: epoch 70 (collapse onset)" in text
    assert "Closest to the training set: epoch 60 (copies training images)" in text
    [row] = page_size.main(["--sizes", "32", "--samples", "60", "--real", "120"])
    images = re.findall(r'src="data:image/png;base64,([^"]*)"', text)
    assert row["images"] == len(images) and row["page_kb"] == round(len(text.encode()) / 1024)
    assert f"32 px: page {row['page_kb']} KB, {row['images']} embedded PNGs" in capsys.readouterr().out
