"""Generator checkpoints made by other code (facegan.imported): the tutorial's run as it lies on
disk, pytorch/examples' DCGAN, a factory, torch.export programs, and files that are none of them.

The tutorial's classes and save functions are re-implemented here as the tutorial writes them
(its code blocks, not facegan's code), so the fixtures are files the tutorial itself would leave.
"""

from __future__ import annotations

import base64
import doctest
import gzip
import importlib
import io
import pickle
import re
import sys
import textwrap
from functools import lru_cache

import numpy
import pytest
import torch
from PIL import Image
from torch import nn

from evaluation.engine import Scorer, evaluate, generator_batches
from evaluation.features import get_extractor
from facegan.checkpoint import load_generator, save_checkpoint
from facegan.common import to_uint8
from facegan.data import save_dataset
from facegan.errors import FaceganError
from facegan.scoring import load_real, real_images
from facegan.generate import load_model, render, sample_latents
from facegan.imported import (
    GeneratorSpec,
    checkpoint_sources,
    find_checkpoint_files,
    load_generator_file,
    load_tutorial_data,
    parse_latent_shape,
    parse_output_range,
)
from facegan.models import Generator
from facegan.pyfunc import _load_pyfunc
from facegan.synthetic import synthetic_faces

# The tutorial's image_to_tensor wraps a read-only numpy array (torch warns); it is its code, as it is.
pytestmark = pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")

# ----------------------------------------------------------------------------------------------
# The tutorial's code, as it is written there (gan.py), less what these tests do not use.

IMAGE_SIZE = (80, 80)
MODEL_TYPE = "WGAN-GP"


