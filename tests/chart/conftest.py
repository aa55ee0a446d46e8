"""Shared helpers for the installation tests: render the chart with Helm's own engine, read kustomize output."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from finetune_operator import kube

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "finetune-operator"
DEPLOY_DIR = REPO_ROOT / "deploy"
RELEASE_NAME = "ft"
RELEASE_NAMESPACE = "finetune-system"
FULLNAME = "ft-finetune-operator"
KINDS_PLURAL = ("datasets", "finetunejobs", "evaluations", "inferenceendpoints")


@dataclass
class Rendered:
    """The objects one `helm template` produced, plus NOTES.txt."""

    objects: list[dict[str, Any]]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [obj for obj in self.of_kind(kind) if name is None or obj["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
        return found[0]

    def names(self, kind: str) -> set[str]:
        return {obj["metadata"]["name"] for obj in self.of_kind(kind)}


def parse_documents(text: str) -> list[dict[str, Any]]:
    """Every non-empty YAML document in a multi-document string."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


_chart: helm.Chart | None = None


def load_chart() -> helm.Chart:
    global _chart
    if _chart is None:
        _chart = helm.Chart.load(CHART_DIR)
    return _chart


def render_chart(values: Mapping[str, Any] | None = None, namespace: str = RELEASE_NAMESPACE) -> Rendered:
    """Render the chart offline exactly as `helm template ft charts/finetune-operator -n <namespace>` would."""
    manifests = load_chart().render(dict(values or {}), name=RELEASE_NAME, namespace=namespace, is_install=True)
    objects: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
        else:
            objects.extend(parse_documents(text))
    return Rendered(objects=objects, notes=notes)


def kustomize(path: Path) -> list[dict[str, Any]]:
    """Objects `kubectl kustomize <path>` renders."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render deploy/ with kustomize"
    result = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return parse_documents(result.stdout)


# ------------------------------------------------------------------------------------------------
# What the operator's code needs from the Kubernetes API

Triple = tuple[str, str, str]
"""(apiGroup, resource, verb)"""

PEERING_GROUP = "kopf.dev"
CLUSTER_SCOPED_PEERING = "clusterkopfpeerings"


def expand_rules(rules: Iterable[Mapping[str, Any]]) -> set[Triple]:
    """PolicyRules as a set of (apiGroup, resource, verb), so two rule lists compare however they are grouped."""
    triples: set[Triple] = set()
    for rule in rules:
        assert not rule.get("resourceNames"), f"resourceNames are not used by this chart: {rule}"
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    triples.add((group, resource, verb))
    return triples


def operator_permissions() -> list[Mapping[str, Any]]:
    """What the operator's code uses: finetune_operator.kube's REQUIRED_PERMISSIONS and PEERING_PERMISSIONS."""
    return [*kube.REQUIRED_PERMISSIONS, *kube.PEERING_PERMISSIONS]


def expected_operator_triples(*, peering: bool, namespaced: bool) -> set[Triple]:
    """What the chart must grant: the operator's permissions, kopf.dev only with peering, and no
    ClusterKopfPeering access for an operator that watches one namespace (kopf then uses KopfPeering)."""
    triples = expand_rules(operator_permissions())
    if not peering:
        triples = {t for t in triples if t[0] != PEERING_GROUP}
    elif namespaced:
        triples = {t for t in triples if t[1] != CLUSTER_SCOPED_PEERING}
    return triples


@pytest.fixture(scope="session")
def default_render() -> Rendered:
    return render_chart()
