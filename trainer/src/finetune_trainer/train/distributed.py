"""Running on several processes: the torchrun-style environment, the local launcher, and collectives.

A process is a worker when ``WORLD_SIZE`` is set (by ``torchrun`` or by this launcher): it reads
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` and joins the process
group (``nccl`` on GPUs, ``gloo`` on CPU).

When ``WORLD_SIZE`` is not set, ``finetune-trainer train`` works out the job's processes itself
(``worker_environments``): ``nproc`` per node (``numGpus``, or ``NPROC_PER_NODE`` on CPU) on each of
``NNODES`` nodes, with ``RANK = NODE_RANK * nproc + LOCAL_RANK`` and ``WORLD_SIZE = NNODES * nproc``. The
node's rank comes from ``NODE_RANK`` or, in an Indexed Job, ``JOB_COMPLETION_INDEX``;
``MASTER_ADDR``/``MASTER_PORT`` name the pod of index 0. Several processes on the node are launched as
workers; a single one (one GPU on each of several nodes) runs in place as that one worker. Unlike
``torchrun``, the launcher keeps the workers' exit codes meaningful: it exits with the most telling one
(42 bad input, then 143 preempted, then any other failure).

A process group of fixed size cannot take back a replaced pod: when a node is lost, the others would
wait in their next collective. While training, every collective therefore has a short timeout
(``FINETUNE_COLLECTIVE_TIMEOUT_SECONDS``, default 300); past it the process fails with a retryable exit
code, and the Job's retry starts every pod afresh from the newest checkpoint. Where processes wait for one
of them to do I/O (setting up, while each node's first process downloads the base model; saving a
checkpoint, while rank 0 uploads it) the timeout is ``FINETUNE_IO_TIMEOUT_SECONDS`` (default 7200).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from finetune_trainer.contract import ExitCode


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_from_os() -> DistEnv:
    return DistEnv(
        rank=int(os.environ.get("RANK", "0")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
    )


def is_worker() -> bool:
    """True when launched by torchrun or this launcher (``WORLD_SIZE`` set)."""
    return "WORLD_SIZE" in os.environ


COLLECTIVE_TIMEOUT_ENV = "FINETUNE_COLLECTIVE_TIMEOUT_SECONDS"
DEFAULT_COLLECTIVE_TIMEOUT_SECONDS = 300.0
IO_TIMEOUT_ENV = "FINETUNE_IO_TIMEOUT_SECONDS"
DEFAULT_IO_TIMEOUT_SECONDS = 7200.0


def _seconds(env: str, default: float) -> timedelta:
    value = os.environ.get(env, "").strip()
    try:
        seconds = float(value) if value else default
    except ValueError:
        seconds = default
    return timedelta(seconds=max(1.0, seconds))


def collective_timeout() -> timedelta:
    """How long a training collective waits for the other processes before it gives up (see the module doc)."""
    return _seconds(COLLECTIVE_TIMEOUT_ENV, DEFAULT_COLLECTIVE_TIMEOUT_SECONDS)


def io_timeout() -> timedelta:
    """How long processes wait while one of them downloads or uploads."""
    return _seconds(IO_TIMEOUT_ENV, DEFAULT_IO_TIMEOUT_SECONDS)


def init_process_group(env: DistEnv, device: torch.device) -> None:
    """Join the job's processes; collectives wait up to ``io_timeout()`` until ``training()`` is called."""
    if env.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend, "timeout": io_timeout()}
        if device.type == "cuda":
            kwargs["device_id"] = device
            # A timed-out NCCL collective tears the process down instead of leaving it hanging.
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")
        dist.init_process_group(**kwargs)


def _set_timeout(timeout: timedelta) -> None:
    if dist.is_initialized():
        from torch.distributed.distributed_c10d import _set_pg_timeout

        _set_pg_timeout(timeout)


def training() -> None:
    """From now on the processes wait only for each other's compute: collectives time out soon."""
    _set_timeout(collective_timeout())