class GenerationModel(nn.Module):
    EmbeddedSize = 128

    def __init__(self):
        super().__init__()
        self.generator = nn.Sequential(
            nn.ConvTranspose2d(128, 512, kernel_size=5, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(512),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(512, 256, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(256, 128, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(128, 64, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(64, 3, kernel_size=4, stride=2, padding=1, bias=False),
            nn.Tanh())

    def forward(self, x):
        y = self.generator(x.view(x.shape[0], x.shape[1], 1, 1))
        return y


class DiscriminationModel(nn.Module):
    def __init__(self):
        super().__init__()

        def norm2d(features):
            if MODEL_TYPE == "WGAN-GP":
                return nn.InstanceNorm2d(features, affine=True)
            return nn.BatchNorm2d(features)
        self.discriminator = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=4, stride=2, padding=1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(64, 128, kernel_size=4, stride=2, padding=1, bias=False),
            norm2d(128),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(128, 256, kernel_size=4, stride=2, padding=1, bias=False),
            norm2d(256),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(256, 512, kernel_size=4, stride=2, padding=1, bias=False),
            norm2d(512),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(512, 1, kernel_size=5, stride=1, padding=0, bias=False),
            nn.Flatten())

    def forward(self, x):
        y = self.discriminator(x)
        return y


def save_tensor(tensor, path):
    torch.save(tensor, gzip.GzipFile(path, "wb"))


@lru_cache(maxsize=200)
def load_tensor(path):
    return torch.load(gzip.GzipFile(path, "rb"))


def image_to_tensor(img):
    img = img.resize(IMAGE_SIZE)
    arr = numpy.asarray(img)
    t = torch.from_numpy(arr)
    t = t.transpose(0, 2)
    t = (t / 255.0) * 2 - 1
    return t


def tensor_to_image(t):
    t = (t + 1) / 2 * 255.0
    t = t.transpose(0, 2)
    t = t.int()
    img = Image.fromarray(t.numpy().astype("uint8"), "RGB")
    return img


def prepare_batches(images, data_dir):
    """The tutorial's prepare() from its list of cropped images on: batches of 200 as data/N.pt."""
    data_dir.mkdir(exist_ok=True)
    for batch, index in enumerate(range(0, len(images), 200)):
        tensors = [image_to_tensor(img) for img in images[index:index + 200]]
        tensor = torch.stack(tensors)
        save_tensor(tensor, str(data_dir / f"{batch}.pt"))


def save_tutorial_checkpoints(model_g, model_d, epoch, run_dir):
    """The tutorial's saving at the end of an epoch ((epoch + 1) % 100 == 0), into run_dir."""
    save_tensor(model_g.state_dict(), str(run_dir / "model.generation.pt"))
    save_tensor(model_d.state_dict(), str(run_dir / "model.discrimination.pt"))
    save_tensor(model_g.state_dict(), str(run_dir / f"model.generation.epoch_{epoch}.pt"))
    save_tensor(model_d.state_dict(), str(run_dir / f"model.discrimination.epoch_{epoch}.pt"))


# ----------------------------------------------------------------------------------------------
# pytorch/examples' DCGAN (dcgan/main.py): its Generator, with nz, ngf, nc as main.py's globals.

DCGAN_SOURCE = textwrap.dedent('''
    import torch.nn as nn

    nz, ngf, nc = 100, {ngf}, {nc}


    class Generator(nn.Module):
        def __init__(self, ngpu):
            super(Generator, self).__init__()
            self.ngpu = ngpu
            self.main = nn.Sequential(
                # input is Z, going into a convolution
                nn.ConvTranspose2d(     nz, ngf * 8, 4, 1, 0, bias=False),
                nn.BatchNorm2d(ngf * 8),
                nn.ReLU(True),
                # state size. (ngf*8) x 4 x 4
                nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ngf * 4),
                nn.ReLU(True),
                # state size. (ngf*4) x 8 x 8
                nn.ConvTranspose2d( ngf * 4, ngf * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ngf * 2),
                nn.ReLU(True),
                # state size. (ngf*2) x 16 x 16
                nn.ConvTranspose2d( ngf * 2,     ngf, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ngf),
                nn.ReLU(True),
                # state size. (ngf) x 32 x 32
                nn.ConvTranspose2d(    ngf,      nc, 4, 2, 1, bias=False),
                nn.Tanh()
                # state size. (nc) x 64 x 64
            )

        def forward(self, input):
            if input.is_cuda and self.ngpu > 1:
                output = nn.parallel.data_parallel(self.main, input, range(self.ngpu))
            else:
                output = self.main(input)
            return output


    def make():
        return Generator(ngpu=1)
''')


@pytest.fixture
def dcgan(tmp_path, monkeypatch):
    """Writes a user's module holding DCGAN's Generator (and make()) into the working folder; returns
    a function (name, ngf, nc) -> the imported module. The modules are forgotten after the test."""
    names = []

    def write(name, *, ngf=8, nc=3):
        (tmp_path / f"{name}.py").write_text(DCGAN_SOURCE.format(ngf=ngf, nc=nc))
        names.append(name)
        sys.path.insert(0, str(tmp_path))
        try:
            importlib.invalidate_caches()
            return importlib.import_module(name)
        finally:
            sys.path.remove(str(tmp_path))

    yield write
    for name in names:
        sys.modules.pop(name, None)


def randomise_norms(model, seed):
    """Random BatchNorm statistics and affine parameters, so eval mode is not the identity."""
    rng = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=rng) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=rng) + 0.5)
            m.weight.data.copy_(1 + 0.1 * torch.randn(m.num_features, generator=rng))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=rng))
    return model.eval()


def tutorial_generator(seed):
    torch.manual_seed(seed)
    return randomise_norms(GenerationModel(), seed)


def l_shape():
    """80 x 80 RGB: a red vertical bar down the left, a blue bar along the bottom, a green dot top
    right. Its transpose, mirror images and rotations all differ from it."""
    image = numpy.zeros((80, 80, 3), numpy.uint8)
    image[5:75, 5:15, 0] = 250          # the L's stem: left, top to bottom
    image[65:75, 5:60, 2] = 200         # its foot: bottom, left to right
    image[5:12, 65:72, 1] = 180         # a dot, top right
    image[..., 1] += numpy.arange(80, dtype=numpy.uint8)[None, :] // 2  # a left-to-right ramp
    return image


