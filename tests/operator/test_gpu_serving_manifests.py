"""The vllm runtime's pod as a GPU cluster runs it: who it runs as, what it checks before vLLM starts, and
the LoRA ranks the API accepts. Pure manifests and the generated CRD; no API server, no pods."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from finetune_operator.api.inferenceendpoint import InferenceEndpointSpec
from finetune_operator.manifests import common, server
from finetune_trainer import contract
from tests.conftest import REPO_ROOT
from finetune_operator.reconcile.inferenceendpoint import reconcile
from tests.operator.test_inferenceendpoint_reconcile import VLLM, children, container

def test_the_vllm_container_env_lets_torch_find_its_user_and_caches_when_the_uid_has_no_passwd_entry(tmp_path):
    """vLLM compiles the model with torch inductor, whose cache directory comes from getpass.getuser(); the
    pod's UID has no entry in the vLLM image's /etc/passwd, so that raises KeyError unless the env says who
    the user is. The probe runs torch's own code with the container's env and a passwd database that does
    not know the UID, as in the image."""
    deployment = children(VLLM)["Deployment"]
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == common.UID
    cache = tmp_path / "cache"  # stands for the cache emptyDir, the one writable place
    cache.mkdir()
    env = {"PATH": os.environ["PATH"]}
    for item in container(deployment)["env"]:
        if "value" in item:
            env[item["name"]] = item["value"].replace("/var/cache/finetune", str(cache)).replace("/tmp", str(cache))
    env.pop("PYTHONPATH", None)  # the ConfigMap's folder does not exist here; this venv's packages stand for the image's
    probe = (
        "import pwd\n"
        "def unknown(uid): raise KeyError(f'getpwuid(): uid not found: {uid}')\n"
        "pwd.getpwuid = unknown\n"
        "import getpass, torch._inductor.runtime.cache_dir_utils as c\n"
        "print(getpass.getuser()); print(c.cache_dir())\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    user, inductor_cache = result.stdout.split()
    assert user
    assert inductor_cache.startswith(str(cache)), "the compile caches go to the writable cache volume"


def crd_spec_schema() -> dict:
    crd = yaml.safe_load((REPO_ROOT / "crds" / "inferenceendpoints.finetune.dev.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


@pytest.mark.parametrize("rank", [1, 4, 10, 48, 100, 300, 513])
def test_max_lora_rank_other_than_the_ones_vllm_accepts_is_refused_by_the_crd_and_the_model(rank):
    body = {"baseModel": {"uri": "s3://finetune/models/tiny"}, "maxLoraRank": rank}
    with pytest.raises(jsonschema.ValidationError) as crd_error:
        jsonschema.validate(body, crd_spec_schema())
    assert list(crd_error.value.path) == ["maxLoraRank"]
    with pytest.raises(ValidationError) as model_error:
        InferenceEndpointSpec.model_validate(body)
    assert model_error.value.errors()[0]["loc"] == ("maxLoraRank",)


@pytest.mark.parametrize("rank", contract.VLLM_LORA_RANKS)
def test_every_rank_vllm_accepts_is_accepted_and_passed_on(rank):
    body = {"baseModel": {"uri": "s3://finetune/models/tiny"}, "resources": {"gpus": 1}, "maxLoraRank": rank}
    jsonschema.validate(body, crd_spec_schema())
    made = children(body)
    args = container(made["Deployment"])["args"]
    assert args[args.index("--max-lora-rank") + 1] == str(rank)
    fetch = contract.FetchConfig.model_validate_json(made["ConfigMap"]["data"]["fetch.json"])
    assert fetch.limits is not None and fetch.limits.max_lora_rank == rank


@pytest.mark.parametrize(
    ("base", "fetched", "config_from"),
    [
        ({"uri": "s3://finetune/models/tiny"}, "/models/base", None),
        ({"uri": "hf://meta-llama/Llama-3.2-1B@main", "secretRef": {"name": "hf"}}, None, "hf://meta-llama/Llama-3.2-1B@main"),
        ({"uri": "pvc://models/llama"}, None, "/models/models/llama"),
    ],
    ids=["s3", "hf", "pvc"],
)
def test_the_fetch_checks_the_spec_against_the_model_before_vllm_starts_whatever_the_base_model_source(base, fetched, config_from):
    adapters = [server.ServedAdapter("tuned", "s3://finetune/adapters/t")]
    made = children({**VLLM, "baseModel": base}, adapters)
    pod = made["Deployment"]["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    fetch = contract.FetchConfig.model_validate_json(made["ConfigMap"]["data"]["fetch.json"])
    assert fetch.limits == contract.ServingLimits(max_model_len=8192, tensor_parallel_size=2, max_lora_rank=32)
    assert [(i.kind, i.dest) for i in fetch.items if i.kind == "model"] == ([("model", fetched)] if fetched else [])
    assert [(i.kind, i.uri) for i in fetch.items if i.kind == "adapter"] == [("adapter", "s3://finetune/adapters/t")]
    assert fetch.base_model == config_from
    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    if base["uri"].startswith("hf://"):
        assert fetch.base_model_token_file == "/var/run/secrets/finetune/base-model/token"
        assert mounts["base-model-token"] == "/var/run/secrets/finetune/base-model"
    if base["uri"].startswith("pvc://"):
        assert Path(config_from).is_relative_to(mounts["base-model-pvc"]), "the fetch reads config.json from the mounted claim"
    volumes = {v["name"] for v in pod["volumes"]}
    assert {m["name"] for m in init["volumeMounts"]} <= volumes


def test_an_adapter_of_too_high_a_rank_is_named_in_the_endpoints_status(tmp_path):
    """Adapters changed by rollout: the fetch's refusal (its termination message) reaches the adapter's entry
    in status, as the fetch writes it."""
    from finetune_operator.reconcile.inferenceendpoint import Observed, Reason
    from finetune_trainer.contract import VLLM_LORA_RANKS
    from finetune_trainer.serving_checks import adapter_problem
    from tests.operator.test_inferenceendpoint_reconcile import CONFIG, NS, endpoint, ready_deployment

    uri = f"s3://finetune/uploads/{NS}/adapters/wide"
    spec = {**VLLM, "adapters": [{"name": "wide", "uri": uri}]}
    words = adapter_problem(uri, {"r": 64}, 32, VLLM_LORA_RANKS)
    pod = {"metadata": {"name": "new"}, "status": {"initContainerStatuses": [{
        "name": "fetch", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 42, "message": f"AdapterRankTooHigh: {words}"}},
    }]}}  # fmt: skip
    observed = Observed(deployment=ready_deployment(ready=1, updatedReplicas=1, replicas=2), pods=[pod])
    plan = reconcile({**endpoint(spec), "status": None}, observed, CONFIG.model_copy(update={"vllm_adapter_loading": "rollout"}))
    [adapter] = plan.status["adapters"]
    assert adapter["reason"] == Reason.ADAPTER_LOAD_FAILED
    assert "has LoRA rank 64, above the endpoint's spec.maxLoraRank 32; set spec.maxLoraRank to 64 or more" in adapter["message"]


def test_with_runtime_loading_the_sidecars_report_is_the_adapters_status():
    """Adapters loaded at run time: the rollout says nothing about them; each ready pod's report does, the
    sidecar's refusal included, and an adapter no pod has reported yet is still loading."""
    from finetune_operator.reconcile.inferenceendpoint import Observed, Reason
    from finetune_trainer.contract import VLLM_LORA_RANKS
    from finetune_trainer.serving_checks import adapter_problem
    from tests.operator.test_inferenceendpoint_reconcile import CONFIG, NS, endpoint, ready_deployment

    wide, good = (f"s3://finetune/uploads/{NS}/adapters/{n}" for n in ("wide", "good"))
    spec = {**VLLM, "adapters": [{"name": "wide", "uri": wide}, {"name": "good", "uri": good}]}
    assert CONFIG.vllm_adapter_loading == "runtime", "the default"
    rolled_out = ready_deployment(ready=1)

    def status(reports):
        plan = reconcile({**endpoint(spec), "status": None}, Observed(deployment=rolled_out, server_adapters=reports), CONFIG)
        deployment = next(c for c in plan.apply if c["kind"] == "Deployment")
        assert deployment["metadata"]["labels"][server.ADAPTER_LOADING_LABEL] == "runtime"
        return {a["name"]: a for a in plan.status["adapters"]}, plan

    adapters, plan = status(None)
    assert {n: (a["ready"], a["reason"]) for n, a in adapters.items()} == {
        "wide": (False, Reason.ADAPTER_LOADING), "good": (False, Reason.ADAPTER_LOADING)}, "a finished rollout is not a loaded adapter"  # fmt: skip
    assert plan.retry_after

    words = adapter_problem(wide, {"r": 64}, 32, VLLM_LORA_RANKS)
    report = [{"name": "wide", "uri": wide, "status": "failed", "error": f"AdapterRankTooHigh: {words}"},
              {"name": "good", "uri": good, "status": "loaded"}]  # fmt: skip
    adapters, plan = status([report])
    assert adapters["good"]["ready"] and not adapters["wide"]["ready"]
    assert adapters["wide"]["reason"] == Reason.ADAPTER_LOAD_FAILED
    assert "set spec.maxLoraRank to 64 or more" in adapters["wide"]["message"]
    assert plan.status["models"][1:] == ["good"]


