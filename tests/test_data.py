"""Tests for the data modules: synthetic faces, folder preparation, the container, dataset files, load_data."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from facegan.data import load_data, load_dataset, save_dataset
from facegan.dataset import Dataset, tensor_digest
from facegan.folders import prepare_folder
from facegan.synthetic import (
    SYNTHETIC_ATTRIBUTES,
    attribute_combination_index,
    num_attribute_combinations,
    render_faces,
    synthetic_faces,
)
from facegan.errors import FaceganError

RED, GREEN, BLUE, MAGENTA = (220, 20, 20), (20, 200, 40), (30, 40, 220), (230, 0, 230)


def solid(colour, size=(40, 40), mode="RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def save(image: Image.Image, path, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def pixel_colours(dataset: Dataset) -> dict[str, np.ndarray]:
    """Source file -> mean RGB of its prepared image."""
    means = dataset.images.float().mean(dim=(2, 3)).numpy()
    return dict(zip(dataset.manifest["source_files"], means))


# ------------------------------------------------------------------------------------------
# Synthetic faces
# ------------------------------------------------------------------------------------------


def test_synthetic_shape_dtype_manifest_and_float_range():
    data = synthetic_faces(12, image_size=24, seed=5)
    assert data.images.shape == (12, 3, 24, 24)
    assert data.images.dtype == torch.uint8 and data.images.is_contiguous()
    assert data.images.device.type == "cpu"
    assert data.manifest["num_images"] == 12 and data.manifest["image_size"] == 24
    assert data.manifest["source"] == "synthetic"
    assert data.manifest["parameters"] == {"num_images": 12, "image_size": 24, "seed": 5}
    assert data.manifest["digest"] == data.digest == tensor_digest(data.images)
    assert set(data.labels) == set(SYNTHETIC_ATTRIBUTES)
    assert all(values.shape == (12,) for values in data.labels.values())
    # real pictures use most of the range, not a flat colour
    assert data.images.min() < 60 and data.images.max() > 200

    as_float = data.as_float()
    assert as_float.dtype == torch.float32 and as_float.shape == data.images.shape
    assert as_float.min() >= -1.0 and as_float.max() <= 1.0
    expected = data.images.double() / 127.5 - 1.0
    torch.testing.assert_close(as_float.double(), expected, rtol=0, atol=1e-6)
    assert torch.equal(data.as_float("cpu"), as_float)
    assert data.images.dtype == torch.uint8 and data.digest == data.manifest["digest"]  # untouched


def test_synthetic_is_deterministic_in_the_seed():
    first, again = synthetic_faces(20, 32, seed=7), synthetic_faces(20, 32, seed=7)
    assert torch.equal(first.images, again.images)
    assert first.digest == again.digest
    for name in SYNTHETIC_ATTRIBUTES:
        np.testing.assert_array_equal(first.labels[name], again.labels[name])
    other = synthetic_faces(20, 32, seed=8)
    assert not torch.equal(first.images, other.images)
    assert first.digest != other.digest


def test_synthetic_images_differ_even_with_equal_attributes():
    # continuous variation: no two faces are the same picture
    data = synthetic_faces(50, 32, seed=0)
    flat = data.images.reshape(50, -1)
    assert len({bytes(row.numpy()) for row in flat}) == 50


def test_synthetic_labels_cover_every_combination_uniformly():
    assert num_attribute_combinations() >= 64
    data = synthetic_faces(3000, image_size=16, seed=1)
    modes = attribute_combination_index(data.labels)
    assert np.unique(modes).size == num_attribute_combinations()
    for name, values in SYNTHETIC_ATTRIBUTES.items():
        shares = np.bincount(data.labels[name], minlength=len(values)) / 3000
        assert np.all(np.abs(shares - 1 / len(values)) < 0.04), (name, shares)


def test_attribute_combination_index_is_a_bijection():
    names = list(SYNTHETIC_ATTRIBUTES)
    sizes = [len(values) for values in SYNTHETIC_ATTRIBUTES.values()]
    combos = np.array(list(itertools.product(*map(range, sizes))))
    labels = {name: combos[:, i] for i, name in enumerate(names)}
    index = attribute_combination_index(labels)
    assert sorted(index.tolist()) == list(range(num_attribute_combinations()))
    with pytest.raises(FaceganError, match="glasses"):
        attribute_combination_index({**labels, "glasses": labels["glasses"] + 5})
    with pytest.raises(FaceganError, match="lack"):
        attribute_combination_index({"skin": labels["skin"]})


def render_one(**attributes) -> np.ndarray:
    """One 48 px face; the same rng seed gives the same continuous variation."""
    base = {name: 0 for name in SYNTHETIC_ATTRIBUTES}
    base.update({name: SYNTHETIC_ATTRIBUTES[name].index(v) for name, v in attributes.items()})
    labels = {name: np.array([value]) for name, value in base.items()}
    return render_faces(labels, 48, np.random.default_rng(11))[0].astype(int)


def changed_pixels(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    return np.abs(first - second).sum(axis=0) > 30


def test_render_faces_honours_each_attribute():
    plain = render_one()
    np.testing.assert_array_equal(plain, render_one())  # same attributes and rng: same face

    # hair: the pixels that change are hair, and take the hair's colour
    black, white = render_one(hair="black"), render_one(hair="white")
    hair = changed_pixels(black, white)
    assert hair.mean() > 0.05
    assert black[:, hair].mean() < 70 and white[:, hair].mean() > 200

    light, dark = render_one(skin="light"), render_one(skin="dark")
    skin = changed_pixels(light, dark)
    assert skin.mean() > 0.1
    assert light[:, skin].mean() > dark[:, skin].mean() + 80

    # glasses: dark frames appear around the eyes, in the upper half of the face
    without, with_glasses = render_one(glasses="none"), render_one(glasses="glasses")
    frames = changed_pixels(without, with_glasses)
    assert frames.mean() > 0.02
    assert with_glasses[:, frames].mean() < without[:, frames].mean() - 40
    rows = np.flatnonzero(frames.any(axis=1))
    assert rows.max() < 48 * 0.65

    # mouths: every pair of kinds draws different pictures, only in the lower half
    mouths = {kind: render_one(mouth=kind) for kind in SYNTHETIC_ATTRIBUTES["mouth"]}
    for first, second in itertools.combinations(mouths.values(), 2):
        changed = changed_pixels(first, second)
        assert changed.sum() >= 4
        assert np.flatnonzero(changed.any(axis=1)).min() > 48 * 0.5


def test_render_faces_rejects_bad_input():
    rng = np.random.default_rng(0)
    labels = {name: np.zeros(3, dtype=int) for name in SYNTHETIC_ATTRIBUTES}
    with pytest.raises(FaceganError, match="same length"):
        render_faces({**labels, "skin": np.zeros(2, dtype=int)}, 32, rng)
    with pytest.raises(FaceganError, match="at least|>= 16"):
        render_faces(labels, 15, rng)


@pytest.mark.parametrize(
    "arguments",
    [{"num_images": 0}, {"num_images": 4, "image_size": 12}, {"num_images": 4, "seed": -1}],
)
def test_synthetic_rejects_bad_parameters(arguments):
    with pytest.raises(FaceganError):
        synthetic_faces(**arguments)


# ------------------------------------------------------------------------------------------
# Folder preparation
# ------------------------------------------------------------------------------------------


@pytest.fixture
def mixed_folder(tmp_path):
    """Images in every mode, at several depths and with mixed-case extensions, plus junk."""
    root = tmp_path / "faces"
    save(solid(RED), root / "anna" / "a.JPG", quality=95)
    save(solid(GREEN), root / "deep" / "er" / "bob" / "b.Png")
    save(solid(100, mode="L"), root / "carl" / "grey.jpeg", quality=95)
    rgba = solid((0, 0, 200, 255), mode="RGBA")
    rgba.paste((0, 0, 0, 0), (0, 0, 40, 40))  # fully transparent: shows as white
    save(rgba, root / "dana" / "clear.png")
    save(solid(BLUE).convert("P", palette=Image.Palette.ADAPTIVE), root / "eve" / "palette.BMP")
    save(solid((0, 255, 255, 0), mode="CMYK"), root / "fred" / "cmyk.jpg", quality=95)
    save(Image.fromarray(np.full((40, 40), 32896, np.uint16)), root / "gus" / "sixteen.png")
    save(solid((200, 255), mode="LA"), root / "hal" / "la.webp", lossless=True)
    # damaged and unreadable files
    (root / "ivan").mkdir()
    (root / "ivan" / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    (root / "ivan" / "empty.png").write_bytes(b"")
    whole = save(solid(RED, size=(64, 64)), tmp_path / "whole.jpg")
    (root / "jo").mkdir()
    (root / "jo" / "truncated.jpg").write_bytes(whole.read_bytes()[:300])
    # not images: ignored, not counted as skipped
    (root / "anna" / "notes.txt").write_text("hello")
    (root / "anna" / "a.jpg.json").write_text("{}")
    return root


def test_prepare_reads_every_mode_at_any_depth(mixed_folder, capsys):
    data = prepare_folder(mixed_folder, image_size=16, per_identity=5, progress=False)
    colours = pixel_colours(data)
    assert set(colours) == {
        "anna/a.JPG",
        "deep/er/bob/b.Png",
        "carl/grey.jpeg",
        "dana/clear.png",
        "eve/palette.BMP",
        "fred/cmyk.jpg",
        "gus/sixteen.png",
        "hal/la.webp",
    }
    assert data.images.shape == (8, 3, 16, 16) and data.images.dtype == torch.uint8

    def close(name, rgb, tolerance=6):
        assert np.all(np.abs(colours[name] - np.array(rgb)) <= tolerance), (name, colours[name])

    close("anna/a.JPG", RED)
    close("deep/er/bob/b.Png", GREEN, 0)
    close("carl/grey.jpeg", (100, 100, 100))
    close("dana/clear.png", (255, 255, 255), 0)
    close("eve/palette.BMP", BLUE, 0)
    close("fred/cmyk.jpg", (255, 0, 0), 10)  # C=0 M=255 Y=255 K=0 is red
    close("gus/sixteen.png", (128, 128, 128), 0)  # 16-bit 32896 / 257
    close("hal/la.webp", (200, 200, 200), 0)

    skipped = {entry["path"]: entry["error"] for entry in data.manifest["skipped_files"]}
    assert set(skipped) == {"ivan/noise.jpg", "ivan/empty.png", "jo/truncated.jpg"}
    assert all(skipped.values())
    assert "skipped 3 unreadable" in capsys.readouterr().err
    assert data.manifest["num_found"] == 11
    assert data.manifest["digest"] == data.digest


def test_prepare_honours_exif_orientation(tmp_path):
    # As displayed: 20 wide, 40 tall, red on top and blue below. Stored rotated, with the EXIF
    # orientation that tells a viewer how to turn it back.
    shown = Image.new("RGB", (20, 40), BLUE)
    shown.paste(RED, (0, 0, 20, 20))
    stored_for = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    for orientation, transpose in stored_for.items():
        exif = Image.Exif()
        exif[0x0112] = orientation
        stored = shown.transpose(transpose)
        assert stored.size == (40, 20)
        save(stored, tmp_path / "photos" / f"person{orientation}" / "x.jpg", exif=exif, quality=95)

    data = prepare_folder(tmp_path / "photos", image_size=8, crop=1.0, progress=False)
    assert data.images.shape[0] == 2
    for image in data.images.int():
        top, bottom = image[:, :3].float().mean(dim=(1, 2)), image[:, 5:].float().mean(dim=(1, 2))
        assert np.allclose(top, RED, atol=25), top
        assert np.allclose(bottom, BLUE, atol=25), bottom


def test_prepare_keeps_the_centre_crop(tmp_path):
    # centre half (x and y from 25% to 75%) green, the border magenta
    image = solid(MAGENTA, size=(200, 120))
    image.paste(GREEN, (50, 30, 150, 90))
    save(image, tmp_path / "crop" / "p" / "x.png")
    cropped = prepare_folder(tmp_path / "crop", image_size=10, crop=0.5, progress=False)
    pixels = cropped.images[0].permute(1, 2, 0).int().numpy()
    assert np.all(pixels == GREEN)  # not one magenta pixel leaks in through the filter

    whole = prepare_folder(tmp_path / "crop", image_size=10, crop=1.0, progress=False)
    corners = whole.images[0].permute(1, 2, 0).int().numpy()[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert np.all(np.abs(corners - MAGENTA) <= 3)


@pytest.fixture
def people(tmp_path):
    """Six person folders of four images each; each image's colour encodes person and index."""
    root = tmp_path / "people"
    for person in range(6):
        for index in range(4):
            save(solid((40 * person, 60 * index, 7)), root / f"person{person}" / f"img{index}.png")
    return root


