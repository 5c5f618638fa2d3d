"""What a new user sees when something is wrong, through the real `facegan` command: usage errors,
unreadable files, the hints it prints, and the README's synopses against each command's --help."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CHECKOUT, FACEGAN

README = (CHECKOUT / "README.md").read_text(encoding="utf-8")


# One rule: every option value outside a range known when the options are parsed is a usage error.
@pytest.mark.parametrize(
    "command, args, option",
    [
        ("generate", ["-n", "0", "--out", "out"], "-n"),
        ("generate", ["--truncation", "0", "--out", "out"], "--truncation"),
        ("generate", ["--truncation", "nan", "--out", "out"], "--truncation"),
        ("generate", ["--seed", "-1", "--out", "out"], "--seed"),
        ("train", ["--loss", "foo"], "--loss"),
        ("train", ["--epochs", "-3"], "--epochs"),
        ("train", ["--batch-size", "0"], "--batch-size"),
        ("train", ["--image-size", "33"], "--image-size"),
        ("train", ["--num-images", "0"], "--num-images"),
        ("train", ["--checkpoint-every", "0"], "--checkpoint-every"),
        ("train", ["--sample-every", "0"], "--sample-every"),
        ("train", ["--seed", "-1"], "--seed"),
        ("train", ["--stop-patience", "0"], "--stop-patience"),
        ("evaluate", ["--num-samples", "9", "--samples", "out", "--real", "synthetic"], "--num-samples"),
        ("prepare", ["synthetic", "--out", "out/x.pt", "--size", "7"], "--size"),
        # The built-in faces' own minimum, whichever comes first on the line.
        ("prepare", ["--size", "15", "synthetic", "--out", "out/x.pt"], "--size"),
        ("prepare", ["synthetic", "--out", "out/x.pt", "--per-identity", "0"], "--per-identity"),
        ("prepare", ["synthetic", "--out", "out/x.pt", "--limit", "0"], "--limit"),
        ("prepare", ["synthetic", "--out", "out/x.pt", "--crop", "1.5"], "--crop"),
        ("prepare", ["synthetic", "--out", "out/x.pt", "--seed", "-1"], "--seed"),
        ("prepare", ["synthetic", "--out", "out/x.pt", "--holdout", "-1"], "--holdout"),
        ("encoder", ["--out", "out/e.pt2", "--image-size", "15"], "--image-size"),
        ("encoder", ["--out", "out/e.pt2", "--num-images", "1"], "--num-images"),
        ("encoder", ["--out", "out/e.pt2", "--data-seed", "-1"], "--data-seed"),
        ("encoder", ["--out", "out/e.pt2", "--epochs", "0"], "--epochs"),
        ("serve", ["--port", "99999"], "--port"),
    ],
)
def test_usage_errors_exit_2_with_a_usage_block(cli, tmp_path, command, args, option):
    proc = cli(command, *args, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    # As the README's "Commands" section says.
    assert re.fullmatch(rf"Usage: facegan {command} \[OPTIONS\]( SOURCE)?", lines[0]), proc.stderr
    assert lines[1] == f"Try 'facegan {command} --help' for help.", proc.stderr
    assert lines[-1].startswith(f"Error: Invalid value for '{option}'"), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
    assert "is a usage error: a `Usage:` line and a `Try 'facegan COMMAND --help' for help.` line" in README
    assert "`train --epochs -3`" in README[README.index("## Commands"):]


def test_values_from_set_or_a_config_file_stay_config_errors(cli, tmp_path):
    (tmp_path / "bad.toml").write_text("[train]\nepochs = -3\n")
    for args in (["--set", "train.epochs=-3"], ["--config", "bad.toml"]):
        assert one_error_line(cli("train", *args, check=False)) == "Error: train.epochs must be positive, got -3"
    assert "values from a config file or `--set` are errors of the first kind" in " ".join(README.split())


def test_the_ranges_options_check_are_the_librarys():
    from facegan import folders, synthetic
    from facegan.cli import common

    assert common.MIN_PREPARE_SIZE == folders.MIN_PREPARE_SIZE
    assert common.MIN_SYNTHETIC_SIZE == synthetic.MIN_SYNTHETIC_SIZE


def one_error_line(proc) -> str:
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    return lines[0]


def test_files_that_are_no_checkpoint_are_one_clear_error(cli, tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    # Before: "list index out of range" for a text file, ": EOFError" for an empty one.
    for model, reason in (("/etc/passwd", "it is not a PyTorch file"), ("empty.pt", "the file is empty")):
        line = one_error_line(cli("generate", "--model", model, "--out", "out", check=False))
        assert line == f"Error: {model} is not a readable facegan checkpoint: {reason}"
    assert not (tmp_path / "out").exists()


def test_a_feature_network_given_as_model_is_named_with_what_model_takes(cli, tmp_path):
    from evaluation.encoder import Encoder, save_encoder

    # The files `facegan encoder` writes: a torch.export program (.pt2) and TorchScript (.pt).
    for name, kind, features in (("encoder.pt2", "a torch.export program", "export"),
                                 ("encoder.pt", "a TorchScript program", "torchscript")):
        save_encoder(Encoder(width=4), tmp_path / name)
        # Before: "is not a readable facegan checkpoint: it is damaged (PytorchStreamReader failed ...)".
        line = one_error_line(cli("generate", "--model", name, "--out", "out", check=False))
        assert line.startswith(f"Error: {name} is {kind} (a network saved with torch."), line
        assert f"such as a feature network for `--features {features}:PATH`" in line
        assert "), not a generator checkpoint; " in line
        assert line.endswith("--model takes a generator checkpoint (a run's generator.pt, or the model folder "
                             "holding it), models:/NAME@ALIAS, models:/m-<id>, or runs:/RUN_ID[/EPOCH]"), line
        assert "damaged" not in line
    assert not (tmp_path / "out").exists()
    # Where a dataset is read, the same file is named as what it is too.
    line = one_error_line(cli("encoder", "--data", "encoder.pt2", "--out", "e.pt2", "--quiet", check=False))
    assert line == ("Error: cannot read 'encoder.pt2' as a facegan dataset: it is a torch.export program (a network "
                    "saved with torch.export.save, such as a feature network for `--features export:PATH` or another "
                    "code's generator for `evaluate --checkpoints`), not data saved with torch.save"), line


def test_a_file_that_is_no_inception_weights_is_one_clear_error(cli, tmp_path):
    for epoch in (1, 2):
        (tmp_path / "samples" / str(epoch)).mkdir(parents=True)
        for i in range(3):
            pixels = np.random.default_rng(epoch * 10 + i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "samples" / str(epoch) / f"{i}.png")
    # Before: an IndexError.
    line = one_error_line(cli("evaluate", "--samples", "samples", "--real", "synthetic", "--features", "inception",
                              "--inception-weights", "/etc/passwd", "--quiet", check=False))
    assert line.startswith("Error: cannot read Inception weights /etc/passwd: it is not a PyTorch file."), line
    named = re.search(r"the FID Inception-v3 state_dict (\S+\.pth)", line).group(1)
    offline = README[README.index("## Offline use"):]
    assert f"copy `{named}`" in offline  # the README names the file the message asks for


def test_hints_name_commands_that_work_as_printed(cli):
    mlflow = Path(FACEGAN).with_name("mlflow")
    proc = cli("--help")
    assert f"{mlflow} ui --backend-store-uri sqlite:///mlflow.db" in proc.stdout
    assert not any(line.strip().startswith("mlflow ") for line in proc.stdout.splitlines())
    # The offline path first (a run scored in `random`, then in an encoder's space), the download
    # of standard FID's weights after it, each line saying which it is.
    lines = proc.stdout.splitlines()
    offline = [i for i, line in enumerate(lines) if line.rstrip().endswith("(offline)")]
    download = [i for i, line in enumerate(lines) if "--features inception" in line]
    assert len(download) == 1 and "downloads the Inception weights once" in lines[download[0]]
    assert "needs a download" in lines[download[0] - 1]
    offline_commands = " ".join(lines[i] for i in offline)
    assert "--evaluate random" in offline_commands and "facegan encoder" in offline_commands
    assert "--features export:encoder.pt2" in offline_commands
    assert max(offline) < download[0]
    assert "offline" not in lines[download[0]]


COMMANDS = ["prepare", "train", "evaluate", "sync", "encoder", "generate", "serve"]


def readme_synopsis(command: str) -> str:
    """The README's synopsis of ``command``: its lines in the command's first code block (prepare:
    its options table)."""
    heading = re.search(rf"^### .*`facegan {command}[ `].*$", README, re.M)
    assert heading, f"no README section for facegan {command}"
    section = README[heading.end():]
    section = section[:re.search(r"^##", section, re.M).start()]
    if command == "prepare":
        return "\n".join(line.split("|")[1] for line in section.splitlines() if line.startswith("| `"))
    block = section[section.index("```\n") + 4:]
    block = block[:block.index("```")]
    lines, keep = [], False
    for line in block.splitlines():
        if line.startswith("facegan "):
            keep = line.startswith(f"facegan {command}")
        if keep:
            lines.append(line)
    return "\n".join(lines)


def test_the_readme_synopses_list_every_option_of_each_command(cli):
    for command in COMMANDS:
        help_text = cli(command, "--help").stdout
        options_part = help_text[help_text.index("Options:"):]
        options = set(re.findall(r"^\s{2}(-[a-z]\b|--[a-z0-9-]+)", options_part, re.M)) - {"-h", "--help"}
        documented = set(re.findall(r"(?<![\w-])(-[a-z]\b|--[a-z0-9-]+)", readme_synopsis(command)))
        assert documented == options, (command, sorted(options - documented), sorted(documented - options))
