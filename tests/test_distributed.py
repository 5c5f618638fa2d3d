"""Training on several processes: two real CPU processes on gloo, started with torchrun.

The workers of the lower-level checks are ``tests/distributed_worker.py``; the end-to-end tests run
the real ``torchrun ... -m facegan train`` against a real MLflow sqlite store.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from conftest import TINY_TRAIN, assert_clean_error, run_id_of
from distributed_worker import CRITIC_BATCH_PER_RANK, TRAININGS, critic_batch, critic_loss, critic_network
from facegan.config import load_config
from facegan.distributed import Processes
from facegan.errors import FaceganError
from facegan.training import Schedule

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
WORKER = str(Path(__file__).with_name("distributed_worker.py"))


def torchrun(*args, cwd, timeout=240, check=True, **popen):
    """``torchrun --standalone --nproc_per_node=2 ARGS`` (two processes on this machine)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [TORCHRUN, "--standalone", "--nproc_per_node=2", *map(str, args)]
    if popen:
        return subprocess.Popen(command, cwd=cwd, env=env, text=True, **popen)
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


# -- one process's view --------------------------------------------------------------------------

def test_processes_come_from_torchruns_environment():
    assert Processes.from_environment({}) == Processes(1, 0, 0)
    procs = Processes.from_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (procs.world_size, procs.rank, procs.local_rank, procs.is_main, procs.distributed) == (4, 3, 1, False, True)
    with pytest.raises(FaceganError, match="WORLD_SIZE='two' is not an integer"):
        Processes.from_environment({"WORLD_SIZE": "two"})
    with pytest.raises(FaceganError, match="inconsistent"):
        Processes.from_environment({"WORLD_SIZE": "2", "RANK": "2"})


def test_rank_zero_keeps_the_runs_seed_and_other_ranks_get_their_own():
    seeds = [Processes(4, rank).seed(7) for rank in range(4)]
    assert seeds[0] == 7  # one process trains exactly as before
    assert len(set(seeds)) == 4
    assert seeds == [Processes(4, rank).seed(7) for rank in range(4)]  # derived, not drawn
    assert Processes(4, 1).seed(8) != seeds[1]


def test_the_minibatch_must_split_evenly_among_the_processes():
    assert load_config(overrides={"train.batch_size": 64, "train.world_size": 4}).train.batch_size == 64
    with pytest.raises(FaceganError, match=r"train.batch_size \(63\) is the whole minibatch.*multiple of 2"):
        load_config(overrides={"train.batch_size": 63, "train.world_size": 2})


def test_lazy_penalty_on_every_kth_critic_step_and_resumable():
    schedule = Schedule("fixed", n_critic=5, gp_every=4)
    due = []
    for _ in range(12):
        if schedule.forced() == "d":
            due.append(schedule.penalty_due())
        schedule.done(schedule.forced())
    assert due == [True, False, False, False, True, False, False, False, True, False]
    resumed = Schedule("fixed", n_critic=5, gp_every=4)
    resumed.restore(schedule.state())
    assert resumed.state() == schedule.state()
    with pytest.raises(FaceganError, match="gp_every applies to the wgan-gp penalty only"):
        load_config(overrides={"train.loss": "dcgan", "train.gp_every": 4})


def test_settings_that_only_torchrun_may_set_are_refused(cli):
    proc = cli("train", *TINY_TRAIN, "--set", "train.world_size=2", check=False)
    assert_clean_error(proc, r"train.world_size is the number of training processes, set by torchrun \(1 here\)")
    assert proc.returncode == 1


def test_sync_batchnorm_is_refused_on_the_cpu_before_a_run_starts(cli, tmp_path):
    uri = f"sqlite:///{tmp_path / 'sync.db'}"
    proc = cli("train", *TINY_TRAIN, "--loss", "dcgan", "--set", "train.sync_batchnorm=true", "--tracking-uri", uri,
               check=False)
    assert_clean_error(proc, "train.sync_batchnorm needs CUDA: PyTorch's SyncBatchNorm has no CPU implementation")
    assert not (tmp_path / "sync.db").exists()  # no run was started for it


# -- two processes -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The worker's outputs after one torchrun launch of two processes."""
    out = tmp_path_factory.mktemp("two-ranks")
    torchrun(WORKER, out, cwd=out)
    return out