def test_prepare_policy_per_identity_shuffle_and_limit(people):
    everything = prepare_folder(people, image_size=8, per_identity=2, limit=100, progress=False)
    files = everything.manifest["source_files"]
    # at most two per person, and those are the first two in sorted order
    assert sorted(files) == sorted(f"person{p}/img{i}.png" for p in range(6) for i in range(2))
    assert files != sorted(files)  # shuffled
    # the pixels belong to the listed files
    for name, colour in pixel_colours(everything).items():
        person, index = int(name[6]), int(name[-5])
        assert np.allclose(colour, (40 * person, 60 * index, 7), atol=0)

    # the limit keeps the first images of the same shuffle
    limited = prepare_folder(people, image_size=8, per_identity=2, limit=5, progress=False)
    assert limited.manifest["source_files"] == files[:5]
    assert torch.equal(limited.images, everything.images[:5])
    assert limited.manifest["parameters"]["limit"] == 5

    three = prepare_folder(people, image_size=8, per_identity=3, limit=100, progress=False)
    assert len(three.manifest["source_files"]) == 18


def test_prepare_keeps_a_held_out_split_of_people_not_in_training(people, tmp_path, capsys):
    plain = prepare_folder(people, image_size=8, per_identity=2, limit=4, progress=False)
    split = prepare_folder(people, image_size=8, per_identity=2, limit=4, progress=False, holdout=3)
    # the same training images with or without a held-out split
    assert torch.equal(plain.images, split.images) and plain.digest == split.digest
    assert split.holdout.shape == (3, 3, 8, 8) and plain.holdout is None
    trained = {name.split("/")[0] for name in split.manifest["source_files"]}
    held = split.manifest["holdout"]["source_files"]
    assert len(held) == 3 and not trained & {name.split("/")[0] for name in held}
    for name, image in zip(held, split.holdout):  # the held-out pixels are those files'
        person, index = int(name[6]), int(name[-5])
        assert np.allclose(image[:, 0, 0].numpy(), (40 * person, 60 * index, 7))
    # a file keeps them; loading keeps them through a subset of the training images
    save_dataset(split, tmp_path / "split.pt")
    loaded = load_dataset(tmp_path / "split.pt")
    assert torch.equal(loaded.holdout, split.holdout) and loaded.digest == split.digest
    assert torch.equal(load_data(str(tmp_path / "split.pt"), num_images=2, image_size=8).holdout, split.holdout)
    # asking for more than the other people have says so
    prepare_folder(people, image_size=8, per_identity=2, limit=8, progress=False, holdout=10)
    assert "only" in capsys.readouterr().err


