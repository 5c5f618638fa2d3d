"""The helpers both packages share (facegan.common)."""

import hashlib

import numpy as np
import pytest
import torch

from facegan.common import atomic_write, error_text, file_sha256, images_to_grid, select_device, to_uint8
from facegan.errors import FaceganError


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    assert atomic_write(target, lambda f: f.write(b"first")) == target  # the folder is created
    assert target.read_bytes() == b"first"

    def crash(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]  # no temporary file left


def test_file_sha256(tmp_path):
    data = np.random.default_rng(0).bytes(3 << 20)  # several read blocks
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_error_text_is_the_first_line():
    assert error_text(RuntimeError("Error(s) in loading state_dict:\n\tMissing key(s)")) == "Error(s) in loading state_dict:"
    assert error_text(EOFError()) == "EOFError"
    assert error_text(ValueError("bad\nmore"), with_type=True) == "ValueError: bad"
    assert error_text(EOFError(), with_type=True) == "EOFError"


def test_select_device():
    assert select_device("cpu") == select_device(torch.device("cpu")) == torch.device("cpu")
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(FaceganError, match="invalid device 'tpu'"):
        select_device("tpu")


def test_grids_of_floats_and_of_their_bytes_agree():
    images = torch.rand(5, 3, 8, 8) * 2.4 - 1.2  # beyond [-1, 1]: clamped
    grid = images_to_grid(images)
    assert grid.shape == (2 * 10 + 2, 3 * 10 + 2, 3) and grid.dtype == np.uint8
    assert np.array_equal(grid, images_to_grid(to_uint8(images)))
    assert np.array_equal(grid[2:10, 2:10], to_uint8(images)[0].permute(1, 2, 0).numpy())
