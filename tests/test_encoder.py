"""The self-supervised encoder: its loss against a direct reference, its views, its torch.export
program (and TorchScript file) as a feature space, and the `facegan encoder` command."""

import json
import math
import warnings

import numpy as np
import pytest
import torch

from evaluation.encoder import (
    JITTER_BRIGHTNESS, JITTER_GAIN, EncoderSettings, nt_xent, random_views, save_encoder, train_encoder,
)
from evaluation.features import get_extractor
from facegan.synthetic import synthetic_faces
from facegan.errors import FaceganError

from conftest import assert_clean_error


def test_nt_xent_matches_a_direct_computation():
    torch.manual_seed(0)
    a, b = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    t = 0.5
    z = np.concatenate([a.numpy(), b.numpy()])
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = 3
    losses = []
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        others = [math.exp(z[i] @ z[k] / t) for k in range(2 * n) if k != i]
        losses.append(-math.log(math.exp(z[i] @ z[partner] / t) / sum(others)))
    assert nt_xent(a, b, t).item() == pytest.approx(np.mean(losses), rel=1e-10)


def test_views_keep_shape_and_range_and_differ_per_image():
    images = torch.rand(6, 3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    a, b = random_views(images, gen), random_views(images, gen)
    assert a.shape == images.shape
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.allclose(a, b)


def test_views_jitter_colours_only_within_bounds():
    # A uniform image stays uniform under any crop, shift or mirror, and contrast leaves a
    # uniform image alone; only the gain and brightness jitter move each channel, within bounds.
    value = 0.4
    flat = torch.full((200, 3, 32, 32), value)
    views = random_views(flat, torch.Generator().manual_seed(1))
    per_channel = views.mean(dim=(2, 3))
    torch.testing.assert_close(views, per_channel[:, :, None, None].expand_as(views))
    bound = value * JITTER_GAIN + JITTER_BRIGHTNESS
    assert (per_channel - value).abs().max() <= bound + 1e-6
    # the jitter is really there, and differs between channels (a gain per channel)
    assert (per_channel - value).abs().max() > bound / 2
    assert (per_channel[:, 0] - per_channel[:, 1]).abs().max() > 0.05


@pytest.fixture(scope="module")
def trained():
    faces = synthetic_faces(64, 32, seed=0).images
    return faces, train_encoder(faces, EncoderSettings(epochs=2, batch_size=32, width=8), progress=False)


# The exported program runs the eager module's own kernels: features equal to the bit on the CPU (max abs
# difference 0.0); 1e-6 leaves room for float32 rounding. TorchScript's fused graph is looser (1e-4).
EXPORT_ATOL = 1e-6


def test_trained_encoder_is_a_torch_export_feature_space(trained, tmp_path):
    faces, encoder = trained
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = save_encoder(encoder, tmp_path / "enc.pt2")
        extractor = get_extractor(f"export:{path}")
        features = extractor.extract(faces[:10])
    assert not [w for w in caught if "deprecated" in str(w.message)], [str(w.message) for w in caught]
    assert extractor.input_size == 32 and extractor.dim == 4 * 64  # 8·width channels, 2 x 2 cells
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
    # the program gives what the module gives (inputs 0..1), at several batch sizes ...
    with torch.inference_mode():
        direct = encoder(faces.float() / 255).double().numpy()
    np.testing.assert_allclose(features, direct[:10], rtol=0, atol=EXPORT_ATOL)
    for batch_size in (7, 64):
        np.testing.assert_allclose(extractor.extract(faces, batch_size=batch_size), direct, rtol=0, atol=EXPORT_ATOL)
    # ... and 80 px images are resized to the 32 its input_size extra file names
    big = synthetic_faces(4, 80, seed=1).images
    assert extractor.extract(big).shape == (4, 256)
    extra = {"input_size": None}
    torch.export.load(str(path), extra_files=extra)
    assert extra == {"input_size": "32"}


def test_trained_encoder_as_torchscript_still_works(trained, tmp_path):
    faces, encoder = trained
    path = save_encoder(encoder, tmp_path / "enc.pt")  # a .pt name: TorchScript, as before
    extractor = get_extractor(f"torchscript:{path}")
    assert extractor.input_size == 32 and extractor.dim == 4 * 64
    with torch.inference_mode():
        direct = encoder(faces[:10].float() / 255).double().numpy()
    np.testing.assert_allclose(extractor.extract(faces[:10]), direct, atol=1e-4)
    assert extractor.extract(synthetic_faces(4, 80, seed=1).images).shape == (4, 256)


def test_training_is_deterministic_and_validates_input():
    faces = synthetic_faces(32, 32, seed=0).images
    settings = EncoderSettings(epochs=1, batch_size=16, width=8)
    a, b = train_encoder(faces, settings, progress=False), train_encoder(faces, settings, progress=False)
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(p, q)
    with pytest.raises(FaceganError, match="uint8"):
        train_encoder(faces.float(), settings, progress=False)
    with pytest.raises(FaceganError, match="epochs"):
        train_encoder(faces, EncoderSettings(epochs=0), progress=False)


def test_cli_trains_writes_and_refuses_to_overwrite(cli, tmp_path):
    args = ["encoder", "--num-images", "32", "--image-size", "32", "--epochs", "1", "--out", "enc.pt2", "--quiet"]
    proc = cli(*args)
    assert proc.stdout.strip().splitlines()[-1] == "encoder: enc.pt2"
    assert "--features export:enc.pt2" in proc.stderr
    assert "deprecated" not in proc.stderr, proc.stderr  # no TorchScript on the default path
    written = (tmp_path / "enc.pt2").read_bytes()
    assert get_extractor(f"export:{tmp_path / 'enc.pt2'}").dim == 1024

    again = cli(*args, check=False)
    assert_clean_error(again, r"enc.pt2 exists; pass --force")
    assert (tmp_path / "enc.pt2").read_bytes() == written  # nothing lost

    legacy = cli(*args[:-3], "--out", "enc.pt", "--quiet")  # a .pt name still writes TorchScript
    assert "--features torchscript:enc.pt" in legacy.stderr
    assert get_extractor(f"torchscript:{tmp_path / 'enc.pt'}").dim == 1024

    missing = cli("encoder", "--data", "no-such.pt", "--out", "other.pt", "--quiet", check=False)
    assert_clean_error(missing, r"no-such.pt")
    assert not (tmp_path / "other.pt").exists()


def test_cli_default_epochs_are_the_encoders_default(cli):
    # The CLI spells the number out to keep torch out of `--help`; it must not drift from the code's.
    proc = cli("encoder", "--help")
    assert f"[default: {EncoderSettings().epochs};" in " ".join(proc.stdout.split())


@pytest.mark.slow
def test_cli_encoder_then_evaluate_with_the_program(cli, tmp_path):
    from PIL import Image

    def write_folder(folder, images):
        folder.mkdir(parents=True)
        for i, image in enumerate(images.numpy()):
            Image.fromarray(np.transpose(image, (1, 2, 0))).save(folder / f"{i}.png")

    write_folder(tmp_path / "real", synthetic_faces(150, 32, seed=0).images)
    write_folder(tmp_path / "samples" / "1", synthetic_faces(150, 32, seed=1).images)
    write_folder(tmp_path / "samples" / "2", synthetic_faces(4, 32, seed=2).images.repeat(38, 1, 1, 1)[:150])
    cli("encoder", "--num-images", "32", "--image-size", "32", "--epochs", "1", "--out", "enc.pt2", "--quiet")
    proc = cli("evaluate", "--samples", "samples", "--real", "real", "--features", "export:enc.pt2",
               "--json", "out.json", "--quiet", env={"FACEGAN_CACHE_DIR": str(tmp_path / "cache")})
    assert "deprecated" not in proc.stderr, proc.stderr
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["features"] == "export-enc"
    scores = {c["epoch"]: c for c in result["checkpoints"]}
    assert set(scores) == {1, 2}
    assert scores[2]["duplicate_share"] > 0.9 > scores[1]["duplicate_share"]  # four faces repeated
    assert scores[1]["fid"] < scores[2]["fid"]