# ----------------------------------------------------------------------------------------------
# The tutorial's layout: data and generators read upright


def test_an_l_shape_through_the_tutorials_data_folder_reads_upright(tmp_path):
    picture = l_shape()
    others = [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in synthetic_faces(250, 80, seed=3).images]
    prepare_batches([Image.fromarray(picture)] + others, tmp_path / "data")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["0.pt", "1.pt"]

    # The tutorial's own view: its tensor is C x W x H, and its tensor_to_image shows the picture
    # (one level darker here and there: it truncates where facegan rounds).
    stored = load_tensor(str(tmp_path / "data" / "0.pt"))
    assert stored.shape == (200, 3, 80, 80) and stored.dtype == torch.float32
    assert numpy.abs(numpy.asarray(tensor_to_image(stored[0])).astype(int) - picture).max() <= 1
    upright_chw = torch.from_numpy(picture).permute(2, 0, 1)
    assert not torch.equal(to_uint8(stored[0]), upright_chw)  # read as it is, it would lie on its side

    dataset = load_real(str(tmp_path / "data"), 80, False)  # what --real DATA_DIR reads
    assert dataset.images.shape == (251, 3, 80, 80)
    assert torch.equal(dataset.images[0], upright_chw)
    assert torch.equal(dataset.images[1], synthetic_faces(250, 80, seed=3).images[0])
    assert dataset.manifest["source_files"] == [str(tmp_path / "data" / "0.pt"), str(tmp_path / "data" / "1.pt")]


