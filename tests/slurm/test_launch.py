"""`pretrain launch` and slurm/train.sbatch on a real two-node Slurm cluster (tests/slurm/conftest.py):
training on 2 nodes x 2 tasks with gloo, preemption by USR1 with checkpoint + requeue + exact
resume, and a crashed rank ending the job with the rank named.

The uninterrupted and the preempted jobs are submitted together (the cluster has room for both):
on a 2-core machine Python start-up dominates, and running them side by side halves the wait.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pretrain.cli import main
from tests.pretrain.helpers import documents, read_metrics, tiny_overrides, write_megatron

STEPS = 40  # long enough (several seconds) that a signal sent after step 2 lands mid-run


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokens")
    write_megatron(str(d / "en/man"), documents(60, max_bytes=1500), per_shard=25)
    return [str(d / "en")]


def launch(
    run_dir: Path,
    tokens,
    *extra: str,
    steps: int = STEPS,
    nodes: int = 2,
    procs: int = 2,
    capsys=None,
    **over,
) -> str:
    """Submit through the CLI, as a user would; returns the job id it printed."""
    args = [
        "launch",
        *tiny_overrides(run_dir, tokens, steps=steps, **over),
        "--nodes",
        str(nodes),
        "--procs-per-node",
        str(procs),
        "--time",
        "00:10:00",
        "--signal-seconds",
        "60",
        *extra,
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    m = re.search(r"submitted job (\d+)", out)
    assert m, out
    assert f"log: {run_dir / 'logs'}/train-{m.group(1)}.out" in out
    return m.group(1)


@pytest.fixture(scope="module")
def cluster_jobs(slurm_cluster, tokens, tmp_path_factory):
    """An uninterrupted run, one to be preempted and one under torchrun (same config), and an
    endless one whose rank will be killed: submitted at once, they run side by side (the test
    nodes have 6 CPUs each: 2 + 2 + 1 + 1 tasks)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SLURM_CONF", str(slurm_cluster.conf))
    root = tmp_path_factory.mktemp("runs")
    jobs = {}
    try:
        for name in ("straight", "preempted"):
            cap = _Capture()
            with cap:
                jobs[name] = (launch(root / name, tokens, capsys=cap), root / name)
        cap = _Capture()
        with cap:  # the other launcher: one torchrun per node, c10d rendezvous on the first node
            jobs["torchrun"] = (
                launch(root / "torchrun", tokens, "--launcher", "torchrun", capsys=cap),
                root / "torchrun",
            )
        cap = _Capture()
        with cap:  # runs until test_crashed_rank... (the next test) kills one of its ranks
            jobs["crash"] = (
                launch(root / "crash", tokens, steps=100000, nodes=2, procs=1, capsys=cap),
                root / "crash",
            )
    finally:
        mp.undo()
    # Signal the second job mid-run here, not in its test: the tests run one after the other and
    # both jobs would have ended by the time the preemption test began.
    job, run_dir = jobs["preempted"]
    t0 = time.monotonic()
    while len(read_metrics(run_dir) if (run_dir / "metrics.jsonl").exists() else []) < 2:
        assert slurm_cluster.job(job)["JobState"] in ("PENDING", "RUNNING"), _log(run_dir, job)[
            -3000:
        ]
        assert time.monotonic() - t0 < 200, "training did not reach step 2"
        time.sleep(0.1)
    # What Slurm does before the time limit with --signal=B:USR1@SECONDS.
    slurm_cluster.run("scancel", "--signal=USR1", "--batch", job, check=True)
    return jobs


class _Capture:
    """capsys for a module-scoped fixture: collects what `main` prints to stdout."""

    def __enter__(self):
        import contextlib
        import io

        self.buf = io.StringIO()
        self._cm = contextlib.redirect_stdout(self.buf)
        self._cm.__enter__()
        return self

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)

    def readouterr(self):
        class R:
            pass

        r = R()
        r.out = self.buf.getvalue()
        return r


def _log(run_dir: Path, job: str) -> str:
    p = run_dir / "logs" / f"train-{job}.out"
    return p.read_text(errors="replace") if p.exists() else f"(no log at {p})"