def test_prepare_is_deterministic_in_the_seed(people):
    first = prepare_folder(people, image_size=8, seed=3, progress=False)
    again = prepare_folder(people, image_size=8, seed=3, progress=False)
    other = prepare_folder(people, image_size=8, seed=4, progress=False)
    assert torch.equal(first.images, again.images) and first.digest == again.digest
    assert first.manifest["source_files"] == again.manifest["source_files"]
    assert first.manifest["source_files"] != other.manifest["source_files"]
    assert sorted(first.manifest["source_files"]) == sorted(other.manifest["source_files"])


def test_prepare_replaces_unreadable_files_with_the_next_candidates(tmp_path, capsys):
    root = tmp_path / "half-broken"
    for person in range(4):
        save(solid(GREEN), root / f"p{person}" / "a_good.png")
        (root / f"p{person}" / "b_bad.png").write_bytes(b"not a png")
    data = prepare_folder(root, image_size=8, limit=4, progress=False)
    assert sorted(data.manifest["source_files"]) == [f"p{p}/a_good.png" for p in range(4)]
    skipped = [entry["path"] for entry in data.manifest["skipped_files"]]
    assert skipped and set(skipped) <= {f"p{p}/b_bad.png" for p in range(4)}
    assert "warning: skipped" in capsys.readouterr().err


