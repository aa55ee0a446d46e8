"""A person whose RBAC lets them read the finetune objects of one namespace, and nothing else: what they may
read works, what they may not do is a one-line ``no access`` error (exit 4) that changes nothing.

Needs a real control plane (``KUBEBUILDER_ASSETS``): the project's own API server has no authorization."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.helpers import fails, ok

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

READER_ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "Role",
    "metadata": {"name": "finetune-reader"},
    "rules": [
        {"apiGroups": ["finetune.dev"], "resources": ["datasets", "finetunejobs", "inferenceendpoints", "evaluations"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["events", "services", "configmaps"], "verbs": ["get", "list"]},
    ],
}


@pytest.fixture(scope="module")
def reader(pipeline, tmp_path_factory) -> Path:
    """A kubeconfig for user `reader`: the Role above in the pipeline's namespace; no Secrets, no writes."""
    if not pipeline.kube_api.real:
        pytest.skip("needs a real control plane (KUBEBUILDER_ASSETS): the project's own API server has no authorization")
    import kubernetes.client

    ns = pipeline.namespace
    with pipeline.client() as api:
        rbac = kubernetes.client.RbacAuthorizationV1Api(api)
        rbac.create_namespaced_role(ns, READER_ROLE)
        rbac.create_namespaced_role_binding(ns, {
            "metadata": {"name": "finetune-reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "finetune-reader"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "reader"}],
        })  # fmt: skip
    return pipeline.kube_api.server.user_kubeconfig("reader", tmp_path_factory.mktemp("reader") / "kubeconfig", namespace=ns)


def test_a_reader_reads_and_is_refused_the_rest_in_one_line(pipeline, reader: Path):
    env = {"KUBECONFIG": str(reader)}
    assert "ticket-router" in ok(pipeline.finetune("jobs", "list", env=env))
    assert "Completed" in ok(pipeline.finetune("jobs", "get", "ticket-router", env=env))

    fails(pipeline.finetune("jobs", "list", "-n", "default", env=env), 4, "no access: you may not list finetunejobs in namespace default")
    fails(pipeline.finetune("jobs", "delete", "ticket-router", env=env), 4, "no access: you may not delete finetunejob ticket-router")
    assert pipeline.get("finetunejobs", "ticket-router")["status"]["phase"] == "Completed", "nothing was deleted"
    fails(pipeline.finetune("jobs", "create", "x", "--model", "s3://finetune/models/cli-tiny", "--dataset", "support-tickets", env=env), 4,
          "no access: you may not create finetunejob x")  # fmt: skip

    # the object store's keys are in a Secret the reader may not read
    fails(pipeline.finetune("jobs", "download", "ticket-router", env=env), 4, "no object store keys", "no access", "secret finetune-storage",
          "--credentials-file")  # fmt: skip
    # the endpoint's key, likewise; given the key, the chat works
    fails(pipeline.finetune("chat", "support", "hi", env=env), 4, "may not read its Secret support-api-key", "--api-key")
    answer = ok(pipeline.finetune("chat", "support", "hi", "--api-key", pipeline.api_key, "--max-tokens", "4", env=env))
    assert answer.endswith("\n")
