"""`facegan generate`: latents, output files, repeatability, bad input, and registry models."""

import math
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torchvision.utils import make_grid

from conftest import TINY_TRAIN, assert_clean_error, run_id_of
from facegan.checkpoint import save_checkpoint
from facegan.cli import main
from facegan.common import enlarge_grid
from facegan.generate import load_model, render, sample_latents
from facegan.models import Generator, NetworkConfig


def save_tiny_checkpoint(path, *, seed=0):
    """A 32x32 generator with a 16-d latent and random weights, saved as a facegan checkpoint.

    Its convolution weights are drawn with std 0.2: with DCGAN's 0.02 a random generator this
    narrow draws flat grey (pixel std below 1 of 255), and every face would look the same.
    """
    torch.manual_seed(seed)
    generator = Generator(image_size=32, latent_dim=16, width=8)
    for layer in generator.modules():
        if isinstance(layer, torch.nn.ConvTranspose2d):
            torch.nn.init.normal_(layer.weight, 0.0, 0.2)
    network = NetworkConfig(image_size=32, latent_dim=16, g_width=8)
    save_checkpoint({"kind": "generator", "epoch": 1, "network": network.to_dict(), "config": {},
                     "dataset": {}, "generator": generator.state_dict()}, path)
    return path


@pytest.fixture
def checkpoint(tmp_path):
    return save_tiny_checkpoint(tmp_path / "tiny.pt")


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def run_in_process(*args):
    """The click command in this process: for argument checks, without a second torch import."""
    return CliRunner().invoke(main, [str(a) for a in args])


def test_sample_latents_repeat_per_seed_and_truncate_by_resampling():
    full = sample_latents(500, 16, seed=3)
    assert torch.equal(full, sample_latents(500, 16, seed=3))
    assert not torch.equal(full, sample_latents(500, 16, seed=4))
    truncated = sample_latents(500, 16, seed=3, truncation=0.5)
    assert truncated.abs().max() <= 0.5
    inside = full.abs() <= 0.5
    # Values already within T stay; only those beyond it are drawn again.
    assert torch.equal(truncated[inside], full[inside])
    # Redrawn values follow the normal distribution restricted to [-T, T]: for T = 0.5 their
    # mean |z| is 0.2449 (computed from the truncated normal density), not T or a clipped 0.5.
    redrawn = truncated[~inside].abs().double()
    expected = (1 - math.exp(-0.125)) * math.sqrt(2 / math.pi) / math.erf(0.5 / math.sqrt(2))
    assert abs(redrawn.mean().item() - expected) < 0.01