def test_prepare_progress_goes_to_stderr_only(people, capsys):
    prepare_folder(people, image_size=8, progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "24 images in 6 folders" in err
    prepare_folder(people, image_size=8, progress=False)
    assert capsys.readouterr() == ("", "")


def test_prepare_errors_name_the_problem(tmp_path):
    with pytest.raises(FaceganError, match="does not exist"):
        prepare_folder(tmp_path / "missing")
    a_file = save(solid(RED), tmp_path / "one.png")
    with pytest.raises(FaceganError, match="not a folder"):
        prepare_folder(a_file)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no pictures")
    with pytest.raises(FaceganError, match=r"no images found under .*empty"):
        prepare_folder(empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("x.jpg", "y.PNG"):
        (broken / name).write_bytes(b"\x89PNG garbage")
    with pytest.raises(FaceganError, match=r"none of the 2 image files .*broken"):
        prepare_folder(broken, progress=False)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"image_size": 7}, "image size"),
        ({"image_size": True}, "image size"),
        ({"image_size": 32.0}, "image size"),
        ({"crop": 0}, "crop"),
        ({"crop": 1.5}, "crop"),
        ({"crop": -0.5}, "crop"),
        ({"per_identity": 0}, "per identity"),
        ({"limit": 0}, "limit"),
        ({"seed": -3}, "seed"),
    ],
)
def test_prepare_rejects_bad_parameters(people, arguments, message):
    with pytest.raises(FaceganError, match=message):
        prepare_folder(people, progress=False, **arguments)