@pytest.mark.parametrize("loss, schedule", TRAININGS)
def test_two_ranks_end_with_identical_weights(two_ranks, loss, schedule):
    ranks = [torch.load(two_ranks / f"train-{loss}-{schedule}-rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["d_steps"] == ranks[1]["d_steps"] > 0  # the same schedule decisions on both ranks
    for net in ("generator", "discriminator"):
        params = [name for name in ranks[0][net] if not name.endswith(("running_mean", "running_var", "num_batches_tracked"))]
        assert params
        for name in params:  # gradients are averaged over the ranks, so every step is the same step
            assert torch.equal(ranks[0][net][name], ranks[1][net][name]), (net, name)


def test_critic_gradients_on_two_ranks_of_b_equal_one_process_on_2b(two_ranks):
    """WGAN-GP's critic (InstanceNorm: no coupling between samples), penalty included: DDP's
    averaged gradients over two halves equal one process's gradients over the whole batch."""
    critic = critic_network()
    critic_loss(critic, *critic_batch(2 * CRITIC_BATCH_PER_RANK)).backward()
    ranks = [torch.load(two_ranks / f"critic-rank{r}.pt") for r in (0, 1)]
    for name, param in critic.named_parameters():
        for grads in ranks:
            # float32 sums in another order: within 1e-5 of the tensor's largest gradient
            torch.testing.assert_close(grads[name], param.grad, rtol=0, atol=1e-5 * param.grad.abs().max().item())
        assert torch.equal(ranks[0][name], ranks[1][name])


def _wait_for_epochs(client, tmp_path, count: int, timeout: float = 180) -> str:
    """The run's id once it has logged ``count`` epochs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1)
        if (tmp_path / "mlflow.db").exists() and client.get_experiment_by_name("facegan"):
            runs = client.search_runs([client.get_experiment_by_name("facegan").experiment_id])
            if runs and len(client.get_metric_history(runs[0].info.run_id, "d_steps")) >= count:
                return runs[0].info.run_id
    raise AssertionError(f"the training never logged {count} epochs")


@pytest.mark.slow
def test_torchrun_trains_one_mlflow_run_that_ctrl_c_stops_and_resume_continues(tmp_path, cli):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    # Ctrl-C in a terminal reaches torchrun and its processes as one process group.
    job = torchrun("-m", "facegan", "train", *TINY_TRAIN, "--epochs", 5000, "--checkpoint-every", 1,
                   "--tracking-uri", uri, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   start_new_session=True)
    try:
        run_id = _wait_for_epochs(client, tmp_path, 2)
        os.killpg(job.pid, signal.SIGINT)
        stdout, stderr = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert stdout.count("run_id: ") == 1 and run_id_of(subprocess.CompletedProcess([], 0, stdout)) == run_id
    assert "2 processes" in stderr and f"continue with: torchrun ... facegan train --resume {run_id}" in stderr
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.params["train.world_size"] == "2"
    done = len(client.get_metric_history(run_id, "d_steps"))
    for key in ("d_steps", "g_steps", "images_per_s", "accuracy_d"):  # each epoch once, by rank 0 alone
        assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(1, done + 1)), key
    # 24 images in minibatches of 12 (6 on each process): 2 steps an epoch, as on one process
    steps = {key: {m.step: m.value for m in client.get_metric_history(run_id, key)} for key in ("d_steps", "g_steps")}
    assert all(steps["d_steps"][epoch] + steps["g_steps"][epoch] == 2 for epoch in range(1, done + 1))

    # Resumed with its checkpoints scored as they are written: rank 0 scores while the other waits.
    proc = torchrun("-m", "facegan", "train", "--resume", run_id, "--epochs", done + 2, "--tracking-uri", uri,
                    "--evaluate", "random", "--set", "evaluate.num_samples=12", "--quiet", cwd=tmp_path)
    assert run_id_of(proc) == run_id and f"resuming run {run_id} from epoch {done}" in proc.stderr
    assert {done + 1, done + 2} <= {m.step for m in client.get_metric_history(run_id, "random/fid")}
    assert len({m.step for m in client.get_metric_history(run_id, "random/fid")}) == len(
        client.get_metric_history(run_id, "random/fid"))  # each checkpoint scored once
    for key in ("d_steps", "g_steps", "images_per_s"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(1, done + 3)), key
    models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    assert sorted(m.name for m in models) == [f"generator-epoch-{e:04d}" for e in range(1, done + 3)]
    assert client.get_run(run_id).info.status == "FINISHED"

    # Its random streams are per process: it continues on as many processes, not on one.
    proc = cli("train", "--resume", run_id, "--epochs", done + 3, "--tracking-uri", uri, check=False)
    assert_clean_error(proc, f"run {run_id} was trained on 2 process\\(es\\); resume it on as many")


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


@pytest.mark.slow
def test_a_rank_that_dies_ends_the_job_with_a_clear_message(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = torchrun("-m", "facegan", "train", *TINY_TRAIN, "--epochs", 5000, "--tracking-uri", uri, cwd=tmp_path,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    client = MlflowClient(uri)
    try:
        run_id = _wait_for_epochs(client, tmp_path, 2)
        (rank1,) = [pid for pid in _children(job.pid) if _rank_of(pid) == 1]
        os.kill(rank1, signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = job.communicate(timeout=60)
        ended = time.monotonic() - killed
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0
    assert ended < 45, ended  # torchrun's agent ends the survivor; no collective waits for its timeout
    assert "Error: rank 0: training stopped because another training process ended" in stderr
    assert f"--resume {run_id}" in stderr
    assert client.get_run(run_id).info.status == "FAILED"
