"""facegan's benchmarks and checks: scripts run as modules from the repository root.

``python -m experiments.<script> [options]`` (``PYTHONPATH=.`` is not needed from the root: ``-m``
puts the current folder on the path). The tests import them the same way (pytest's
``pythonpath = ["."]``). Each script's docstring says what it measures and how to run it;
``experiments/RESULTS.md`` keeps every figure they measured, and ``experiments/results/README.md``
which command made each stored result.

- ``collapse/``: the collapse benchmark against ground-truth mode counts (``study.py``, the one
  runner; ``benchmark.py`` on the CPU, ``benchmark_gpu.py`` on a GPU), its ground truth, and
  tools on its stored results (``replay.py``, ``ground_truth_noise.py``).
- ``provenance.py``: the commit, rule parameters and command line every result records.
- ``bench_*.py``: speed and robustness measurements; ``check_gpu_training.py``: training on a GPU;
  ``probe_features.py``: whether a feature space sees the benchmark's modes.
- ``servers.py``: a throwaway PostgreSQL cluster and a real ``mlflow server`` (also the team tests').
"""

from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
