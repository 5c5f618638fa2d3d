"""What every result the experiments write records about how it was made.

A stored figure is only worth as much as knowing what produced it. Each result file records:

- **commit**: ``git rev-parse HEAD`` of the checkout the experiment ran from, with ``+dirty``
  when its tree has uncommitted changes outside ``experiments/results/`` (results written there
  by earlier runs do not make the code dirty), or ``unknown`` outside a git checkout;
- **rule**: the collapse and memorisation rules' parameters, read from the detectors themselves
  (their keyword defaults and their modules' public constants, such as the wobble window), so
  a result made under an earlier rule says so even after the rule changes;
- **command**: the command line that made it, as ``python -m <module> <arguments>``;
- **date**: when it started (UTC);
- **machine**: the CPU model, torch's version, thread count and CPU kernels (its capability and
  oneDNN version), and the GPU when there is one. A GAN's training is chaotic: the same code and
  seed trained with another thread count or on another CPU (oneDNN picks its kernels and blocking
  by the CPU) is another run, with other ground-truth modes (``experiments/collapse/reproduce.py``).

:func:`collect` gathers them once, when a script starts (the code that ran is the code checked
out then). JSON results carry them under ``"provenance"``, markdown results end with a Provenance
list (:func:`markdown_lines`), and text results (a script's printed output, saved) start with
``# commit: ...`` / ``# command: ...`` lines (:func:`header`).

Example:
    >>> record = collect("experiments.bench_train", ["--device", "cuda"])  # doctest: +SKIP
    >>> record["command"]  # doctest: +SKIP
    'python -m experiments.bench_train --device cuda'
"""

from __future__ import annotations

import inspect
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

# The checkout this package lives in.
REPO_ROOT = Path(__file__).resolve().parents[1]
# Where results are written: changes there do not make the code dirty.
RESULTS_PATH = "experiments/results"


def commit(root: Path = REPO_ROOT) -> str:
    """The checked-out commit of ``root`` (a repository's top folder), ``+dirty`` with uncommitted
    changes outside ``experiments/results/`` (untracked files count, ignored ones do not), or
    ``unknown`` when ``root`` is not a git checkout or git is missing."""
    try:
        head = _git(root, "rev-parse", "HEAD")
        changes = _git(root, "status", "--porcelain", "--", ".", f":(exclude){RESULTS_PATH}")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if changes else "")


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()


def _keyword_defaults(function) -> dict:
    return {name: parameter.default for name, parameter in inspect.signature(function).parameters.items()
            if parameter.default is not inspect.Parameter.empty}


def _constants(module: ModuleType) -> dict:
    """A module's public settings: upper-case names bound to plain values."""
    return {name: value for name, value in vars(module).items()
            if name.isupper() and not name.startswith("_") and isinstance(value, (bool, int, float, str, tuple))}


def rule_parameters() -> dict:
    """The collapse and memorisation rules as they are now.

    ``{"evaluation.collapse.detect_collapse": {keyword: default}, "evaluation.collapse.WOBBLE_WINDOW": 6,
    ...}``: each detector's keyword defaults, and its module's public constants by their full names.
    """
    from evaluation import collapse, memorisation

    rule = {}
    for module, detector in ((collapse, collapse.detect_collapse), (memorisation, memorisation.detect_memorisation)):
        rule[f"{module.__name__}.{detector.__name__}"] = _keyword_defaults(detector)
        rule.update({f"{module.__name__}.{name}": value for name, value in _constants(module).items()})
    return rule


def machine() -> dict:
    """What a trained figure depends on besides the code: the CPU, torch and its kernels, the GPU."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass  # not Linux: platform's name stays
    found = re.search(r"(?:MKL-DNN|oneDNN) v(\S+)", torch.__config__.show())
    onednn = found.group(1) if found else "none"
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn": onednn,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def machine_text(record: dict) -> str:
    """The machine on one line: ``AMD EPYC ... (2 cores), torch 2.14.1, 2 threads, AVX512, oneDNN 3.12.0``."""
    m = record.get("machine")
    if not m:
        return "not recorded"
    return (f"{m['cpu']} ({m['cpu_count']} cores), torch {m['torch']}, {m['torch_threads']} threads, "
            f"{m['cpu_capability']}, oneDNN {m['onednn']}" + (f", GPU {m['gpu']}" if m["gpu"] else ""))


def command(module: str, argv: Sequence[str]) -> str:
    """The command line that runs ``module`` with ``argv``, as typed from the repository root."""
    return shlex.join(["python", "-m", module, *map(str, argv)])


def collect(module: str, argv: Sequence[str] | None = None, *, root: Path = REPO_ROOT) -> dict:
    """Everything a result records about its making (``argv`` defaults to the process's arguments).

    Args:
        module: the script's module name (``__spec__.name``: ``experiments.collapse.benchmark``).
        argv: the arguments it was given, without the program name.
        root: the checkout whose commit is recorded.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    return {
        "commit": commit(root),
        "command": command(module, argv),
        "rule": rule_parameters(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
    }


def announce(module: str, argv: Sequence[str] | None = None) -> dict:
    """:func:`collect`, with :func:`header` printed first thing on standard output: a script's printed
    output, kept as a text result, starts with its provenance."""
    record = collect(module, argv)
    print(header(record), flush=True)
    return record


def rule_text(rule: dict) -> str:
    """The rule on one line: ``evaluation.collapse.detect_collapse(patience=2, ...);
    evaluation.collapse.WOBBLE_WINDOW=6; ...``."""
    return "; ".join(f"{name}({', '.join(f'{k}={v!r}' for k, v in value.items())})" if isinstance(value, dict)
                     else f"{name}={value!r}" for name, value in rule.items())


def header(record: dict) -> str:
    """``# key: value`` lines for the top of a text result (a script's saved output)."""
    return "\n".join([f"# commit: {record['commit']}", f"# command: {record['command']}",
                      f"# rule: {rule_text(record['rule'])}", f"# date: {record['date']}",
                      f"# machine: {machine_text(record)}"])


def markdown_lines(record: dict) -> list[str]:
    """A Provenance section for the end of a markdown result."""
    return ["", "## Provenance", "",
            f"- commit: `{record['commit']}`",
            f"- command: `{record['command']}`",
            f"- rule: `{rule_text(record['rule'])}`",
            f"- date: {record['date']}",
            f"- machine: {machine_text(record)}"]

