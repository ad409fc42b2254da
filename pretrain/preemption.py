"""Stopping cleanly when Slurm says the time is up: checkpoint, then requeue.

Slurm warns a job before its time limit with `--signal=B:USR1@SECONDS` (to the batch shell, which
slurm/train.sbatch turns into a stop file on the shared run folder) or `--signal=USR1@SECONDS` (to
every task); preemption and `scancel` send SIGTERM. Whatever arrives, on whichever rank:

1. the signal handler only sets a flag (nothing else is safe inside a handler, least of all in the
   middle of a collective);
2. after each optimizer step every rank calls `should_stop()`: rank 0 also looks for the stop file,
   and a MAX all-reduce makes every rank agree on the same stop step (signals reach ranks at
   different moments; ranks that stopped at different steps would deadlock in the checkpoint);
3. the training loop writes a full checkpoint at that step and leaves the loop;
4. `finish()`: after a barrier (every rank's shard is on disk) rank 0 asks for the requeue. Under
   slurm/train.sbatch (PRETRAIN_STOPPED_FILE set) rank 0 only writes that file with the stop step,
   every rank exits 0, and the batch script runs `scontrol requeue $SLURM_JOB_ID` once the whole
   step has ended: a requeue kills whatever still runs, so issuing it from a rank that is still
   exiting raced with srun forwarding the ranks' last lines (and with their exit codes). Without a
   batch script to do it (your own job script, torchrun or mpirun under salloc), rank 0 runs
   `scontrol requeue` itself. The requeued job keeps its id, runs the same script with
   resume=auto, and continues from that checkpoint; the loss sequence is the uninterrupted one.

Outside Slurm nothing is requeued: the process exits 0 after the checkpoint and a rerun with
resume=auto continues. PRETRAIN_REQUEUE=0 turns requeueing off (e.g. in your own job scripts).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class Preemption:
    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        device=None,
        stop_file: str | None = None,
        log: Callable[[str], None] = print,
    ):
        self.rank, self.world_size, self.device = rank, world_size, device
        sf = stop_file if stop_file is not None else os.environ.get("PRETRAIN_STOP_FILE", "")
        self.stop_file = Path(sf) if sf else None
        self.log = log
        self.received: str | None = None  # name of the signal that arrived, if any
        self.stopped_at: int | None = None  # the step all ranks agreed to stop after
        self._previous: dict = {}

    # ------------------------------------------------------------------ signals
    def install(self) -> Preemption:
        # signal.signal only works in the main thread; a loop run from another thread (a notebook,
        # a test harness) still stops through the stop file.
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handler)
            # Restart interrupted system calls: a signal landing inside a gloo/NCCL socket read
            # must not turn into an EINTR error in C++ code that does not expect it.
            signal.siginterrupt(sig, False)
        return self

    def uninstall(self) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous = {}

    def _handler(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    # ------------------------------------------------------------------ per step
    def should_stop(self, step: int) -> bool:
        """Collective: every rank calls it after each step, and all get the same answer."""
        local = self.received is not None
        if not local and self.rank == 0 and self.stop_file is not None and self.stop_file.exists():
            local = True
            self.received = f"stop file {self.stop_file}"
        if self.world_size > 1:
            flag = torch.tensor([1 if local else 0], dtype=torch.int32, device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            local = bool(flag.item())
        if local and self.stopped_at is None:
            self.stopped_at = step
            why = self.received or "a stop request on another rank"
            self.log(f"preemption: {why}: stopping after step {step} with a full checkpoint")
        return local

    # ------------------------------------------------------------------ after the checkpoint
    def finish(self, checkpoint_dir: Path | None = None) -> str | None:
        """Call once the checkpoint of the stop step is complete on every rank. Rank 0 hands the
        requeue to the batch script (PRETRAIN_STOPPED_FILE) or requeues the Slurm job itself;
        returns a one-line account of what happened (or None when nothing was requested)."""
        if self.stopped_at is None:
            return None
        if self.world_size > 1:
            dist.barrier()  # every rank's shard written before the job may be killed by the requeue
        if self.rank != 0:
            return None
        if self.stop_file is not None:
            self.stop_file.unlink(missing_ok=True)  # the requeued attempt must not stop at once
        where = f" ({checkpoint_dir})" if checkpoint_dir else ""
        written = f"preemption: checkpoint of step {self.stopped_at} written{where}"
        job = os.environ.get("SLURM_JOB_ID")
        stopped_file = os.environ.get("PRETRAIN_STOPPED_FILE", "")
        if not job or os.environ.get("PRETRAIN_REQUEUE", "1") == "0":
            msg = (
                f"{written}; not under Slurm (or PRETRAIN_REQUEUE=0): rerun with resume=auto "
                "to continue"
            )
        elif stopped_file:
            # Written last: the batch script requeues only if this file exists after the step.
            tmp = Path(stopped_file + ".tmp")
            tmp.write_text(f"{self.stopped_at} {checkpoint_dir or ''}\n")
            tmp.replace(stopped_file)
            msg = f"{written}; the batch script requeues Slurm job {job} once every rank has exited"
        else:
            res = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if res.returncode == 0:
                msg = f"{written}; requeued Slurm job {job}: it resumes from there (resume=auto)"
            else:
                # e.g. the job is being cancelled (scancel sends SIGTERM too): nothing to requeue.
                msg = (
                    f"{written}; `scontrol requeue {job}` failed: "
                    f"{res.stderr.strip() or res.returncode}; resubmit the same script to "
                    "continue (it resumes with resume=auto)"
                )
        self.log(msg)
        return msg