def test_dry_run_prints_a_script_for_nodes_x_procs(tmp_path, tokens, capsys):
    ov = tiny_overrides(tmp_path / "r", tokens, steps=4)
    assert (
        main(
            [
                "launch",
                *ov,
                "--nodes",
                "2",
                "--procs-per-node",
                "2",
                "--dry-run",
                "--partition",
                "cpu",
                "--account",
                "lab",
                "--time",
                "2:00:00",
            ]
        )
        == 0
    )
    script = capsys.readouterr().out
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --partition=cpu",
        "#SBATCH --account=lab",
        "#SBATCH --time=2:00:00",
        "#SBATCH --signal=B:USR1@300",
        "#SBATCH --requeue",
        f"#SBATCH --output={tmp_path / 'r'}/logs/train-%j.out",
        "LAUNCHER=srun",
        "NPROC_PER_NODE=2",
    ):
        assert line in script.splitlines(), line
    assert "dp_shard=4" in script and "(world 4)" in script  # the layout was resolved for 2 x 2
    assert "resume=auto" in script  # a requeued job must continue, not refuse its own run folder
    assert not (tmp_path / "r").exists()  # nothing submitted, nothing written
    syntax = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert syntax.returncode == 0, syntax.stderr

    assert (
        main(
            [
                "launch",
                *ov,
                "--nodes",
                "2",
                "--gpus-per-node",
                "2",
                "--launcher",
                "torchrun",
                "--dry-run",
            ]
        )
        == 0
    )
    script = capsys.readouterr().out.splitlines()
    assert "#SBATCH --ntasks-per-node=1" in script and "#SBATCH --gpus-per-node=2" in script
    assert "NPROC_PER_NODE=2" in script and "LAUNCHER=torchrun" in script


def test_layout_is_checked_for_the_allocation_before_submitting(tmp_path, tokens, capsys):
    """tp=3 does not divide 2 x 2 ranks: rejected before submitting, exit 2, with the engine's
    own message (resolve_layout) and a layout that fits."""
    from configcore import ConfigError
    from parallel.layout import resolve_layout
    from pretrain.config import compose_config

    ov = tiny_overrides(tmp_path / "r", tokens, steps=4, **{"parallel.tp": 3})
    assert main(["launch", *ov, "--nodes", "2", "--procs-per-node", "2", "--dry-run"]) == 2
    err = capsys.readouterr().err
    run = compose_config(ov)
    with pytest.raises(ConfigError) as engine_err:
        resolve_layout(run.parallel, 4, run.model, 8, 2, 32)
    assert str(engine_err.value) in err
    suggested = err.split("a valid layout for world_size=4: ")[1].split()
    assert (
        main(["launch", *ov, *suggested, "--nodes", "2", "--procs-per-node", "2", "--dry-run"]) == 0
    )
    assert main(["launch", *ov, "--nodes", "2", "--dry-run"]) == 2
    assert "--gpus-per-node" in capsys.readouterr().err


def test_time_limits_and_signal_lead(tmp_path, tokens, capsys):
    from pretrain.launch import _time_seconds

    # Slurm's --time formats; the USR1 lead time must fit inside the limit.
    assert [_time_seconds(t) for t in ("30", "5:30", "2:00:00", "1-12", "1-0:30", "1-0:0:5")] == [
        1800,
        330,
        7200,
        129600,
        88200,
        86405,
    ]
    ov = tiny_overrides(tmp_path / "r", tokens, steps=4)
    assert (
        main(
            [
                "launch",
                *ov,
                "--nodes",
                "1",
                "--procs-per-node",
                "1",
                "--time",
                "4",
                "--signal-seconds",
                "300",
                "--dry-run",
            ]
        )
        == 2
    )
    assert "--signal-seconds=300 is not shorter than --time=4" in capsys.readouterr().err
    assert (
        main(
            [
                "launch",
                *ov,
                "--nodes",
                "1",
                "--procs-per-node",
                "1",
                "--time",
                "4 hours",
                "--dry-run",
            ]
        )
        == 2
    )
    assert "use Slurm's format" in capsys.readouterr().err


def _pid_of_rank(job: str, rank: int) -> int:
    """The training process of one rank of our job, from /proc (the task's environment)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = dict(
                kv.split("=", 1)
                for kv in (d / "environ").read_bytes().decode(errors="replace").split("\0")
                if "=" in kv
            )
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (
            env.get("SLURM_JOB_ID") == job
            and env.get("SLURM_PROCID") == str(rank)
            and "pretrain.cli train" in cmd
        ):
            return int(d.name)
    raise LookupError(f"no training process of rank {rank} in job {job}")


def test_crashed_rank_ends_the_job_and_is_named(cluster_jobs, slurm_cluster):
    """One rank dies (SIGKILL, as on a lost node): the job must end soon with the rank named,
    not sit in a collective until the timeout. First of the cluster tests: the endless job would
    otherwise train on two ranks, competing for the cores, through every other job's wait."""
    slurm_env = slurm_cluster
    job, run_dir = cluster_jobs["crash"]
    t0 = time.monotonic()
    while not ((run_dir / "metrics.jsonl").exists() and read_metrics(run_dir)):
        assert slurm_env.job(job)["JobState"] in ("PENDING", "RUNNING"), _log(run_dir, job)[-3000:]
        assert time.monotonic() - t0 < 200, "training did not start"
        time.sleep(0.2)
    os.kill(_pid_of_rank(job, 1), signal.SIGKILL)
    t_kill = time.monotonic()
    # Bound: half the 600 s collective timeout, so ending in time proves the job ended because
    # the rank died, not because a collective timed out; loose enough for a loaded 2-core CI box.
    info = slurm_env.wait_job(job, timeout=300)
    took = time.monotonic() - t_kill
    log = _log(run_dir, job)
    assert info["JobState"] == "FAILED", log[-3000:]
    assert re.search(r"task 1: (Killed|Exited)", log), log[-3000:]
    assert took < 300, f"the job took {took:.0f}s to end after rank 1 died"