@pytest.mark.parametrize(("lora", "refused"), [({"r": 64}, True), ({"r": 32}, False), (None, False)])
def test_a_finetunejobs_adapter_above_the_endpoints_rank_is_refused_before_any_pod_fetches_it(lora, refused):
    """vLLM would refuse the adapter at load; the operator knows the job's lora.r (default 16) and says so first."""
    from finetune_operator.reconcile.inferenceendpoint import Observed, Reason
    from tests.operator.test_inferenceendpoint_reconcile import completed_job, ready_deployment, run

    job = completed_job()
    if lora is not None:
        job["spec"] = {"lora": lora}
    spec = {**VLLM, "adapters": [{"name": "tuned", "fineTuneJob": "tuned"}]}
    plan = run(spec, Observed(finetunejobs={"tuned": job}, deployment=ready_deployment(ready=1)))
    [adapter] = plan.status["adapters"]
    served = [a.uri for c in plan.apply if c["kind"] == "ConfigMap"
              for a in contract.VllmAdaptersConfig.model_validate_json(c["data"][server.ADAPTERS_CONFIG_FILE]).adapters]  # fmt: skip
    if refused:
        assert adapter["reason"] == Reason.ADAPTER_LOAD_FAILED and not adapter["ready"]
        assert adapter["message"] == (
            "AdapterRankTooHigh: FineTuneJob tuned's adapter has LoRA rank 64, above the endpoint's spec.maxLoraRank 32; "
            "set spec.maxLoraRank to 64 or more"
        )
        assert served == [], "never handed to vLLM"
    else:
        assert adapter.get("reason") != Reason.ADAPTER_LOAD_FAILED
        assert served == ["s3://finetune/jobs/team-a/tuned-1/model"]
    builtin = run({**spec, "runtime": "builtin", "resources": {"cpu": "1", "memory": "2Gi"}}, Observed(finetunejobs={"tuned": job}))
    assert builtin.status["adapters"][0]["reason"] != Reason.ADAPTER_LOAD_FAILED, "the builtin server has no rank limit"