def test_the_tutorials_data_folder_refuses_what_is_not_its_batches(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(FaceganError, match="holds no 0.pt"):
        load_tutorial_data(data)
    save_tensor(torch.rand(4, 3, 8, 8) * 255, str(data / "0.pt"))
    with pytest.raises(FaceganError, match=r"0\.pt holds values from .* to 25\d; the tutorial's batches are in \[-1, 1\]"):
        load_tutorial_data(data)
    save_tensor(torch.zeros(4, 3, 8, 6), str(data / "0.pt"))
    with pytest.raises(FaceganError, match=r"a torch.float32 tensor of shape \(4, 3, 8, 6\)"):
        load_tutorial_data(data)
    save_tensor(torch.zeros(4, 3, 8, 8), str(data / "0.pt"))
    save_tensor(torch.zeros(2, 3, 8, 8), str(data / "2.pt"))  # after a gap: the tutorial never reads it
    assert len(load_tutorial_data(data)) == 4
    assert "2.pt lie beyond a missing number" in capsys.readouterr().err


def test_the_tutorials_generator_becomes_a_facegan_generator_that_draws_upright(tmp_path):
    model = tutorial_generator(seed=1)
    save_tensor(model.state_dict(), str(tmp_path / "model.generation.epoch_2999.pt"))
    imported = load_generator_file(tmp_path / "model.generation.epoch_2999.pt")
    assert isinstance(imported.generator, Generator) and imported.kind == "the tutorial's generator"
    assert (imported.network.image_size, imported.network.latent_dim, imported.network.g_width) == (80, 128, 64)

    z = torch.randn(4, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = model(z)                     # C x W x H, as the tutorial's server renders it
        ours = imported.generator(z)          # C x H x W
    # Swapping every kernel's two axes swaps the output's two axes (float32 summation order aside).
    assert torch.allclose(ours, theirs.transpose(-1, -2), atol=2e-5, rtol=0)
    assert (ours - theirs).abs().max() > 0.1  # far from symmetric images: the test has teeth
    for i in range(4):
        # The tutorial's tensor_to_image truncates where facegan rounds: one level at most.
        shown = numpy.asarray(tensor_to_image(theirs[i])).astype(int)
        drawn = to_uint8(ours[i]).permute(1, 2, 0).numpy().astype(int)
        assert numpy.abs(shown - drawn).max() <= 1

    # As a facegan checkpoint: `facegan generate` (and serve, the pyfunc model) draws the same faces.
    save_checkpoint(imported.facegan_checkpoint(epoch=2999), tmp_path / "best.pt")
    loaded = load_model(str(tmp_path / "best.pt"))
    assert loaded.payload["epoch"] == 2999 and loaded.payload["imported_from"]["kind"] == "the tutorial's generator"
    latents = sample_latents(3, 128, seed=5)
    with torch.no_grad():
        expected = numpy.stack([numpy.asarray(tensor_to_image(t)) for t in model(latents)]).astype(int)
    assert numpy.abs(render(loaded.generator, latents).astype(int) - expected).max() <= 1
    faces = _load_pyfunc(str(tmp_path / "best.pt")).predict({"seed": [5]})  # MLflow's pyfunc model of it
    png = numpy.asarray(Image.open(io.BytesIO(base64.b64decode(faces["png"][0])))).astype(int)
    with torch.no_grad():
        shown = numpy.asarray(tensor_to_image(model(sample_latents(1, 128, seed=5))[0])).astype(int)
    assert numpy.abs(png - shown).max() <= 1


def test_a_tutorial_run_folder_scores_as_the_tutorials_generators_turned_upright(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEGAN_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    run.mkdir()
    discriminator = DiscriminationModel()
    models = {epoch: tutorial_generator(seed=epoch) for epoch in (99, 199)}
    for epoch, model in models.items():
        save_tutorial_checkpoints(model, discriminator, epoch, run)
    # A run killed while saving: a truncated file after the first is skipped, as a damaged checkpoint of a run is.
    (run / "model.generation.epoch_299.pt").write_bytes((run / "model.generation.epoch_199.pt").read_bytes()[:5000])
    faces = synthetic_faces(120, 80, seed=0).images
    prepare_batches([Image.fromarray(f.permute(1, 2, 0).numpy()) for f in faces], run / "data")

    files = find_checkpoint_files(str(run))  # the folder: its generators' files only
    assert [(f.epoch, f.path.name) for f in files] == [(e, f"model.generation.epoch_{e}.pt") for e in (99, 199, 299)]
    assert files == find_checkpoint_files(str(run / "model.generation.epoch_*.pt"))
    checkpoints = checkpoint_sources(str(run))

    class Upright(nn.Module):  # the reference: the tutorial's own model, its output axes swapped back
        latent_dim = 128

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, z):
            return self.model(z).transpose(-1, -2)

    for checkpoint in checkpoints[:2]:  # the engine's samples: the tutorial's images, upright
        ours = torch.cat(list(checkpoint.samples(60, torch.device("cpu")))).int()
        reference = torch.cat(list(generator_batches(Upright(models[checkpoint.epoch]), 60, torch.device("cpu")))).int()
        assert ours.shape == (60, 3, 80, 80)
        assert (ours - reference).abs().max() <= 1 and (ours != reference).float().mean() < 1e-3  # rounding only

    real = load_real(str(run / "data"), 80, False)
    assert torch.equal(real.images, faces)  # the tutorial's data read back upright, byte for byte
    result = evaluate(checkpoints, Scorer(get_extractor("random"), real_images(real), 60))
    assert [(c.epoch, c.label) for c in result.checkpoints] == [(e, str(run / f"model.generation.epoch_{e}.pt"))
                                                                 for e in (99, 199)]
    assert [label for label, _ in result.skipped] == [str(run / "model.generation.epoch_299.pt")]
    assert "is a damaged gzip file" in result.skipped[0][1]
    assert result.best_epoch in (99, 199)


# ----------------------------------------------------------------------------------------------
# Which files: patterns and epochs


def test_patterns_give_one_file_per_epoch_or_one_clear_error(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.generation.epoch_99.pt", "model.generation.epoch_199.pt", "model.discrimination.epoch_99.pt",
                 "model.discrimination.epoch_199.pt", "model.generation.pt", "notes.txt"):
        (run / name).write_bytes(b"x")
    assert [f.epoch for f in find_checkpoint_files(str(run))] == [99, 199]
    assert "leaving out 3 other files" in capsys.readouterr().err
    with pytest.raises(FaceganError, match=r"2 files at epoch 99 \(model.discrimination.epoch_99.pt, "
                                           r"model.generation.epoch_99.pt\); give a glob"):
        find_checkpoint_files(str(run / "model.*.epoch_*.pt"))
    with pytest.raises(FaceganError, match="model.generation.pt has no number in its name"):
        find_checkpoint_files(str(run / "model.generation*.pt"))
    with pytest.raises(FaceganError, match="no file matches it as a glob"):
        find_checkpoint_files(str(run / "netG_epoch_*.pth"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FaceganError, match="no checkpoint files with an epoch number"):
        find_checkpoint_files(str(tmp_path / "empty"))
    dcgan = tmp_path / "dcgan"
    dcgan.mkdir()
    for epoch in (0, 1, 24):  # pytorch/examples' DCGAN writes both networks every epoch
        (dcgan / f"netG_epoch_{epoch}.pth").write_bytes(b"x")
        (dcgan / f"netD_epoch_{epoch}.pth").write_bytes(b"x")
    assert [(f.epoch, f.path.name) for f in find_checkpoint_files(str(dcgan))] == [
        (0, "netG_epoch_0.pth"), (1, "netG_epoch_1.pth"), (24, "netG_epoch_24.pth")]
    assert [f.epoch for f in find_checkpoint_files(str(tmp_path / "*" / "netG_epoch_*.pth"))] == [0, 1, 24]


def test_latent_shapes_and_output_ranges_parse_or_fail_clearly():
    assert parse_latent_shape("128") == (128,) and parse_latent_shape("100x1x1") == (100, 1, 1)
    assert parse_latent_shape("100,1,1") == (100, 1, 1)
    assert parse_output_range("-1,1") == (-1.0, 1.0) and parse_output_range("0,255") == (0.0, 255.0)
    for bad in ("", "0", "100x", "-5", "1.5"):
        with pytest.raises(FaceganError, match="a latent shape is positive whole numbers"):
            parse_latent_shape(bad)
    with pytest.raises(FaceganError, match="two numbers low,high"):
        parse_output_range("1")
    with pytest.raises(FaceganError, match="low < high"):
        parse_output_range("1,0")
    with pytest.raises(FaceganError, match="factory is module:function"):
        GeneratorSpec(factory="dcgan.py", latent_shape=(100,))
    with pytest.raises(FaceganError, match="state the generator's latent shape"):
        GeneratorSpec(factory="dcgan_generator:make")


# ----------------------------------------------------------------------------------------------
# Any PyTorch generator: DCGAN's files as they are, a factory, a torch.export program


def test_dcgans_netg_files_are_facegan_generators_as_they_are(tmp_path, dcgan):
    module = dcgan("dcgan_plain", ngf=8)
    netG = randomise_norms(module.make(), seed=2)
    torch.save(netG.state_dict(), tmp_path / "netG_epoch_24.pth")
    imported = load_generator_file(tmp_path / "netG_epoch_24.pth")
    assert isinstance(imported.generator, Generator)
    assert (imported.network.image_size, imported.network.latent_dim, imported.network.g_width) == (64, 100, 8)
    z = torch.randn(3, 100, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # upright as they are: DCGAN's images come from torchvision, H x W
        assert torch.allclose(imported.generator(z), netG(z.view(3, 100, 1, 1)), atol=1e-6, rtol=0)
    assert imported.facegan_checkpoint(24)["network"]["image_size"] == 64


def test_a_factory_loads_each_state_dict_into_the_users_network(tmp_path, dcgan):
    module = dcgan("dcgan_generator", ngf=8, nc=1)  # MNIST's netG: grey images, which facegan's generators never draw
    netG = randomise_norms(module.make(), seed=3)
    torch.save(netG.state_dict(), tmp_path / "netG_epoch_7.pth")
    with pytest.raises(FaceganError, match=r"netG_epoch_7.pth is a state dict of an architecture facegan cannot "
                                           r"rebuild from its weights \(it draws 1-channel images.*give its factory"):
        load_generator_file(tmp_path / "netG_epoch_7.pth")

    spec = GeneratorSpec(factory="dcgan_generator:make", latent_shape=(100, 1, 1), output_range=(-1, 1))
    imported = load_generator_file(tmp_path / "netG_epoch_7.pth", spec)  # imports from the working folder
    assert imported.generator.latent_dim == 100 and imported.kind == "a state dict for dcgan_generator:make"
    z = torch.randn(5, 100, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        grey = netG(z.view(5, 100, 1, 1))
        drawn = imported.generator(z)
    assert drawn.shape == (5, 3, 64, 64)
    for channel in range(3):
        assert torch.allclose(drawn[:, channel], grey[:, 0], atol=1e-6, rtol=0)
    with pytest.raises(FaceganError, match="holds a state dict for dcgan_generator:make, which facegan cannot rebuild"):
        imported.facegan_checkpoint(7)

    # A DataParallel state dict ("module." before every key) loads too.
    torch.save({f"module.{k}": v for k, v in netG.state_dict().items()}, tmp_path / "netG_epoch_8.pth")
    assert load_generator_file(tmp_path / "netG_epoch_8.pth", spec).generator(z).shape == (5, 3, 64, 64)

    for factory, shape, message in [
        ("no_such_module:make", (100, 1, 1), "cannot import no_such_module"),
        ("dcgan_generator:nothing", (100, 1, 1), "dcgan_generator has no function nothing"),
        ("dcgan_generator:make", (100,), r"the generator failed on latents of shape 2x100 .*is the latent shape right"),
    ]:
        with pytest.raises(FaceganError, match=message):
            load_generator_file(tmp_path / "netG_epoch_7.pth", GeneratorSpec(factory=factory, latent_shape=shape))
    torch.save({"main.0.weight": torch.zeros(3, 3, 4, 4)}, tmp_path / "netG_epoch_9.pth")
    with pytest.raises(FaceganError, match="netG_epoch_9.pth does not fit the network factory dcgan_generator:make returns"):
        load_generator_file(tmp_path / "netG_epoch_9.pth", spec)

    (tmp_path / "main_like.py").write_text("import sys\nsys.exit(2)\n")  # as dcgan/main.py's argparse on import
    with pytest.raises(FaceganError, match="importing main_like ran a program"):
        load_generator_file(tmp_path / "netG_epoch_7.pth", GeneratorSpec(factory="main_like:make", latent_shape=(100,)))


def test_torch_export_programs_are_generators_with_their_own_latent_shape(tmp_path, dcgan):
    netG = randomise_norms(dcgan("dcgan_export", ngf=4).make(), seed=4)

    class Sigmoid01(nn.Module):  # outputs in [0, 1], as after a sigmoid
        def __init__(self, g):
            super().__init__()
            self.g = g

        def forward(self, z):
            return (self.g(z) + 1) / 2

    example = torch.randn(2, 100, 1, 1)
    program = torch.export.export(Sigmoid01(netG).eval(), (example,),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(program, tmp_path / "G_epoch_3.pt2")
    imported = load_generator_file(tmp_path / "G_epoch_3.pt2", GeneratorSpec(output_range=(0, 1)))
    assert imported.generator.latent_shape == (100, 1, 1) and imported.kind == "a torch.export program"
    z = torch.randn(4, 100, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(imported.generator(z), netG(z.view(4, 100, 1, 1)), atol=1e-5, rtol=0)
    with pytest.raises(FaceganError, match="takes latents of shape 100x1x1, not the 128 stated"):
        load_generator_file(tmp_path / "G_epoch_3.pt2", GeneratorSpec(latent_shape=(128,)))

    fixed = torch.export.export(netG.eval(), (example,))
    torch.export.save(fixed, tmp_path / "G_epoch_4.pt2")
    with pytest.raises(FaceganError, match="takes a fixed batch of 2 latents; export it with a dynamic batch"):
        load_generator_file(tmp_path / "G_epoch_4.pt2")


# ----------------------------------------------------------------------------------------------
# Files that are not generators: one clear error naming the file


class NotData:
    pass


def test_foreign_and_damaged_files_are_one_clear_error_naming_the_file(tmp_path):
    cases = {
        "empty_1.pt": (b"", "cannot be read: the file is empty"),
        "text_1.pt": (b"hello, not a checkpoint", "cannot be read: it is not a PyTorch file"),
        "cut_1.pt": (gzip.compress(numpy.random.default_rng(0).bytes(1000))[:100], "is a damaged gzip file"),
        "pickle_1.pt": (gzip.compress(pickle.dumps(NotData, protocol=2)), ("is gzip-compressed, but what it holds cannot be read: "
                        "it holds Python objects besides tensors and plain data, which are refused")),
        "gzipped_text_1.pt": (gzip.compress(b"hello"), ("is gzip-compressed, but what it holds cannot be read: it is not "
                              "a PyTorch file")),
    }
    for name, (content, _) in cases.items():
        (tmp_path / name).write_bytes(content)
    save_tensor(NotData(), str(tmp_path / "object_1.pt"))
    cases["object_1.pt"] = (None, "holds Python objects besides tensors and plain data, which are refused")
    save_tensor(DiscriminationModel().state_dict(), str(tmp_path / "model.discrimination.epoch_99.pt"))
    cases["model.discrimination.epoch_99.pt"] = (None, "looks like a discriminator's")
    torch.save(nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 3)).state_dict(), tmp_path / "mlp_1.pt")
    cases["mlp_1.pt"] = (None, r"state dict of an architecture facegan cannot rebuild from its weights \(it has no convolution")
    torch.save({"weights": [1, 2, 3]}, tmp_path / "list_1.pt")
    cases["list_1.pt"] = (None, r"is not a generator checkpoint: it holds a dict \(keys 'weights'\)")
    save_dataset(synthetic_faces(4, 32, seed=0), tmp_path / "faces_1.pt")
    cases["faces_1.pt"] = (None, "it holds a dict with format 'facegan-dataset'")
    with_bias = nn.Sequential(nn.ConvTranspose2d(16, 8, 4, 1, 0), nn.BatchNorm2d(8), nn.ReLU(),
                              nn.ConvTranspose2d(8, 3, 4, 2, 1), nn.Tanh())
    torch.save(with_bias.state_dict(), tmp_path / "bias_1.pt")
    cases["bias_1.pt"] = (None, "layer 0 has bias beside its weight")
    for name, (_, message) in cases.items():
        with pytest.raises(FaceganError) as error:
            load_generator_file(tmp_path / name)
        text = str(error.value)
        assert name in text and "\n" not in text, text
        assert re.search(message, text), text
    with pytest.raises(FaceganError, match="checkpoint not found"):
        load_generator_file(tmp_path / "missing_1.pt")
    # A pattern of foreign files is one error before any scoring, not one skip per file.
    with pytest.raises(FaceganError, match="looks like a discriminator's"):
        checkpoint_sources(str(tmp_path / "model.discrimination.epoch_*.pt"))


def test_facegan_checkpoints_are_read_as_they_are(tmp_path):
    g = Generator(image_size=32, latent_dim=16, width=8)
    payload = {"kind": "generator", "epoch": 40, "network": {"image_size": 32, "latent_dim": 16, "g_width": 8,
               "d_width": 8, "g_norm": "batch", "d_norm": "batch"}, "generator": g.state_dict()}
    save_checkpoint(payload, tmp_path / "generator-epoch-0040.pt")
    imported = load_generator_file(tmp_path / "generator-epoch-0040.pt")
    assert imported.kind == "a facegan checkpoint" and imported.facegan_checkpoint(40)["epoch"] == 40
    z = torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(imported.generator(z), load_generator(tmp_path / "generator-epoch-0040.pt")[0](z))
    # A facegan generator saved as a plain state dict is recognised from its shapes (norm "none" too).
    plain = Generator(image_size=40, latent_dim=20, width=4, norm="none")
    torch.save(plain.state_dict(), tmp_path / "g_5.pt")
    network = load_generator_file(tmp_path / "g_5.pt").network
    assert (network.image_size, network.latent_dim, network.g_width, network.g_norm) == (40, 20, 4, "none")


def test_the_docstring_examples_hold():
    import evaluation.sources
    import facegan.imported

    assert doctest.testmod(facegan.imported).failed == 0
    assert doctest.testmod(evaluation.sources).failed == 0


# ----------------------------------------------------------------------------------------------
# Through the real CLI: `facegan evaluate --checkpoints`


@pytest.mark.slow
def test_the_cli_scores_a_tutorial_run_folder_and_registers_its_choice(cli, tmp_path, tracking_uri):
    import json

    from mlflow import MlflowClient

    run = tmp_path / "run"
    run.mkdir()
    for epoch in (99, 199):
        save_tutorial_checkpoints(tutorial_generator(seed=epoch), DiscriminationModel(), epoch, run)
    faces = synthetic_faces(120, 80, seed=0).images
    prepare_batches([Image.fromarray(f.permute(1, 2, 0).numpy()) for f in faces], run / "data")

    proc = cli("evaluate", "--checkpoints", "run/model.generation.epoch_*.pt", "--real", "run/data",
               "--features", "random", "--num-samples", 40, "--register", "imported-test", "--json", "out.json",
               "--tracking-uri", tracking_uri, "--quiet", env={"FACEGAN_CACHE_DIR": str(tmp_path / "cache")})
    result = json.loads((tmp_path / "out.json").read_text())
    assert [c["epoch"] for c in result["checkpoints"]] == [99, 199]
    assert f"registered: models:/imported-test@best (epoch {result['best_epoch']} of run {result['run_id']}" in proc.stdout

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    logged = client.get_run(result["run_id"])
    assert logged.data.tags["facegan.kind"] == "import" and logged.info.status == "FINISHED"
    assert client.get_experiment(logged.info.experiment_id).name == "facegan-imported"
    assert [m.step for m in client.get_metric_history(result["run_id"], "random/fid")] == [99, 199]

    # The registered choice is a facegan model: `generate` draws the tutorial's faces, upright.
    cli("generate", "--model", "models:/imported-test@best", "-n", 1, "--seed", 3, "--out", "faces",
        "--tracking-uri", tracking_uri)
    drawn = numpy.asarray(Image.open(tmp_path / "faces" / "000000.png"))
    z = sample_latents(1, 128, seed=3)
    with torch.no_grad():
        tutorial = tutorial_generator(seed=result["best_epoch"]).eval()(z)
    assert numpy.abs(drawn.astype(int) - numpy.asarray(tensor_to_image(tutorial[0])).astype(int)).max() <= 1


def test_the_cli_refuses_a_factory_without_its_latent_shape(cli, tmp_path):
    proc = cli("evaluate", "--checkpoints", "run", "--real", "synthetic", "--factory", "mine:make",
               "--features", "random", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "state the generator's latent shape too" in proc.stderr