# ------------------------------------------------------------------------------------------
# Dataset files
# ------------------------------------------------------------------------------------------


def test_save_and_load_round_trip_with_labels(tmp_path):
    data = synthetic_faces(30, 16, seed=2)
    path = tmp_path / "sub" / "faces.pt"  # the folder is created
    save_dataset(data, path)
    loaded = load_dataset(path)
    assert torch.equal(loaded.images, data.images)
    assert loaded.manifest == data.manifest
    assert loaded.digest == data.digest == loaded.manifest["digest"]
    for name in SYNTHETIC_ATTRIBUTES:
        np.testing.assert_array_equal(loaded.labels[name], data.labels[name])
    assert [p.name for p in path.parent.iterdir()] == ["faces.pt"]  # no temporary left behind

    # overwriting replaces the file; the stored object uses only weights_only-safe types
    save_dataset(synthetic_faces(5, 16, seed=3), path)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "facegan-dataset" and payload["version"] == 1
    assert payload["images"].shape[0] == 5


def test_save_and_load_round_trip_without_labels(people, tmp_path):
    data = prepare_folder(people, image_size=8, progress=False)
    path = tmp_path / "people.pt"
    save_dataset(data, path)
    loaded = load_dataset(path)
    assert loaded.labels is None
    assert torch.equal(loaded.images, data.images) and loaded.manifest == data.manifest


