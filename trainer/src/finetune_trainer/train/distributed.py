"""Running on several processes: the torchrun-style environment, the local launcher, and collectives.

A process is a worker when ``WORLD_SIZE`` is set (by ``torchrun`` or by this launcher): it reads
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` and joins the process
group (``nccl`` on GPUs, ``gloo`` on CPU).

When ``WORLD_SIZE`` is not set and more than one process per node is wanted (``numGpus`` > 1, or
``NPROC_PER_NODE`` on CPU), ``finetune-trainer train`` launches the workers itself, one per GPU, with
``RANK = NODE_RANK * nproc + LOCAL_RANK`` and ``WORLD_SIZE = NNODES * nproc``. The node's rank comes from
``NODE_RANK`` or, in an Indexed Job, ``JOB_COMPLETION_INDEX``; ``MASTER_ADDR``/``MASTER_PORT`` name the
pod of index 0. Unlike ``torchrun``, the launcher keeps the workers' exit codes meaningful: it exits
with the most telling one (42 bad input, then 143 preempted, then any other failure).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
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


def init_process_group(env: DistEnv, device: torch.device) -> None:
    if env.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend}
        if device.type == "cuda":
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all processes (identity when not distributed)."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


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


def launch_workers(argv: list[str], nproc: int) -> int:
    """Run ``nproc`` worker processes of ``finetune-trainer train`` on this node and wait for them."""
    nnodes = int(os.environ.get("NNODES", "1"))
    node_rank = int(os.environ.get("NODE_RANK", os.environ.get("JOB_COMPLETION_INDEX", "0")))
    master_addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
    master_port = os.environ.get("MASTER_PORT") or str(free_port() if nnodes == 1 else 29500)
    workers: list[subprocess.Popen] = []
    for local_rank in range(nproc):
        env = dict(os.environ)
        env.update(
            RANK=str(node_rank * nproc + local_rank),
            LOCAL_RANK=str(local_rank),
            WORLD_SIZE=str(nnodes * nproc),
            LOCAL_WORLD_SIZE=str(nproc),
            MASTER_ADDR=master_addr,
            MASTER_PORT=master_port,
        )
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
