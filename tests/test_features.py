"""Feature extractors: the random CNN, Inception weight loading (with weights the test makes), torch.export
programs and TorchScript."""

import doctest
import hashlib
import os
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evaluation import features
from evaluation.features import (
    FeatureExtractor,
    InceptionExtractor,
    RandomCNNExtractor,
    extractor_specs,
    get_extractor,
    register_extractor,
    resize_images,
)
from facegan.errors import FaceganError


def random_images(n, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)


def gradient_image(size=80):
    ramp = torch.linspace(0, 255, size)
    across, down = ramp[None, :].expand(size, size), ramp[:, None].expand(size, size)
    return torch.stack([across, down, 255 - across]).round().to(torch.uint8)[None]


# --- resizing and the registry ------------------------------------------------------------------


def test_resize_is_antialiased_bilinear_and_skips_matching_sizes():
    images = random_images(2, size=80).float()
    expected = F.interpolate(images, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(resize_images(images, 64), expected)
    assert resize_images(images, 80) is images


def test_specs_and_unknown_spec():
    assert extractor_specs() == ["dinov2", "export:PATH", "inception", "random", "torchscript:PATH"]
    with pytest.raises(FaceganError, match="dinov2, export:PATH, inception, random, torchscript:PATH"):
        get_extractor("vgg")


@pytest.mark.parametrize(
    "spec, kwargs, message",
    [
        ("random:3", {}, "takes no argument"),
        ("torchscript", {}, "needs an argument: torchscript:PATH"),
        ("export:", {}, "needs an argument: export:PATH"),
        ("random", {"inception_weights": "w.pth"}, "--inception-weights applies only"),
        ("random", {"device": "tpu:what"}, "invalid device"),
    ],
)
def test_get_extractor_rejects_bad_arguments(spec, kwargs, message):
    with pytest.raises(FaceganError, match=message):
        get_extractor(spec, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(FaceganError, match="CUDA is not available"):
        get_extractor("random", device="cuda")


def test_registry_checks_what_it_registers():
    with pytest.raises(ValueError, match="already registered"):
        register_extractor("random")(RandomCNNExtractor)
    with pytest.raises(TypeError, match="not a concrete FeatureExtractor"):
        register_extractor("plain")(dict)
    with pytest.raises(TypeError, match="not a concrete FeatureExtractor"):
        register_extractor("abstract")(FeatureExtractor)
    with pytest.raises(ValueError, match="lowercase name"):
        register_extractor("Bad Name")

    class NoDevice(RandomCNNExtractor):
        def __init__(self, *, seed: int = 0):
            super().__init__(seed=seed)

    with pytest.raises(TypeError, match="keyword-only 'device'"):
        register_extractor("nodevice")(NoDevice)
    with pytest.raises(TypeError, match="one positional argument"):
        register_extractor("needspath", argument="PATH")(RandomCNNExtractor)
    assert extractor_specs() == ["dinov2", "export:PATH", "inception", "random", "torchscript:PATH"]


# --- random ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_extractor():
    return get_extractor("random")


def test_random_features_are_fixed_across_machines(random_extractor):
    # Golden values: the weights come from numpy's frozen RandomState stream, so these hold on any
    # machine and torch version up to float32 rounding. If they change, the random feature space
    # changed: bump RandomCNNExtractor.ARCHITECTURE_VERSION (it invalidates cached real features).
    values = random_extractor.extract(gradient_image())[0]
    assert values.shape == (992,) and values.dtype == np.float64
    np.testing.assert_allclose(values[:3], GOLDEN_FIRST, rtol=1e-4)
    assert values.sum() == pytest.approx(GOLDEN_SUM, rel=1e-4)
    assert random_extractor.identity == "random-v2-seed0"


GOLDEN_FIRST = [0.6174779, 0.5608473, 0.3657555]
GOLDEN_SUM = 271.84164


def test_random_extractor_is_deterministic_and_seeded(random_extractor):
    images = random_images(6)
    again = RandomCNNExtractor().extract(images)
    np.testing.assert_array_equal(random_extractor.extract(images), again)
    other = RandomCNNExtractor(seed=1)
    assert not np.allclose(other.extract(images), again)
    assert other.identity != random_extractor.identity


def test_random_extractor_describes_itself(random_extractor):
    assert random_extractor.dim == 992 and random_extractor.input_size == 64
    assert random_extractor.comparable_to_published is False
    assert "not comparable with published FIDs" in random_extractor.note


def test_streamed_batches_give_the_same_features(random_extractor):
    images = random_images(10, size=80)
    whole = random_extractor.extract(images, batch_size=4)
    streamed = random_extractor.extract(iter([images[:3], images[3:9], images[9:]]), batch_size=2)
    np.testing.assert_allclose(streamed, whole, rtol=1e-5, atol=1e-6)
    assert whole.shape == (10, 992)


@pytest.mark.parametrize("size", [16, 64, 80])
def test_any_input_size_is_resized(random_extractor, size):
    assert random_extractor.extract(random_images(3, size=size)).shape == (3, 992)


def test_random_features_separate_colours(random_extractor):
    # Faces in two skin tones with pixel noise: each image's nearest neighbour has its tone.
    generator = torch.Generator().manual_seed(1)
    tones = torch.tensor([[200.0, 160.0, 130.0], [110.0, 70.0, 50.0]])
    noise = torch.randn(20, 3, 48, 48, generator=generator) * 30
    images = (tones.repeat_interleave(10, 0)[:, :, None, None] + noise).clamp(0, 255).to(torch.uint8)
    values = random_extractor.extract(images)
    distances = ((values[:, None] - values[None]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    labels = np.repeat([0, 1], 10)
    assert (labels[distances.argmin(1)] == labels).all()


def test_empty_input_gives_no_rows(random_extractor):
    assert random_extractor.extract(torch.zeros(0, 3, 8, 8, dtype=torch.uint8)).shape == (0, 992)
    assert random_extractor.extract([]).shape == (0, 992)


@pytest.mark.parametrize(
    "images",
    [
        torch.rand(2, 3, 8, 8),
        torch.zeros(2, 1, 8, 8, dtype=torch.uint8),
        [torch.zeros(2, 3, 8, 8, dtype=torch.uint8), np.zeros((2, 3, 8, 8), dtype=np.uint8)],
    ],
)
def test_wrong_images_are_clear_errors(random_extractor, images):
    with pytest.raises(FaceganError, match="uint8 tensors of shape N x 3 x H x W"):
        random_extractor.extract(images)


def test_progress_bar_goes_to_stderr(random_extractor, capsys):
    random_extractor.extract(random_images(4), progress=True)
    captured = capsys.readouterr()
    assert "features (random)" in captured.err and captured.out == ""


# --- inception ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """Two weight files in the FID Inception's state_dict format, from random initialisations."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class RandomInit(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None  # keep the random initialisation the constructor made

    directory = tmp_path_factory.mktemp("inception")
    empty = directory / "empty.pth"
    torch.save({}, empty)
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        network = RandomInit("inception", ["2048"], feature_extractor_weights_path=str(empty))
        for module in network.modules():
            if isinstance(module, torch.nn.Conv2d):  # He init keeps activations O(1) through 90 layers
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        path = directory / f"inception-{seed}.pth"
        torch.save(network.state_dict(), path)
        paths.append(path)
    return paths


# One image per forward pass: Inception at 299 x 299 costs seconds on a busy 2-core CPU.
PROBE = random_images(1, size=40, seed=3)


@pytest.fixture(scope="module")
def inception(inception_weights):
    return get_extractor("inception", inception_weights=inception_weights[0])


@pytest.fixture(scope="module")
def inception_features(inception):
    return inception.extract(PROBE)


def test_inception_loads_a_local_weights_file(inception, inception_features, inception_weights):
    assert inception_features.shape == (1, 2048) and inception_features.dtype == np.float64
    assert np.isfinite(inception_features).all() and inception_features.std() > 0
    other = InceptionExtractor(weights_path=inception_weights[1])
    assert not np.allclose(other.extract(PROBE), inception_features)
    assert other.identity != inception.identity
    assert inception.comparable_to_published and inception.input_size == 299


def test_inception_features_equal_torchmetrics_fid_features(inception_features, inception_weights):
    """A second network built from the same file gives the same features: deterministic, and FID-standard."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature_extractor_weights_path=str(inception_weights[0]))
    with torch.no_grad():
        expected = metric.inception(PROBE).double().numpy()
    np.testing.assert_allclose(inception_features, expected, rtol=1e-5, atol=1e-6)


def test_inception_weights_from_the_environment(inception_weights, monkeypatch):
    monkeypatch.setenv("FACEGAN_INCEPTION_WEIGHTS", str(inception_weights[1]))
    assert get_extractor("inception").weights_path == inception_weights[1]


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache, no weights in the environment and an unreachable download URL."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("FACEGAN_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(features, "INCEPTION_WEIGHTS_URL", "http://127.0.0.1:9/weights.pth")
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_inception_uses_weights_already_in_the_hub_cache(offline_hub, inception_weights):
    offline_hub.mkdir(parents=True)
    cached = offline_hub / "pt_inception-2015-12-05-6726825d.pth"
    os.symlink(inception_weights[0], cached)
    assert get_extractor("inception").weights_path == cached


def test_offline_without_weights_names_every_way_out(offline_hub):
    with pytest.raises(FaceganError) as error:
        get_extractor("inception")
    message = str(error.value)
    assert "--inception-weights FILE" in message
    assert "FACEGAN_INCEPTION_WEIGHTS" in message
    assert "--features random" in message


class Payload:
    """A pickled object: weights_only loading must refuse to build it."""


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not found"),
        (b"\x00garbage, not a torch file", "cannot read Inception weights"),
        ({"conv.weight": torch.zeros(3)}, "does not hold the FID Inception-v3 weights"),
        ({"note": "text"}, "not a state_dict of tensors"),
        (Payload(), "cannot read Inception weights"),
    ],
)
def test_bad_inception_weights_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(FaceganError, match=message):
        get_extractor("inception", inception_weights=path)


# --- torchscript ----------------------------------------------------------------------------------


class Probe(torch.nn.Module):
    """Reports what it was given: the image side, per-channel means and the maximum value."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        side = torch.full((n, 1), float(x.shape[-1]))
        return torch.cat([side, x.mean(dim=(2, 3)), x.amax(dim=(1, 2, 3)).unsqueeze(1)], 1).reshape(n, 1, 5)


class SizedProbe(Probe):
    def __init__(self, size: int):
        super().__init__()
        self.input_size = size


def save_script(module, path):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+.* is deprecated")  # torch 2.11+
        torch.jit.save(torch.jit.script(module), str(path))
    return path


def test_torchscript_network_with_input_size(tmp_path):
    path = save_script(SizedProbe(48), tmp_path / "probe.pt")
    extractor = get_extractor(f"torchscript:{path}")
    assert extractor.dim == 5 and extractor.input_size == 48
    assert extractor.name == f"torchscript:{path}" and not extractor.comparable_to_published
    values = extractor.extract(torch.full((3, 3, 20, 20), 255, dtype=torch.uint8))
    np.testing.assert_allclose(values, np.tile([48.0, 1.0, 1.0, 1.0, 1.0], (3, 1)), rtol=1e-6)


def test_torchscript_default_input_size(tmp_path):
    extractor = get_extractor(f"torchscript:{save_script(Probe(), tmp_path / 'probe.pt')}")
    assert extractor.input_size == 224
    assert extractor.extract(random_images(1))[0, 0] == 224.0


class Broken(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], 11, -1)  # 3 * 224 * 224 is not a multiple of 11


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda path: path, "not found"),
        (lambda path: path.write_text("not a model") and path, "not a TorchScript module"),
        (lambda path: save_script(Broken(), path), "the network failed"),
        (lambda path: save_script(SizedProbe(0), path), "input_size must be a positive int"),
    ],
)
def test_bad_torchscript_files_are_clear_errors(tmp_path, make, message):
    path = make(tmp_path / "net.pt")
    with pytest.raises(FaceganError, match=message):
        get_extractor(f"torchscript:{path}")