def test_launch_trains_on_two_nodes_and_checkpoints(cluster_jobs, slurm_cluster):
    job, run_dir = cluster_jobs["straight"]
    info = slurm_cluster.wait_job(job, timeout=240)
    log = _log(run_dir, job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
    assert info["NodeList"] == "n[1-2]" and info["NumTasks"] == "4"
    assert "(world 4)" in log
    for rank in range(4):  # every rank ran and ended cleanly, two on each node
        assert f"{rank}: done: step {STEPS}" in log, log[-3000:]
    steps = [m["step"] for m in read_metrics(run_dir)]
    assert steps == list(range(1, STEPS + 1))
    assert (run_dir / "checkpoints" / f"step_{STEPS:07d}" / "meta.json").exists()


def test_usr1_checkpoints_requeues_and_resumes_exactly(cluster_jobs, slurm_cluster):
    job, run_dir = cluster_jobs["preempted"]  # signalled with USR1 after step 2 by the fixture
    info = slurm_cluster.wait_job(job, timeout=300)
    log = _log(run_dir, job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-4000:]
    assert info["Restarts"] == "1", log[-4000:]
    m = re.search(r"stopping after step (\d+)", log)
    assert m, log[-4000:]
    stop = int(m.group(1))
    assert stop < STEPS, f"the signal arrived only after the last step ({stop}); nothing was tested"
    # Every rank of the first attempt exited on its own (status 0, each said where it stopped),
    # then the batch script requeued: nothing was killed mid-exit, no line was lost.
    first = log.split("attempt 2 of job")[0]
    for rank in range(4):
        assert f"{rank}: stopped: step {stop} of {STEPS} (preemption" in first, first[-3000:]
    assert "training step exited with status 0" in first, first[-3000:]
    assert f"stopped after step {stop} with a checkpoint" in first
    assert f"requeueing Slurm job {job}" in first, first[-3000:]
    assert f"resumed from {run_dir / 'checkpoints'}/step_{stop:07d}" in log
    assert "attempt 2 of job" in log

    straight_job, straight_dir = cluster_jobs["straight"]
    slurm_cluster.wait_job(straight_job, timeout=240)
    want = {m["step"]: m["loss"] for m in read_metrics(straight_dir)}
    got = {m["step"]: m["loss"] for m in read_metrics(run_dir)}
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):  # bitwise, before and after the interruption
        assert got[step] == want[step], (
            f"step {step} (stopped after {stop}): {got[step]} != {want[step]}"
        )


def test_torchrun_launcher_gives_the_srun_losses(cluster_jobs, slurm_cluster):
    job, run_dir = cluster_jobs["torchrun"]
    info = slurm_cluster.wait_job(job, timeout=300)
    log = _log(run_dir, job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
    assert info["NumTasks"] == "2" and "(world 4)" in log  # 2 agents, 4 workers
    straight_job, straight_dir = cluster_jobs["straight"]
    slurm_cluster.wait_job(straight_job, timeout=240)
    assert read_metrics(run_dir) and (
        [m["loss"] for m in read_metrics(run_dir)]
        == [m["loss"] for m in read_metrics(straight_dir)]
    )


def test_export_sbatch_writes_every_checkpoint_as_hf(cluster_jobs, slurm_cluster, tmp_path):
    straight_job, run_dir = cluster_jobs["straight"]
    slurm_cluster.wait_job(straight_job, timeout=240)
    out = tmp_path / "hf"
    script = Path(__file__).resolve().parents[2] / "slurm" / "export.sbatch"
    res = slurm_cluster.run(
        "sbatch",
        "--parsable",
        f"--output={tmp_path}/export-%j.out",
        f"--export=ALL,RUN_DIR={run_dir},OUT={out}",
        "--cpus-per-task=1",
        f"--chdir={script.parents[1]}",
        str(script),
        check=True,
    )
    job = res.stdout.strip().split(";")[0]
    info = slurm_cluster.wait_job(job, timeout=240)
    log = (tmp_path / f"export-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED", log[-3000:]
    assert f"wrote Hugging Face model of step {STEPS}" in log
    assert (out / f"step{STEPS}" / "config.json").exists(), sorted(p.name for p in out.iterdir())
