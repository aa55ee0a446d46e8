"""The operator's RBAC is exactly what its code uses (no less, no more), and users get the four kinds through
the built-in view/edit/admin roles."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.conftest import (
    FULLNAME,
    KINDS_PLURAL,
    RELEASE_NAMESPACE,
    Rendered,
    Triple,
    expand_rules,
    expected_operator_triples,
    render_chart,
)

CLUSTER_SCOPED_RESOURCES = {"customresourcedefinitions", "namespaces", "clusterkopfpeerings"}


def granted_to_operator(rendered: Rendered) -> set[Triple]:
    """Everything the operator's ServiceAccount is bound to, over ClusterRoles and Roles."""
    roles = {(r["kind"], r["metadata"]["name"]): r for r in rendered.of_kind("ClusterRole") + rendered.of_kind("Role")}
    granted: set[Triple] = set()
    bindings = rendered.of_kind("ClusterRoleBinding") + rendered.of_kind("RoleBinding")
    for binding in bindings:
        subjects = binding["subjects"]
        if {"kind": "ServiceAccount", "name": FULLNAME, "namespace": RELEASE_NAMESPACE} not in subjects:
            continue
        role = roles[(binding["roleRef"]["kind"], binding["roleRef"]["name"])]
        granted |= expand_rules(role["rules"])
    return granted


def differences(granted: set[Triple], needed: set[Triple]) -> dict[str, list[Triple]]:
    return {
        "needed by the operator but not granted": sorted(needed - granted),
        "granted but not needed by the operator": sorted(granted - needed),
    }


NO_DIFFERENCE = {"needed by the operator but not granted": [], "granted but not needed by the operator": []}


@pytest.mark.parametrize(
    ("values", "peering", "namespaced"),
    [
        ({}, False, False),
        ({"peering": {"enabled": True}, "replicaCount": 2}, True, False),
        ({"watchNamespace": "team-a"}, False, True),
        ({"watchNamespace": "team-a", "peering": {"enabled": True}}, True, True),
    ],
    ids=["cluster-wide", "cluster-wide with peering", "one namespace", "one namespace with peering"],
)
def test_operator_is_granted_exactly_what_its_code_needs(values: dict[str, Any], peering: bool, namespaced: bool) -> None:
    rendered = render_chart(values)
    needed = expected_operator_triples(peering=peering, namespaced=namespaced)
    assert differences(granted_to_operator(rendered), needed) == NO_DIFFERENCE


def test_a_missing_or_an_extra_verb_is_caught_both_ways(default_render: Rendered) -> None:
    """The comparison the test above relies on really sees both directions."""
    granted = granted_to_operator(default_render)
    needed = expected_operator_triples(peering=False, namespaced=False)
    without_job_create = granted - {("batch", "jobs", "create")}
    with_secret_list = granted | {("", "secrets", "list")}
    assert differences(without_job_create, needed)["needed by the operator but not granted"] == [("batch", "jobs", "create")]
    assert differences(with_secret_list, needed)["granted but not needed by the operator"] == [("", "secrets", "list")]


def test_operator_may_only_get_a_named_secret_never_list_watch_or_change_one(default_render: Rendered) -> None:
    """It reads the labels of a Secret a spec names (its owner's consent), asking for the metadata only."""
    for role in default_render.of_kind("ClusterRole") + default_render.of_kind("Role"):
        triples = expand_rules(role["rules"])
        assert {t[2] for t in triples if t[1] == "secrets"} <= {"get"}, role["metadata"]["name"]
        assert "*" not in {t[1] for t in triples}, role["metadata"]["name"]


def test_one_namespace_gets_a_role_there_and_only_cluster_scoped_rules_cluster_wide() -> None:
    rendered = render_chart({"watchNamespace": "team-a", "peering": {"enabled": True}})
    role = rendered.one("Role", FULLNAME)
    assert role["metadata"]["namespace"] == "team-a"
    assert rendered.one("RoleBinding", FULLNAME)["metadata"]["namespace"] == "team-a"
    cluster_resources = {t[1] for t in expand_rules(rendered.one("ClusterRole", FULLNAME)["rules"])}
    assert cluster_resources <= CLUSTER_SCOPED_RESOURCES
    assert {t[1] for t in expand_rules(role["rules"])}.isdisjoint(CLUSTER_SCOPED_RESOURCES)


def test_users_get_the_four_kinds_through_view_edit_and_admin(default_render: Rendered) -> None:
    aggregated = {
        label.rsplit("-", 1)[-1]: role
        for role in default_render.of_kind("ClusterRole")
        for label, value in role["metadata"]["labels"].items()
        if label.startswith("rbac.authorization.k8s.io/aggregate-to-") and value == "true"
    }
    assert set(aggregated) == {"view", "edit", "admin"}
    kinds = {(("finetune.dev", plural)) for plural in KINDS_PLURAL}

    view = expand_rules(aggregated["view"]["rules"])
    assert {(g, r) for g, r, _ in view} == kinds | {("finetune.dev", f"{p}/status") for p in KINDS_PLURAL}
    assert {v for _, _, v in view} == {"get", "list", "watch"}

    for name in ("edit", "admin"):
        rules = expand_rules(aggregated[name]["rules"])
        for group, plural in kinds:
            for verb in ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"):
                assert (group, plural, verb) in rules, (name, plural, verb)
        status_verbs = {v for _, r, v in rules if r.endswith("/status")}
        assert status_verbs == {"get"}, f"{name} must not write status: that is the operator's"


def test_aggregated_roles_can_be_turned_off() -> None:
    rendered = render_chart({"rbac": {"aggregateToDefaultRoles": False}})
    assert rendered.names("ClusterRole") == {FULLNAME}


def test_a_list_of_namespaces_gets_a_role_in_each_and_nothing_namespaced_cluster_wide() -> None:
    """One operator for several teams' namespaces, and no power anywhere else (kube-system included)."""
    from finetune_operator.config import OperatorConfig

    rendered = render_chart({"watchNamespaces": ["team-a", "team-b"], "peering": {"enabled": True}})
    roles = {r["metadata"]["namespace"] for r in rendered.of_kind("Role") if r["metadata"]["name"] == FULLNAME}
    bindings = {r["metadata"]["namespace"] for r in rendered.of_kind("RoleBinding") if r["metadata"]["name"] == FULLNAME}
    assert roles == bindings == {"team-a", "team-b"}
    cluster_resources = {t[1] for t in expand_rules(rendered.one("ClusterRole", FULLNAME)["rules"])}
    assert cluster_resources <= CLUSTER_SCOPED_RESOURCES
    config = next(c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-config"))["data"]
    assert OperatorConfig.from_env(config).namespaces == ["team-a", "team-b"]
    assert {p["metadata"]["namespace"] for p in rendered.of_kind("KopfPeering")} == {"team-a", "team-b"}