@contextmanager
def waiting_for_io() -> Iterator[None]:
    """Collectives inside wait as long as one process's download or upload may take."""
    _set_timeout(io_timeout())
    try:
        yield
    finally:
        _set_timeout(collective_timeout())


def is_collective_failure(error: BaseException) -> bool:
    """A collective timed out or lost a peer: another process of the job is gone or stuck."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        words in text for words in ("timed out", "timeout", "connection closed by peer", "connection reset by peer")
    )


def destroy_process_group(together: bool = False) -> None:
    """``together`` (every process reached the same end, a finished run): a barrier first, so that rank 0, which
    hosts the rendezvous store, does not tear down and exit while another process still does (that process
    then aborts: "terminate called without an active exception", exit -6, a finished run reported failed)."""
    if dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all processes (identity when not distributed)."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_tensor(tensor: torch.Tensor) -> None:
    """Sum a tensor over all processes in place (nothing when not distributed)."""
    if dist.is_initialized():
        dist.all_reduce(tensor)


def any_process(flag: bool, device: torch.device) -> bool:
    """True on every process when ``flag`` is true on any of them."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_gather_objects(obj: Any) -> list[Any]:
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------------------------
# Launcher


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_environments(environ: Mapping[str, str], num_gpus: int) -> list[dict[str, str]]:
    """The torchrun-style variables of each process this node runs; empty when the whole job is one process.

    ``nproc`` processes per node: ``num_gpus``, or ``NPROC_PER_NODE`` without GPUs (CPU); ``NNODES`` nodes.
    """
    nproc = num_gpus if num_gpus >= 1 else int(environ.get("NPROC_PER_NODE") or 1)
    nnodes = int(environ.get("NNODES") or 1)
    if nproc * nnodes <= 1:
        return []
    node_rank = int(environ.get("NODE_RANK") or environ.get("JOB_COMPLETION_INDEX") or 0)
    if not 0 <= node_rank < nnodes:
        raise ValueError(f"node rank {node_rank} is outside 0..{nnodes - 1} (NNODES={nnodes})")
    master_addr = environ.get("MASTER_ADDR") or "127.0.0.1"
    master_port = environ.get("MASTER_PORT") or str(free_port() if nnodes == 1 else 29500)
    return [
        {
            "RANK": str(node_rank * nproc + local_rank),
            "LOCAL_RANK": str(local_rank),
            "WORLD_SIZE": str(nnodes * nproc),
            "LOCAL_WORLD_SIZE": str(nproc),
            "NODE_RANK": str(node_rank),
            "MASTER_ADDR": master_addr,
            "MASTER_PORT": master_port,
        }
        for local_rank in range(nproc)
    ]


def launch_workers(argv: list[str], environments: list[dict[str, str]]) -> int:
    """Run one worker process of ``finetune-trainer train`` per environment on this node and wait for them."""
    workers: list[subprocess.Popen] = []
    for variables in environments:
        env = {**os.environ, **variables}
        workers.append(subprocess.Popen([sys.executable, "-m", "finetune_trainer", "train", *argv], env=env))

    def forward(signum: int, _frame: Any) -> None:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        codes: dict[int, int] = {}
        while len(codes) < len(workers):
            for i, w in enumerate(workers):
                if i not in codes and w.poll() is not None:
                    codes[i] = w.returncode
                    if w.returncode != 0:
                        # One worker failed: the others would hang in a collective. Stop them.
                        for other in workers:
                            if other.poll() is None:
                                other.send_signal(signal.SIGTERM)
            time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return worst_exit_code(list(codes.values()))


def worst_exit_code(codes: list[int]) -> int:
    """The exit code that says most: bad input, then preempted, then any failure, else OK.

    >>> worst_exit_code([0, 143, 42])
    42
    """
    for wanted in (ExitCode.BAD_INPUT, ExitCode.PREEMPTED):
        if wanted in codes:
            return int(wanted)
    failed = [c for c in codes if c != 0]
    if not failed:
        return int(ExitCode.OK)
    return int(ExitCode.RETRYABLE)
