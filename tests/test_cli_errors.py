"""What a new user sees when something is wrong, through the real `facegan` command: usage errors,
unreadable files, the hints it prints, and the README's synopses against each command's --help."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CHECKOUT, FACEGAN

README = (CHECKOUT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "command, args, option",
    [
        ("generate", ["-n", "0", "--out", "out"], "-n"),
        ("train", ["--loss", "foo"], "--loss"),
        ("serve", ["--port", "99999"], "--port"),
    ],
)
def test_usage_errors_exit_2_with_a_usage_block(cli, tmp_path, command, args, option):
    proc = cli(command, *args, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    # As the README's "Commands" section says.
    assert lines[0] == f"Usage: facegan {command} [OPTIONS]", proc.stderr
    assert lines[1] == f"Try 'facegan {command} --help' for help.", proc.stderr
    assert lines[-1].startswith(f"Error: Invalid value for '{option}'"), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
    assert "is a usage error: a `Usage:` line and a `Try 'facegan COMMAND --help' for help.` line" in README


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
    evaluate_line = next(line for line in proc.stdout.splitlines() if "facegan evaluate --run latest" in line)
    assert "downloads weights once" in evaluate_line and "offline: --features random" in evaluate_line


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
