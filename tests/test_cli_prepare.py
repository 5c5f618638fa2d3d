"""End to end: `facegan prepare` through the real CLI, and its bad input."""

import numpy as np
import pytest
from PIL import Image

from conftest import assert_clean_error
from facegan.data import load_dataset

pytestmark = pytest.mark.slow


def make_lfw_like(root, people=6, per_person=3):
    rng = np.random.default_rng(0)
    for p in range(people):
        folder = root / f"Person_{p}"
        folder.mkdir(parents=True)
        for i in range(per_person):
            pixels = rng.integers(0, 255, (60, 50, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"Person_{p}_{i:04d}.JPG")
    (root / "Person_0" / "broken.jpg").write_bytes(b"not a jpeg")


def test_prepare_writes_a_dataset_with_the_seeds_policy(cli, tmp_path):
    make_lfw_like(tmp_path / "lfw")
    proc = cli("prepare", tmp_path / "lfw", "--out", tmp_path / "faces.pt", "--size", 32, "--limit", 10, "--quiet")
    dataset = load_dataset(tmp_path / "faces.pt")
    assert dataset.images.shape == (10, 3, 32, 32)  # 6 people x at most 2, first 10 kept
    assert "wrote" in proc.stdout and dataset.digest[:12] in proc.stdout
    people = [f.split("/")[-2] for f in dataset.manifest["source_files"]]
    assert max(people.count(p) for p in set(people)) <= 2


def test_prepare_synthetic(cli, tmp_path):
    cli("prepare", "synthetic", "--out", tmp_path / "s.pt", "--size", 32, "--limit", 50)
    dataset = load_dataset(tmp_path / "s.pt")
    assert dataset.images.shape == (50, 3, 32, 32) and dataset.labels is not None


def test_bad_prepare_input_is_one_clear_error(cli, tmp_path):
    def check(args, message):
        assert_clean_error(cli("prepare", *map(str, args), "--quiet", check=False), message)

    out = tmp_path / "out.pt"
    check([tmp_path / "missing", "--out", out], r"missing")
    (tmp_path / "empty").mkdir()
    check([tmp_path / "empty", "--out", out], r"no images")
    corrupt = tmp_path / "corrupt" / "Someone"
    corrupt.mkdir(parents=True)
    (corrupt / "a.jpg").write_bytes(b"junk")
    (corrupt / "b.png").write_bytes(b"\x89PNG junk")
    check([tmp_path / "corrupt", "--out", out], r"(?i)unreadable|could not be read|no readable")
    make_lfw_like(tmp_path / "ok", people=2)
    check([tmp_path / "ok", "--out", out, "--crop", "1.5"], r"crop")
    check([tmp_path / "ok", "--out", out, "--size", "4"], r"size")
    assert not out.exists()