def test_torchscript_files_are_told_from_torch_export_programs(tmp_path):
    program = save_program(Probe(), tmp_path / "probe.pt2")
    with pytest.raises(FaceganError, match=r"is a torch.export program, not TorchScript; use the feature space export:"):
        get_extractor(f"torchscript:{program}")


# --- torch.export ---------------------------------------------------------------------------------

BATCH = torch.export.Dim("batch", min=1)


def save_program(module, path, *, side=40, dynamic_shapes=({0: BATCH},), extra_files=None):
    """``module`` in eval mode exported on a 2 x 3 x side x side example and saved with torch.export."""
    program = torch.export.export(module.eval(), (torch.zeros(2, 3, side, side),), dynamic_shapes=dynamic_shapes)
    torch.export.save(program, str(path), extra_files=extra_files)
    return path


class SmallNet(torch.nn.Module):
    """A conv net with batch norm (running statistics set) and a normalised output, as a user's embedding."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
        batch_norm = self.body[1]
        batch_norm.running_mean.uniform_(-0.5, 0.5)
        batch_norm.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.body((x - 0.5) * 4), dim=1)


class SideProbe(torch.nn.Module):
    """Probe for programs with a dynamic image size: the side as a tensor, not a Python float."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        return torch.cat([x.new_ones(n, 1) * x.shape[-1], x.mean(dim=(2, 3)), x.amax(dim=(1, 2, 3)).unsqueeze(1)], 1)


