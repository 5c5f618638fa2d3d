from pathlib import Path

import pytest

from facegan.config import load_config, parse_override
from facegan.errors import FaceganError

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def test_defaults_resolve_to_the_seeds_settings():
    cfg = load_config()
    assert (cfg.train.loss, cfg.train.optimizer, cfg.train.lr_g, cfg.train.beta1, cfg.train.beta2) == (
        "wgan-gp", "adam", 1e-4, 0.0, 0.999)
    assert cfg.model.d_norm == "instance"
    assert cfg.tracking.checkpoint_every == 100
    assert cfg.train.compile == "auto"  # CUDA graphs where they can run (one GPU process), else eager
    dcgan = load_config(overrides={"train.loss": "dcgan"})
    assert (dcgan.train.lr_d, dcgan.train.beta1, dcgan.model.d_norm) == (2e-4, 0.5, "batch")
    wgan = load_config(overrides={"train.loss": "wgan"})
    assert (wgan.train.optimizer, wgan.train.lr_g, wgan.train.clip_value) == ("rmsprop", 5e-5, 0.1)


@pytest.mark.parametrize("name", ["quick", "tutorial_dcgan", "tutorial_wgan", "tutorial_wgan_gp"])
def test_experiment_files_load(name):
    cfg = load_config(EXPERIMENTS / f"{name}.toml")
    if name.startswith("seed"):
        assert (cfg.model.image_size, cfg.data.num_images, cfg.train.epochs, cfg.tracking.checkpoint_every) == (
            80, 2000, 10000, 100)


def test_overrides_are_typed_from_toml():
    assert parse_override("train.lr_g=2e-4") == ("train.lr_g", 2e-4)
    assert parse_override("train.loss=wgan") == ("train.loss", "wgan")
    assert parse_override("train.bf16=true") == ("train.bf16", True)
    assert parse_override("tracking.run_name=none") == ("tracking.run_name", None)
    cfg = load_config(overrides=dict([parse_override("train.lr_d=1"), parse_override("train.epochs=3")]))
    assert cfg.train.lr_d == 1.0 and isinstance(cfg.train.lr_d, float) and cfg.train.epochs == 3


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train.lr": 1e-3}, r"unknown config key 'train.lr'"),
        ({"train.los": "dcgan"}, r"did you mean 'train.loss'"),
        ({"trian.loss": "dcgan"}, r"did you mean 'train'"),
        ({"train.loss": "gan"}, r"train.loss must be one of dcgan, wgan, wgan-gp"),
        ({"train.epochs": 0}, r"train.epochs must be positive"),
        ({"train.epochs": 2.5}, r"train.epochs must be int"),
        ({"train.batch_size": "big"}, r"train.batch_size must be int"),
        ({"model.image_size": 100}, r"supported sizes: 32, 40, 64, 80, 128, 160"),
        ({"train.beta1": 1.5}, r"train.beta1 must be in \[0, 1\)"),
        ({"train.seed": -1}, r"train.seed must be in \[0, 2\^63\), got -1"),
        ({"train.seed": 2**64}, r"train.seed must be in \[0, 2\^63\)"),
        ({"data.seed": -3}, r"data.seed must be in \[0, 2\^63\), got -3"),
        ({"train.loss": "wgan-gp", "model.d_norm": "batch"}, r"invalid with wgan-gp"),
        ({"train.bf16": "yes"}, r"train.bf16 must be bool"),
        ({"train.compile": "fast"}, r"train.compile must be one of auto, off, cuda-graphs"),
        ({"train.compile": "cuda-graphs", "train.world_size": 2}, r"cuda-graphs runs on one process"),
    ],
)
def test_bad_values_are_clear_errors(overrides, message):
    with pytest.raises(FaceganError, match=message):
        load_config(overrides=overrides)


def test_bad_files(tmp_path):
    with pytest.raises(FaceganError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nloss=1")
    with pytest.raises(FaceganError, match="not valid TOML"):
        load_config(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[train]\nlearning_rate = 1e-3\n")
    with pytest.raises(FaceganError, match="unknown config key 'train.learning_rate'"):
        load_config(unknown)
    flat = tmp_path / "flat.toml"
    flat.write_text("loss = 'dcgan'\n")
    with pytest.raises(FaceganError, match="must be a \\[section\\] table"):
        load_config(flat)


def test_the_model_section_is_the_checkpoints_network_config():
    from facegan.architecture import NetworkConfig

    cfg = load_config(overrides={"model.g_width": 32, "train.loss": "dcgan"})
    assert type(cfg.model) is NetworkConfig
    assert cfg.model == NetworkConfig(g_width=32, d_norm="batch")
    assert cfg.model.network() is cfg.model  # what the trainer builds and checkpoints
    # The flat params and the nested dict keep their keys.
    assert {k: v for k, v in cfg.to_flat_dict().items() if k.startswith("model.")} == {
        "model.image_size": 80, "model.latent_dim": 128, "model.g_width": 32, "model.d_width": 64,
        "model.g_norm": "batch", "model.d_norm": "batch"}


def test_a_stored_config_reads_back_and_takes_validated_overrides():
    from facegan.config import Config, with_overrides

    # The "config" of a checkpoint written before the model section became NetworkConfig.
    stored = load_config(overrides={"model.image_size": 32, "train.epochs": 4}).to_dict()
    assert stored["model"] == {"image_size": 32, "latent_dim": 128, "g_width": 64, "d_width": 64,
                               "g_norm": "batch", "d_norm": "instance"}
    cfg = with_overrides(Config.from_dict(stored), {"train.epochs": 9})
    assert cfg.train.epochs == 9 and cfg.model.image_size == 32 and cfg.to_dict()["model"] == stored["model"]
    for overrides, message in (({"train.epochs": 0}, "train.epochs must be positive"),
                               ({"train.epochs": "many"}, "train.epochs must be int"),
                               ({"model.d_norm": "batch"}, "invalid with wgan-gp"),
                               ({"train.nope": 1}, "unknown config key 'train.nope'")):
        with pytest.raises(FaceganError, match=message):
            with_overrides(Config.from_dict(stored), overrides)


def test_network_validation_is_one_place():
    from facegan.architecture import NetworkConfig

    with pytest.raises(FaceganError, match="model.d_norm must be one of batch, instance, none; got 'auto'"):
        NetworkConfig(d_norm="auto").validate()  # an unresolved config is never built or stored
    assert NetworkConfig(d_norm="auto").resolve("wgan").d_norm == "batch"
    with pytest.raises(FaceganError, match="model.latent_dim must be a positive integer, got 0"):
        load_config(overrides={"model.latent_dim": 0})
