"""How the processes of a training Job find each other: every (nodes, GPUs per node) pair the operator can
make gets one process per GPU with its own RANK, the same WORLD_SIZE and MASTER_ADDR everywhere; and a
process whose peer stops answering fails within the collective timeout instead of hanging."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from finetune_operator.api.finetunejob import FineTuneJobSpec
from finetune_operator.config import OperatorConfig
from finetune_operator.manifests.trainer_job import TrainerInputs, build_trainer_children
from finetune_trainer.contract import TrainerConfig
from finetune_trainer.train.distributed import free_port, worker_environments

CONFIG = OperatorConfig(trainer_image="trainer:1", storage_endpoint="minio:9000", storage_bucket="finetune")
OWNER = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "tune", "namespace": "ns", "uid": "u1"}}
INPUTS = TrainerInputs(train_data=["s3://finetune/datasets/ns/d/train.jsonl"], artifacts_uri="s3://finetune/jobs/ns/tune-u1", output_model_name="tune")


def job_processes(nodes: int, gpus: int) -> list[dict[str, str]]:
    """Every process of the Job: each pod's env as the Job makes it, then the trainer's own launch plan."""
    spec = FineTuneJobSpec.model_validate({"baseModel": {"uri": "hf://org/m"}, "dataset": "d", "numNodes": nodes, "resources": {"gpus": gpus}})
    children = build_trainer_children(OWNER, spec, INPUTS, CONFIG)
    config = TrainerConfig.model_validate_json(children[0]["data"]["config.json"])
    job = children[-1]
    [container] = job["spec"]["template"]["spec"]["containers"]
    pod_env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    indexed = job["spec"].get("completionMode") == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == nodes
    processes = []
    for index in range(nodes):
        env = dict(pod_env)
        if indexed:
            env["JOB_COMPLETION_INDEX"] = str(index)  # the Job controller sets it in each pod of an Indexed Job
        workers = worker_environments(env, config.num_gpus)
        processes += workers or [{}]
    return processes


@pytest.mark.parametrize("gpus", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("nodes", [1, 2, 3, 4])
def test_every_process_of_the_job_gets_its_own_rank_in_one_world(nodes, gpus):
    processes = job_processes(nodes, gpus)
    world = nodes * gpus
    assert len(processes) == world, "one process per GPU of every node"
    if world == 1:
        assert processes == [{}], "a single process runs without a process group"
        return
    assert sorted(int(p["RANK"]) for p in processes) == list(range(world))
    assert {p["WORLD_SIZE"] for p in processes} == {str(world)}
    for node in range(nodes):
        on_node = processes[node * gpus : (node + 1) * gpus]
        assert sorted(int(p["LOCAL_RANK"]) for p in on_node) == list(range(gpus)), "one process per GPU of the node"
        assert {p["NODE_RANK"] for p in on_node} == {str(node)}
    rank_zero = next(p for p in processes if p["RANK"] == "0")
    assert {(p["MASTER_ADDR"], p["MASTER_PORT"]) for p in processes} == {(rank_zero["MASTER_ADDR"], rank_zero["MASTER_PORT"])}
    if nodes > 1:
        assert rank_zero["MASTER_ADDR"] == "tune-train-0.tune-train", "pod 0 of the headless Service"


def test_a_node_rank_outside_the_job_is_refused():
    with pytest.raises(ValueError, match="node rank 2 is outside 0..1"):
        worker_environments({"NNODES": "2", "JOB_COMPLETION_INDEX": "2"}, 1)


STUCK_PEER = r"""
import json, os, sys, torch
from finetune_trainer.train import distributed
env = distributed.env_from_os()
distributed.init_process_group(env, torch.device("cpu"))
distributed.training()  # as the trainer does once it is set up
if env.rank == 1:
    sys.stdin.read()  # alive but gone from the job's point of view, like a pod that is being replaced
    sys.exit(0)
try:
    distributed.all_reduce_sum([1.0], torch.device("cpu"))
except Exception as e:
    print(json.dumps({"failed": True, "collective_failure": distributed.is_collective_failure(e)}), flush=True)
else:
    print(json.dumps({"failed": False}), flush=True)
os._exit(0)  # as the trainer leaves: no teardown of a group whose peer is gone
"""


def test_a_process_whose_peer_stops_answering_fails_within_the_collective_timeout():
    port = str(free_port())
    common = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1",
              "FINETUNE_COLLECTIVE_TIMEOUT_SECONDS": "3"}  # fmt: skip
    stuck = subprocess.Popen([sys.executable, "-c", STUCK_PEER], env={**common, "RANK": "1", "LOCAL_RANK": "1"},
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        waiting = subprocess.run([sys.executable, "-c", STUCK_PEER], env={**common, "RANK": "0", "LOCAL_RANK": "0"},
                                 capture_output=True, text=True, timeout=240)  # fmt: skip
    finally:
        stuck.communicate("", timeout=60)
    assert waiting.returncode == 0, waiting.stderr[-3000:]
    assert json.loads(waiting.stdout.strip().splitlines()[-1]) == {"failed": True, "collective_failure": True}


SLOW_UPLOAD = r"""
import json, os, sys, time, torch
from finetune_trainer.train import distributed
env = distributed.env_from_os()
distributed.init_process_group(env, torch.device("cpu"))
distributed.training()
with distributed.waiting_for_io():
    if env.rank == 0:
        time.sleep(4)  # an upload longer than the 2 s collective timeout, not a synchronisation
    distributed.barrier()
total = distributed.all_reduce_sum([1.0], torch.device("cpu"))
print(json.dumps({"rank": env.rank, "total": total[0]}), flush=True)
distributed.destroy_process_group()
os._exit(0)  # as the trainer leaves
"""


def test_processes_waiting_for_one_processs_upload_use_the_io_timeout_not_the_collective_one():
    port = str(free_port())
    common = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1",
              "FINETUNE_COLLECTIVE_TIMEOUT_SECONDS": "2"}  # fmt: skip
    procs = [
        subprocess.Popen([sys.executable, "-c", SLOW_UPLOAD], env={**common, "RANK": str(r), "LOCAL_RANK": str(r)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        for r in range(2)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        assert json.loads(out.strip().splitlines()[-1])["total"] == 2.0