# An exported program runs the same aten kernels as the eager module: on the CPU the features were equal
# to the bit (max abs difference 0.0); 1e-6 leaves room for float32 rounding of another kernel choice.
EXPORT_ATOL = 1e-6


def test_exported_program_gives_the_eager_modules_features_at_any_batch_size(tmp_path):
    net = SmallNet().eval()
    path = save_program(net, tmp_path / "net.pt2", side=40, extra_files={"input_size": "40"})
    extractor = get_extractor(f"export:{path}")
    assert extractor.input_size == 40 and extractor.dim == 64 and not extractor.comparable_to_published
    images = random_images(13, size=80)
    with torch.inference_mode():
        eager = net(resize_images(images.float(), 40) / 255.0).double().numpy()
    for batch_size in (5, 13):  # batches of 5, 5, 3 and one of 13: the batch dimension is dynamic
        features = extractor.extract(images, batch_size=batch_size)
        assert features.shape == (13, 64)
        np.testing.assert_allclose(features, eager, rtol=0, atol=EXPORT_ATOL)
    assert extractor.extract(images[:1]).shape == (1, 64)


def test_exported_program_name_and_identity_follow_the_file(tmp_path):
    from evaluation.engine import space_label

    path = save_program(SmallNet(), tmp_path / "my net.pt2")
    extractor = get_extractor(f"export:{path}")
    assert extractor.name == f"export:{path}" and space_label(extractor) == "export-my_net"
    assert extractor.identity == f"export-{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    other = save_program(SmallNet().train(), tmp_path / "other.pt2")  # the same network in training mode
    assert get_extractor(f"export:{other}").identity != extractor.identity


