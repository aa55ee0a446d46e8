"""The Deployment controller part of the local runner: apps/v1 Deployments to Pods, with a rolling update.

There are no ReplicaSets here: pods are owned by the Deployment directly and carry a
``pod-template-hash`` label computed from the pod template. When the template changes, new pods start
first and each old pod is stopped once a new one is Ready (old pods that are not Ready go at once).
Status carries ``replicas``, ``updatedReplicas``, ``readyReplicas``, ``availableReplicas``,
``unavailableReplicas``, ``observedGeneration`` and the ``Available`` and ``Progressing`` conditions.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Callable

from finetune_local.runner_jobs import random_suffix, set_condition
from finetune_local.runner_services import pod_is_ready

log = logging.getLogger("finetune_local.runner")

HASH_LABEL = "pod-template-hash"


def template_hash(template: dict) -> str:
    """A short, stable hash of a pod template (what the ``pod-template-hash`` label holds)."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    number = int(digest[:16], 16)
    out = ""
    for _ in range(10):
        number, rest = divmod(number, len(alphabet))
        out += alphabet[rest]
    return out


class DeploymentController:
    """Syncs one Deployment at a time against the pods it owns."""

    def __init__(
        self,
        create_pod: Callable[[dict], None],
        delete_pod: Callable[[dict], None],
        patch_status: Callable[[dict, dict], None],
        removed_pod: Callable[[str], bool],
        runner_annotations: dict[str, str],
    ) -> None:
        self.create_pod = create_pod
        self.delete_pod = delete_pod
        self.patch_status = patch_status
        self.removed_pod = removed_pod
        self.runner_annotations = runner_annotations

    def sync(self, deployment: dict, pods: list[dict]) -> None:
        meta, spec = deployment["metadata"], deployment.get("spec") or {}
        status = deployment.get("status") or {}
        replicas = 1 if spec.get("replicas") is None else int(spec["replicas"])
        current_hash = template_hash(spec.get("template") or {})

        live = []
        for pod in pods:
            removed = self.removed_pod(pod["metadata"]["uid"]) or pod["metadata"].get("deletionTimestamp")
            if removed:
                continue
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                self.delete_pod(pod)  # a Deployment's pods never end; replace the ones that did
                continue
            live.append(pod)
        if meta.get("deletionTimestamp"):
            for pod in live:
                self.delete_pod(pod)
            return

        new = [p for p in live if (p["metadata"].get("labels") or {}).get(HASH_LABEL) == current_hash]
        old = [p for p in live if p not in new]
        new_ready = [p for p in new if pod_is_ready(p)]

        # scale the new generation to `replicas` (surplus: the not-ready first)
        for _ in range(replicas - len(new)):
            pod = self._new_pod(deployment, current_hash)
            self.create_pod(pod)
            new.append(pod)
        if len(new) > replicas:
            surplus = sorted(new, key=pod_is_ready)[: len(new) - replicas]
            for pod in surplus:
                self.delete_pod(pod)
                new.remove(pod)
                if pod in new_ready:
                    new_ready.remove(pod)
        # retire old pods: the not-ready ones at once, the ready ones as new ones become ready
        old_ready = [p for p in old if pod_is_ready(p)]
        for pod in [p for p in old if not pod_is_ready(p)]:
            self.delete_pod(pod)
        retire = max(0, len(old_ready) + len(new_ready) - replicas)
        for pod in old_ready[:retire]:
            self.delete_pod(pod)
        old_ready = old_ready[retire:]

        ready = len(new_ready) + len(old_ready)
        total = len(new) + len(old_ready)
        conditions = list(status.get("conditions") or [])
        max_unavailable = _max_unavailable(spec, replicas)
        if ready >= replicas - max_unavailable:
            conditions = set_condition(conditions, "Available", "True", "MinimumReplicasAvailable",
                                       "Deployment has minimum availability.")
        else:
            conditions = set_condition(conditions, "Available", "False", "MinimumReplicasUnavailable",
                                       "Deployment does not have minimum availability.")
        if len(new_ready) >= replicas and not old_ready:
            conditions = set_condition(conditions, "Progressing", "True", "NewReplicaSetAvailable",
                                       f'Deployment "{meta["name"]}" has successfully progressed.')
        else:
            conditions = set_condition(conditions, "Progressing", "True", "ReplicaSetUpdated",
                                       f'Deployment "{meta["name"]}" is progressing.')
        new_status = {
            "observedGeneration": meta.get("generation") or status.get("observedGeneration") or 1,
            "replicas": total,
            "updatedReplicas": len(new),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(0, replicas - ready),
            "conditions": conditions,
        }
        changed = {k: v for k, v in new_status.items() if status.get(k) != v}
        if changed:
            self.patch_status(deployment, changed)

    def _new_pod(self, deployment: dict, pod_hash: str) -> dict:
        meta = deployment["metadata"]
        template = deployment["spec"].get("template") or {}
        template_meta = template.get("metadata") or {}
        labels = {**(template_meta.get("labels") or {}), HASH_LABEL: pod_hash}
        annotations = {**(template_meta.get("annotations") or {}), **self.runner_annotations}
        generate_name = f"{meta['name']}-{pod_hash}-"
        spec = copy.deepcopy(template.get("spec") or {})
        spec.setdefault("restartPolicy", "Always")
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": generate_name[:58] + random_suffix(),
                "generateName": generate_name,
                "namespace": meta.get("namespace") or "default",
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [{
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }],
            },
            "spec": spec,
        }


def _max_unavailable(spec: dict, replicas: int) -> int:
    value = ((spec.get("strategy") or {}).get("rollingUpdate") or {}).get("maxUnavailable", "25%")
    if isinstance(value, str) and value.endswith("%"):
        return int(replicas * int(value[:-1]) / 100)
    return int(value)