def test_generate_writes_numbered_pngs_and_a_grid(cli, checkpoint, tmp_path):
    proc = cli("generate", "--model", checkpoint, "-n", 5, "--out", tmp_path / "a", "--seed", 1)
    assert "seed 1" in proc.stdout
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == [f"{i:06d}.png" for i in range(5)] + ["grid.png"]
    assert {pixels(tmp_path / "a" / f).shape for f in files[:5]} == {(32, 32, 3)}
    # torchvision's grid of the PNGs (3 columns and 2 rows of 32 px, 2 px padding around each
    # cell: 104 x 70 px), each pixel repeated 5 times (nearest neighbour): the smallest whole
    # enlargement to at least 512 px wide, as training's sample grids.
    cells = torch.from_numpy(np.stack([pixels(tmp_path / "a" / f) for f in files[:5]])).permute(0, 3, 1, 2)
    small = make_grid(cells, nrow=3, padding=2).permute(1, 2, 0).numpy()
    assert small.shape == (70, 104, 3)
    enlarged = np.asarray(Image.fromarray(small).resize((5 * 104, 5 * 70), Image.Resampling.NEAREST))
    assert np.array_equal(pixels(tmp_path / "a" / "grid.png"), enlarged)

    # The images are the generator's output for sample_latents(seed) (truncation included).
    model = load_model(str(checkpoint))
    expected = render(model.generator, sample_latents(5, 16, seed=1))
    assert np.array_equal(np.stack([pixels(tmp_path / "a" / f) for f in files[:5]]), expected)

    # The rest in this process: a second torch import per call would take seconds.
    for out, extra in (("b", ["--seed", 1]), ("c", ["--seed", 2]), ("t", ["--seed", 1, "--truncation", 0.3])):
        assert run_in_process("generate", "--model", checkpoint, "-n", 5, "--out", tmp_path / out, *extra).exit_code == 0
    same = [(tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files]
    assert all(same)
    assert (tmp_path / "a" / "000000.png").read_bytes() != (tmp_path / "c" / "000000.png").read_bytes()
    truncated = render(model.generator, sample_latents(5, 16, seed=1, truncation=0.3))
    assert np.array_equal(np.stack([pixels(tmp_path / "t" / f) for f in files[:5]]), truncated)
    assert not np.array_equal(truncated, expected)


def test_grids_wide_enough_are_kept_as_they_are():
    wide = np.arange(512 * 600 * 3, dtype=np.int64).astype(np.uint8).reshape(512, 600, 3)
    assert enlarge_grid(wide) is wide
    narrow = wide[:100, :171]  # 171 px: three times is 513, the first whole factor reaching 512
    assert np.array_equal(enlarge_grid(narrow), np.kron(narrow, np.ones((3, 3, 1), dtype=np.uint8)))


def test_generate_never_overwrites_files_silently(checkpoint, tmp_path):
    out = tmp_path / "out"
    assert run_in_process("generate", "--model", checkpoint, "-n", 3, "--out", out, "--seed", 0).exit_code == 0
    (out / "notes.txt").write_text("mine")
    result = run_in_process("generate", "--model", checkpoint, "-n", 1, "--out", out)
    assert result.exit_code == 1 and "is not empty" in result.output and "--force" in result.output
    assert len(list(out.glob("*.png"))) == 4
    # --force replaces our own images (none left over from the larger run) and keeps the rest.
    assert run_in_process("generate", "--model", checkpoint, "-n", 1, "--out", out, "--force").exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "grid.png", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "args, message",
    [
        (["-n", "0"], r"Invalid value for '-n'"),
        (["--truncation", "0"], r"Invalid value for '--truncation': must be a positive number, got 0"),
        (["--truncation", "nan"], r"Invalid value for '--truncation': must be a positive number, got nan"),
        (["--model", "missing.pt"], r"checkpoint not found: missing.pt"),
        (["--model", "{damaged}"], r"not a readable facegan checkpoint"),
        (["--model", "models:/nope@best", "--tracking-uri", "{store}"], r"cannot load model models:/nope@best"),
    ],
)
def test_bad_generate_arguments_are_one_clear_error(checkpoint, tmp_path, tracking_uri, args, message):
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(checkpoint.read_bytes()[:300])
    args = [a.format(damaged=damaged, store=tracking_uri) for a in args]
    if "--model" not in args:
        args += ["--model", str(checkpoint)]
    result = run_in_process("generate", "--out", tmp_path / "out", *args)
    # Exit 1 for facegan's errors, 2 for click's usage errors; any other exception is a bug.
    assert result.exit_code in (1, 2) and isinstance(result.exception, SystemExit), result.output
    assert re.search(message, result.output), result.output
    assert not (tmp_path / "out").exists()


def test_default_model_without_a_store_says_what_to_do(cli, tmp_path):
    proc = cli("generate", "--out", "out", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", check=False)
    assert_clean_error(proc, r"models:/facegan-generator@best.*run `facegan evaluate`.*or pass --model")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_generate_from_a_run_and_from_the_registry(tracking_uri, tmp_path):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    # The real commands and a real sqlite store, run in this process to save two interpreter
    # starts (torch and mlflow imports take seconds each on a busy machine).
    result = run_in_process("train", *TINY_TRAIN, "--epochs", 1, "--experiment", "generate", "--tracking-uri", tracking_uri)
    assert result.exit_code == 0, result.output
    run_id = run_id_of(result)
    result = run_in_process("generate", "--model", f"runs:/{run_id}", "-n", 2, "--out", tmp_path / "from-run",
                            "--seed", 5, "--tracking-uri", tracking_uri)
    assert result.exit_code == 0, result.output

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    (model,) = client.search_logged_models(filter_string=f"source_run_id = '{run_id}'",
                                           experiment_ids=[client.get_run(run_id).info.experiment_id])
    try:
        client.create_registered_model("facegan-generator")
    except MlflowException:
        pass  # registered by another test of this session's store
    version = client.create_model_version("facegan-generator", source=f"models:/{model.model_id}",
                                          run_id=run_id, model_id=model.model_id)
    client.set_registered_model_alias("facegan-generator", "best", version.version)
    # No --model: the default is models:/facegan-generator@best.
    result = run_in_process("generate", "-n", 2, "--out", tmp_path / "from-registry", "--seed", 5,
                            "--tracking-uri", tracking_uri)
    assert "models:/facegan-generator@best (epoch 1, 32x32 px" in result.output
    for name in ("000000.png", "000001.png", "grid.png"):
        assert (tmp_path / "from-run" / name).read_bytes() == (tmp_path / "from-registry" / name).read_bytes()