def test_exported_program_input_size(tmp_path):
    dynamic = ({0: BATCH, 2: torch.export.Dim("height", min=2), 3: torch.export.Dim("width", min=2)},)
    cases = [
        (save_program(SideProbe(), tmp_path / "extra.pt2", dynamic_shapes=dynamic, extra_files={"input_size": "48"}), 48),
        (save_program(Probe(), tmp_path / "fixed-side.pt2", side=40), 40),  # the program's own fixed size
        (save_program(SideProbe(), tmp_path / "dynamic.pt2", dynamic_shapes=dynamic), 224),
    ]
    for path, size in cases:
        extractor = get_extractor(f"export:{path}")
        assert extractor.input_size == size
        values = extractor.extract(torch.full((3, 3, 20, 20), 255, dtype=torch.uint8))
        np.testing.assert_allclose(values, np.tile([size, 1.0, 1.0, 1.0, 1.0], (3, 1)), rtol=1e-6)


def truncated_program(path):
    save_program(SmallNet(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def damaged_program(path):
    """A complete archive whose program description is garbled."""
    save_program(SmallNet(), path)
    data = bytearray(path.read_bytes())
    start = data.index(b'"graph_module"')
    data[start:start + 64] = bytes(b ^ 0x55 for b in data[start:start + 64])
    path.write_bytes(bytes(data))
    return path


def torch_save_file(path):
    torch.save({"weight": torch.zeros(3)}, path)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda path: path, "torch.export program not found"),
        (truncated_program, r"is not a torch.export program \(a complete .pt2 archive written by torch.export.save\)"),
        (lambda path: path.write_text("not a model") and path, "is not a torch.export program"),
        (torch_save_file, "is not a torch.export program"),
        (damaged_program, r"cannot load the torch.export program .*: JSONDecodeError"),
        (lambda path: save_script(Probe(), path), "is a TorchScript module, not a torch.export program; use the "
                                                  "feature space torchscript:"),
        (lambda path: save_program(Probe(), path, dynamic_shapes=None), "fixed batch of 2 images; export it with a "
                                                                        "dynamic batch dimension"),
        (lambda path: save_program(Probe(), path, extra_files={"input_size": "big"}),
         "extra file input_size must hold a positive integer, got 'big'"),
        (lambda path: save_program(Probe(), path, side=32, extra_files={"input_size": "48"}),
         "the network failed on a 1 x 3 x 48 x 48 image"),
    ],
)
def test_bad_exported_programs_are_clear_errors(tmp_path, make, message):
    path = make(tmp_path / "net.pt2")
    with pytest.raises(FaceganError, match=message):
        get_extractor(f"export:{path}")


