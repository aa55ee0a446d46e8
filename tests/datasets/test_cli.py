"""``finetune dataset check`` and ``finetune dataset create`` (also ``kubectl finetune ...``), as a user runs them."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import BIN, CORPUS, VALID, write_chat


def finetune(*args: str, env: dict | None = None, program: str = "finetune") -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / program), *args], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def test_check_passes_a_good_file_with_exit_code_0():
    done = finetune("dataset", "check", str(VALID / "weights.jsonl"))

    assert done.returncode == 0, done.stderr
    assert "PASSED: Checks passed: 12 chat examples" in done.stdout
    assert "messages per example  min 4 · mean 4 · max 4 · total 48" in done.stdout


def test_check_lists_each_problem_with_its_line_and_rule_and_exits_1():
    done = finetune("dataset", "check", str(CORPUS / "repeated_role_user.jsonl"))

    assert done.returncode == 1
    assert "keys and values       FAILED" in done.stdout
    table = done.stdout.split("LINE", 1)[1]
    assert "7        repeated_role        messages[0] and messages[1] are both user messages" in table


def test_check_prints_the_report_as_json():
    done = finetune("dataset", "check", str(CORPUS / "not_json.jsonl"), "--json")

    report = json.loads(done.stdout)
    assert done.returncode == 1
    assert report["isCheckPassed"] is False
    assert [(e["line"], e["rule"]) for e in report["errors"]] == [(4, "not_json")]


def test_check_with_a_tokenizer_shows_token_statistics_and_applies_the_limit(tmp_path: Path, byte_tokenizer: Path):
    data = write_chat(tmp_path / "data.jsonl", 12)

    shown = finetune("dataset", "check", str(data), "--tokenizer", str(byte_tokenizer))
    assert shown.returncode == 0 and "tokens per example    min 25 · mean 26.25 · max 30 · total 315" in shown.stdout

    limited = finetune("dataset", "check", str(data), "--tokenizer", str(byte_tokenizer), "--max-seq-length", "8", "--json")
    assert limited.returncode == 1 and json.loads(limited.stdout)["errors"][0]["rule"] == "all_too_long"


def test_check_options_that_cannot_work_are_refused_with_a_message(tmp_path: Path):
    done = finetune("dataset", "check", str(VALID / "text.jsonl"), "--max-seq-length", "10")
    assert done.returncode == 1 and "--max-seq-length needs --tokenizer" in done.stderr

    done = finetune("dataset", "check", str(VALID / "text.jsonl"), "--min-samples", "20")
    assert done.returncode == 1 and "too_few_samples" in done.stdout


def test_the_kubectl_plugin_is_the_same_program():
    help_text = finetune("dataset", "--help", program="kubectl-finetune")
    assert help_text.returncode == 0 and "usage: kubectl finetune dataset" in help_text.stdout

    done = finetune("dataset", "check", str(CORPUS / "bad_weight_on_user.jsonl"), program="kubectl-finetune")
    assert done.returncode == 1 and "bad_weight" in done.stdout


def test_create_dry_run_checks_and_prints_the_dataset_without_uploading(tmp_path: Path):
    data = write_chat(tmp_path / "chat.jsonl", 20)
    digest = hashlib.sha256(data.read_bytes()).hexdigest()

    done = finetune(
        "dataset", "create", "support-chats", "--file", str(data), "-n", "team-a", "--validation-split", "0.1",
        "--seed", "7", "--bucket", "data", "--credentials-secret", "s3-creds", "--dry-run",
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    dataset = yaml.safe_load(done.stdout.split("apply:", 1)[1])
    assert dataset == {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "support-chats", "namespace": "team-a"},
        "spec": {
            "source": {"uri": f"s3://data/uploads/team-a/support-chats/{digest}/chat.jsonl", "secretRef": {"name": "s3-creds"}},
            "format": "auto",
            "validation": {"fraction": 0.1, "seed": 7},
        },
    }


def test_create_refuses_a_split_the_api_would_refuse(tmp_path: Path):
    data = write_chat(tmp_path / "chat.jsonl", 20)
    done = finetune("dataset", "create", "x", "--file", str(data), "--validation-split", "0.9", "--dry-run")
    assert done.returncode == 1 and "spec.validation.fraction" in done.stderr


# ----------------------------------------------------------------------------------------------
# Against the Kubernetes API test server and SeaweedFS


def create_env(object_store, kubeconfig: Path) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": object_store.access_key,
        "AWS_SECRET_ACCESS_KEY": object_store.secret_key,
        "FINETUNE_STORAGE_ENDPOINT": object_store.endpoint,
        "FINETUNE_STORAGE_SECURE": "false",
        "KUBECONFIG": str(kubeconfig),
    }


def get_dataset(kube_api, namespace: str, name: str) -> dict:
    import kubernetes.client

    with kube_api.client() as api:
        return kubernetes.client.CustomObjectsApi(api).get_namespaced_custom_object("finetune.dev", "v1alpha1", namespace, "datasets", name)


@pytest.fixture
def kubeconfig_in(kube_api, namespace: str, tmp_path: Path) -> Path:
    """A kubeconfig whose context's namespace is the test's namespace (what `kubens` would leave behind)."""
    return kube_api.server.write_kubeconfig(tmp_path / "kubeconfig", namespace=namespace)


def test_create_uploads_the_file_and_creates_then_updates_the_dataset(
    tmp_path: Path, object_store, kube_api, namespace: str, kubeconfig_in: Path
):
    data = write_chat(tmp_path / "chat.jsonl", 30)
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    key = f"uploads/{namespace}/support-chats/{digest}/chat.jsonl"
    env = create_env(object_store, kubeconfig_in)

    done = finetune("dataset", "create", "support-chats", "--file", str(data), "--validation-split", "0.1", env=env)

    assert done.returncode == 0, done.stderr
    assert "chat.jsonl: 100%" in done.stderr  # the progress bar
    assert f"uploaded chat.jsonl to s3://finetune/{key}" in done.stdout
    assert "dataset.finetune.dev/support-chats created" in done.stdout
    uploaded = object_store.client().get_object("finetune", key)
    try:
        assert uploaded.read() == data.read_bytes()
    finally:
        uploaded.close()
        uploaded.release_conn()
    dataset = get_dataset(kube_api, namespace, "support-chats")
    assert dataset["spec"]["source"] == {"uri": f"s3://finetune/{key}"}
    assert dataset["spec"]["validation"] == {"fraction": 0.1, "seed": 42}
    assert object_store.secret_key not in done.stdout + done.stderr

    again = finetune("dataset", "create", "support-chats", "--file", str(data), "--format", "chat", "--no-progress", env=env)

    assert again.returncode == 0, again.stderr
    assert "is already uploaded" in again.stdout and "dataset.finetune.dev/support-chats configured" in again.stdout
    dataset = get_dataset(kube_api, namespace, "support-chats")
    assert dataset["spec"]["format"] == "chat" and "validation" not in dataset["spec"]


def test_create_with_a_bad_file_uploads_and_creates_nothing(tmp_path: Path, object_store, kube_api, namespace: str, kubeconfig_in: Path):
    import kubernetes.client

    done = finetune(
        "dataset", "create", "broken", "--file", str(CORPUS / "system_not_first.jsonl"), env=create_env(object_store, kubeconfig_in)
    )

    assert done.returncode == 1
    assert "system_not_first" in done.stdout and "Nothing was uploaded." in done.stderr
    assert list(object_store.client().list_objects("finetune", prefix=f"uploads/{namespace}/broken/", recursive=True)) == []
    with pytest.raises(kubernetes.client.ApiException) as missing:
        get_dataset(kube_api, namespace, "broken")
    assert missing.value.status == 404


def test_create_with_wrong_keys_fails_without_printing_them(tmp_path: Path, object_store, kubeconfig_in: Path):
    data = write_chat(tmp_path / "chat.jsonl", 12)
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\naws_access_key_id = WRONGKEY\naws_secret_access_key = wrong-secret-value\n")
    env = {**create_env(object_store, kubeconfig_in), "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}

    done = finetune("dataset", "create", "x", "--file", str(data), "--credentials-file", str(credentials), env=env)

    assert done.returncode == 1
    assert "upload to s3://finetune/uploads/" in done.stderr and "failed" in done.stderr
    assert "wrong-secret-value" not in done.stdout + done.stderr


def test_the_cli_imports_no_torch(tmp_path: Path):
    import sys

    code = (
        "import sys; from finetune_operator import cli; code = cli.main(['dataset', 'check', sys.argv[1]]); "
        "assert code == 0; assert not {'torch', 'transformers', 'kopf'} & set(sys.modules), 'heavy imports'"
    )
    done = subprocess.run([sys.executable, "-c", code, str(VALID / "crlf.jsonl")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
