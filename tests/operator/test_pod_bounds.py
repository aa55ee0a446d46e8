"""Every pod the operator makes is bounded: each emptyDir has a size limit, each container an ephemeral-storage
limit, and the Jobs that should end (validation, evaluation) have a deadline. A tenant's pod cannot fill its
node's disk or memory, or run forever on a shared cluster."""

from __future__ import annotations

from finetune_operator.config import OperatorConfig
from finetune_operator.reconcile import dataset, evaluation, finetunejob, inferenceendpoint

CONFIG = OperatorConfig(trainer_image="t:1", storage_bucket="fts", shared_prefixes=["s3://fts/models"],
                        validation_deadline_seconds=600, evaluation_deadline_seconds=7200, ephemeral_storage="20Gi")  # fmt: skip


def obj(kind: str, spec: dict, name: str = "x") -> dict:
    return {"apiVersion": "finetune.dev/v1alpha1", "kind": kind, "metadata": {"name": name, "namespace": "team-a", "uid": "u", "generation": 1}, "spec": spec}


def pod_specs(children: list[dict]) -> dict[str, dict]:
    return {c["metadata"]["name"]: c["spec"]["template"]["spec"] for c in children if c["kind"] in ("Job", "Deployment")}


def children_of_every_kind() -> dict[str, list[dict]]:
    ready = {"status": {"phase": "Ready", "trainUri": "s3://fts/datasets/team-a/d/1/train.jsonl", "validationUri": "s3://fts/datasets/team-a/d/1/v.jsonl", "sha256": "1"}}
    return {
        "Dataset": dataset.reconcile(obj("Dataset", {"source": {"uri": "s3://fts/uploads/team-a/d.jsonl"}}), dataset.Observed(), CONFIG).create,
        "FineTuneJob": finetunejob.reconcile(obj("FineTuneJob", {"baseModel": {"uri": "s3://fts/models/tiny"}, "dataset": "d"}),
                                             finetunejob.Observed(dataset=ready), CONFIG).create,  # fmt: skip
        "Evaluation": evaluation.reconcile(obj("Evaluation", {"dataset": "d", "models": [{"name": "m", "baseModel": "s3://fts/models/tiny"}],
                                                             "graders": [{"name": "em", "type": "exact_match"}]}),
                                           evaluation.Observed(dataset=ready), CONFIG).create,  # fmt: skip
        "InferenceEndpoint": inferenceendpoint.reconcile(obj("InferenceEndpoint", {"baseModel": {"uri": "s3://fts/models/tiny"}}, name="chat"),
                                                         inferenceendpoint.Observed(), CONFIG).apply,  # fmt: skip
    }


def test_every_empty_dir_has_a_size_limit_and_every_container_an_ephemeral_storage_limit():
    for kind, children in children_of_every_kind().items():
        specs = pod_specs(children)
        assert specs, kind
        for name, pod in specs.items():
            for volume in pod["volumes"]:
                if "emptyDir" in volume:
                    assert volume["emptyDir"].get("sizeLimit"), f"{kind} {name}: emptyDir {volume['name']}"
            for container in pod["containers"] + pod.get("initContainers", []):
                assert container["resources"]["limits"].get("ephemeral-storage"), f"{kind} {name}: {container['name']}"


def test_validation_and_evaluation_jobs_have_a_deadline():
    made = children_of_every_kind()
    [validation] = [c for c in made["Dataset"] if c["kind"] == "Job"]
    [evaluation_job] = [c for c in made["Evaluation"] if c["kind"] == "Job"]
    assert validation["spec"]["activeDeadlineSeconds"] == 600
    assert evaluation_job["spec"]["activeDeadlineSeconds"] == 7200
