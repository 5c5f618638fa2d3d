"""The collapse benchmark (issue 4): facegan's collapse scoring against ground-truth mode counts.

- ``study.py``: the study both benchmarks run (ladders, training histories, targets, reports).
- ``benchmark.py``: at 32 x 32 on the CPU, runs trained into a real MLflow store
  (``python -m experiments.collapse.benchmark [--quick]``; also ``--online`` and ``--copying``).
- ``benchmark_gpu.py``: at 80 x 80 on a bare GPU machine, runs in memory, no MLflow.
- ``ground_truth.py``: the classifiers that count a sample set's modes.
- ``ground_truth_noise.py``: how finely those counts resolve, on a stored result's checkpoints.
- ``replay.py``: today's collapse and memorisation rules on a stored result's scores, in seconds
  (``--against``: a benchmark run again against the stored one).
- ``copying.py``: the copy test against degraded novel faces, 0-10% copied sets and long stable
  histories, with the old distance test and Meehan et al.'s C_T beside it (issue 26).
"""