def test_digest_covers_every_byte_and_the_shape():
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    changed = images.clone()
    changed[3, 2, 7, 7] = 1
    assert tensor_digest(images) != tensor_digest(changed)
    assert tensor_digest(images) != tensor_digest(images.reshape(2, 6, 8, 8))
    assert tensor_digest(images) == tensor_digest(images.clone())


def write_payload(path, **changes):
    data = synthetic_faces(4, 16)
    payload = {
        "format": "facegan-dataset",
        "version": 1,
        "images": data.images,
        "manifest": data.manifest,
        "labels": None,
    }
    payload.update(changes)
    torch.save(payload, path)
    return path


def test_load_rejects_damaged_and_foreign_files(tmp_path):
    good = tmp_path / "good.pt"
    save_dataset(synthetic_faces(8, 16), good)
    cases = {
        "missing": (tmp_path / "nope.pt", "does not exist"),
        "folder": (tmp_path, "is a folder"),
    }
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:2000])
    cases["truncated"] = (truncated, "it is truncated")
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(1).bytes(3000))
    cases["noise"] = (noise, "it is not a PyTorch file")
    code = tmp_path / "code.pt"
    code.write_bytes(pickle.dumps(Dataset, protocol=2))  # a pickle that would import code: refused
    cases["pickle"] = (code, "refused")
    other = tmp_path / "weights.pt"
    torch.save({"weight": torch.ones(3)}, other)
    cases["other kind"] = (other, "not a facegan dataset")
    cases["newer"] = (write_payload(tmp_path / "v2.pt", version=2), "format version 2")
    cases["bad images"] = (
        write_payload(tmp_path / "float.pt", images=torch.zeros(4, 3, 16, 16)),
        "damaged facegan dataset",
    )
    tampered = synthetic_faces(4, 16)
    tampered_images = tampered.images.clone()
    tampered_images[0, 0, 0, 0] ^= 1
    cases["tampered"] = (
        write_payload(tmp_path / "tampered.pt", images=tampered_images),
        "do not match the digest",
    )
    for name, (path, message) in cases.items():
        with pytest.raises(FaceganError, match=message):
            load_dataset(path)
            pytest.fail(name)


# ------------------------------------------------------------------------------------------
# load_data
# ------------------------------------------------------------------------------------------


def test_load_data_synthetic():
    data = load_data("synthetic", num_images=6, image_size=16, seed=4)
    assert torch.equal(data.images, synthetic_faces(6, 16, seed=4).images)
    assert data.labels is not None


def test_load_data_file_checks_size_and_takes_the_first_images(tmp_path):
    path = tmp_path / "faces.pt"
    full = synthetic_faces(40, 16, seed=1)
    save_dataset(full, path)
    assert load_data(str(path), image_size=16).digest == full.digest

    first = load_data(str(path), num_images=10, image_size=16)
    assert torch.equal(first.images, full.images[:10])
    assert first.manifest["num_images"] == 10 and first.manifest["digest"] == first.digest
    assert first.manifest["subset_of"] == {"digest": full.digest, "num_images": 40}
    np.testing.assert_array_equal(first.labels["hair"], full.labels["hair"][:10])
    # the subset owns its memory: saving it does not write the 40 images
    small = tmp_path / "small.pt"
    save_dataset(first, small)
    assert small.stat().st_size < path.stat().st_size / 2

    with pytest.raises(FaceganError, match=r"16x16 images but 32x32"):
        load_data(str(path), image_size=32)
    with pytest.raises(FaceganError, match="fewer than the 41"):
        load_data(str(path), num_images=41, image_size=16)


def test_load_data_folder_and_missing_source(people, tmp_path):
    data = load_data(str(people), num_images=5, image_size=8, seed=2, progress=False)
    assert data.images.shape == (5, 3, 8, 8)
    assert data.manifest["parameters"]["seed"] == 2
    with pytest.raises(FaceganError, match="does not exist"):
        load_data(str(tmp_path / "nowhere"))
    with pytest.raises(FaceganError, match="number of images"):
        load_data("synthetic", num_images=0)