@pytest.mark.slow
def test_bad_network_files_are_one_error_line_from_the_cli(cli, tmp_path):
    from PIL import Image

    (tmp_path / "samples" / "1").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "samples" / "1" / "0.png")
    cases = [
        (f"export:{truncated_program(tmp_path / 'truncated.pt2')}", r"truncated.pt2 is not a torch.export program"),
        (f"export:{damaged_program(tmp_path / 'damaged.pt2')}", r"cannot load the torch.export program"),
        (f"export:{torch_save_file(tmp_path / 'weights.pt')}", r"weights.pt is not a torch.export program"),
    ]  # (the two formats naming each other: test_bad_exported_programs_are_clear_errors and above)
    for spec, message in cases:
        proc = cli("evaluate", "--samples", tmp_path / "samples", "--real", tmp_path / "samples", "--features", spec,
                   "--quiet", check=False)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
        assert re.search(message, lines[0]), lines[0]


def test_docstring_example_runs():
    assert doctest.testmod(features).failed == 0


def test_random_extractor_pooling_equals_torch_std_mean():
    # The extractor writes its per-channel pooling out for speed; torch's own reduction is the reference.
    from evaluation.features import _spatial_std_mean

    x = torch.randn(5, 7, 6, 6).contiguous(memory_format=torch.channels_last)
    std, mean = _spatial_std_mean(x)
    expected_std, expected_mean = torch.std_mean(x, dim=(2, 3))
    torch.testing.assert_close(mean, expected_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(std, expected_std, rtol=1e-6, atol=1e-6)


# --- dinov2 ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dinov2_loads_a_weights_file_and_gives_the_networks_class_token(tmp_path, monkeypatch):
    import timm
    import torch.nn.functional as F
    from safetensors.torch import save_file

    from evaluation.features import DINOV2_MODEL, DinoV2Extractor

    torch.manual_seed(0)
    network = timm.create_model(DINOV2_MODEL, pretrained=False, img_size=224, num_classes=0).eval()
    weights = tmp_path / "dinov2.safetensors"
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(weights))
    extractor = get_extractor("dinov2", dinov2_weights=weights)
    assert isinstance(extractor, DinoV2Extractor) and extractor.dim == 768 and not extractor.comparable_to_published
    images = random_images(3, size=80)
    # The reference: the same network on images resized and normalised by hand (ImageNet statistics).
    x = F.interpolate(images.float() / 255, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = network(x).double().numpy()
    np.testing.assert_allclose(extractor.extract(images), expected, rtol=1e-4, atol=1e-5)
    # The environment variable names the file as well; the identity follows the file's bytes.
    monkeypatch.setenv("FACEGAN_DINOV2_WEIGHTS", str(weights))
    assert get_extractor("dinov2").identity == extractor.identity

    # Published weights sit on a 518 x 518 grid: they load, their position embeddings resampled to 224.
    published = timm.create_model(DINOV2_MODEL, pretrained=False, num_classes=0)
    big = tmp_path / "dinov2-518.safetensors"
    save_file({k: v.contiguous() for k, v in published.state_dict().items()}, str(big))
    assert get_extractor("dinov2", dinov2_weights=big).extract(images).shape == (3, 768)


def test_dinov2_errors_name_the_options(tmp_path, monkeypatch):
    import socket

    monkeypatch.delenv("FACEGAN_DINOV2_WEIGHTS", raising=False)
    with pytest.raises(FaceganError, match="DINOv2 weights file not found"):
        get_extractor("dinov2", dinov2_weights=tmp_path / "missing.safetensors")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    with pytest.raises(FaceganError, match="does not hold the DINOv2 ViT-B/14 weights"):
        get_extractor("dinov2", dinov2_weights=foreign)
    with pytest.raises(FaceganError, match="--dinov2-weights applies only to --features dinov2"):
        get_extractor("random", dinov2_weights=foreign)
    # No file, nothing cached, no network: one clear error at once, naming the offline options.
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def unreachable(*args, **kwargs):
        raise OSError("no route to host")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(FaceganError, match="--dinov2-weights FILE or the environment variable FACEGAN_DINOV2_WEIGHTS"):
        get_extractor("dinov2")
