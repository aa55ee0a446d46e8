"""A platform team serves LoRA adapters next to the base model and changes them while clients keep calling."""

from __future__ import annotations

import asyncio
import threading

import openai
import pytest
from openai import AsyncOpenAI

from tests.conftest import wait_until

from .conftest import API_KEY, HttpClient

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is LoRA?"}]


def served_models(client) -> set[str]:
    return {m.id for m in client.models.list().data}


def adapter_states(http) -> dict[str, dict]:
    return {a["name"]: a for a in http.get("/v1/adapters").json()["data"]}


@pytest.fixture
def restore_config(server):
    """Put the server's config file back as it was, and wait until the server has followed."""
    original = dict(server.config)
    yield
    server.write_config(original)
    http = HttpClient(server.url, API_KEY)
    wanted = {a["name"] for a in original["adapters"]}
    wait_until(lambda: {n for n, a in adapter_states(http).items() if a["source"] == "config"} == wanted, "the original adapters")


def test_an_adapter_answers_like_plain_peft(client, reference, adapter_dirs):
    adapted = client.chat.completions.create(model="alpha", messages=QUESTION, max_tokens=16, temperature=0)
    base = client.chat.completions.create(model="tiny-base", messages=QUESTION, max_tokens=16, temperature=0)
    assert adapted.model == "alpha"
    assert adapted.choices[0].message.content == reference.chat(QUESTION, 16, adapter_dirs["alpha"])
    assert base.choices[0].message.content == reference.chat(QUESTION, 16)
    assert adapted.choices[0].message.content != base.choices[0].message.content


def test_requests_for_the_base_model_and_an_adapter_share_a_batch(server, reference, adapter_dirs):
    expected = {"alpha": reference.chat(QUESTION, 10, adapter_dirs["alpha"]), "tiny-base": reference.chat(QUESTION, 10)}

    async def run():
        async with AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120) as c:
            names = ["alpha", "tiny-base"] * 6
            answers = await asyncio.gather(
                *[c.chat.completions.create(model=n, messages=QUESTION, max_tokens=10, temperature=0) for n in names]
            )
            return list(zip(names, answers, strict=True))

    for name, answer in asyncio.run(run()):
        assert answer.choices[0].message.content == expected[name], name


class BackgroundTraffic:
    """Clients that keep asking the base model and ``alpha`` while the adapters change."""

    def __init__(self, server):
        self.server = server
        self.errors: list[str] = []
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self):
        with openai.OpenAI(base_url=f"{self.server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60) as c:
            while not self._stop.is_set():
                for name in ("tiny-base", "alpha"):
                    try:
                        c.completions.create(model=name, prompt="keep going", max_tokens=4, temperature=0)
                        self.answered += 1
                    except openai.APIError as e:
                        self.errors.append(f"{name}: {e}")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(60)


def test_the_config_file_adds_and_removes_adapters_while_requests_run(server, client, http, reference, adapter_dirs, restore_config):
    with BackgroundTraffic(server) as traffic:
        config = dict(server.config)
        config["adapters"] = config["adapters"] + [{"name": "beta", "uri": str(adapter_dirs["beta"])}]
        server.write_config(config)
        wait_until(lambda: "beta" in served_models(client), "beta to be served")
        answer = client.chat.completions.create(model="beta", messages=QUESTION, max_tokens=12, temperature=0)
        assert answer.choices[0].message.content == reference.chat(QUESTION, 12, adapter_dirs["beta"])

        stream = client.completions.create(model="beta", prompt="a long story", max_tokens=300, temperature=0, stream=True)
        chunks = iter(stream)
        first = next(chunks)
        config["adapters"] = [a for a in config["adapters"] if a["name"] != "beta"]
        server.write_config(config)
        wait_until(lambda: "beta" not in served_models(client), "beta to be removed")
        rest = list(chunks)
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model="beta", messages=QUESTION, max_tokens=4)
        assert missing.value.code == "model_not_found"
    # The stream that was running when beta was removed ran to its end.
    assert [c.choices[0].finish_reason for c in [first, *rest] if c.choices[0].finish_reason] == ["length"]
    assert traffic.answered > 0
    assert traffic.errors == []


def test_the_admin_api_loads_and_unloads_adapters_while_requests_run(server, client, http, reference, adapter_dirs):
    with BackgroundTraffic(server) as traffic:
        loaded = http.post("/v1/load_lora_adapter", {"lora_name": "gamma", "lora_path": str(adapter_dirs["gamma"])})
        assert loaded.status == 200, loaded.text
        assert loaded.json()["status"] == "loaded"
        assert "gamma" in served_models(client)
        answer = client.chat.completions.create(model="gamma", messages=QUESTION, max_tokens=12, temperature=0)
        assert answer.choices[0].message.content == reference.chat(QUESTION, 12, adapter_dirs["gamma"])

        again = http.post("/v1/load_lora_adapter", {"lora_name": "gamma", "lora_path": str(adapter_dirs["gamma"])})
        assert again.status == 400
        assert "already loaded" in again.json()["error"]["message"]

        stream = iter(client.completions.create(model="gamma", prompt="a long story", max_tokens=200, temperature=0, stream=True))
        first = next(stream)
        unloaded = http.post("/v1/unload_lora_adapter", {"lora_name": "gamma"})
        assert unloaded.status == 200, unloaded.text
        assert "gamma" not in served_models(client)
        rest = list(stream)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="gamma", messages=QUESTION, max_tokens=4)
    assert [c.choices[0].finish_reason for c in [first, *rest] if c.choices[0].finish_reason] == ["length"]
    assert traffic.errors == []
    unknown = http.post("/v1/unload_lora_adapter", {"lora_name": "gamma"})
    assert unknown.status == 404
    assert unknown.json()["error"]["code"] == "adapter_not_found"


@pytest.mark.parametrize(
    ("adapter", "status", "reason"),
    [
        ("does-not-exist", 404, "not found"),
        ("corrupt", 400, "not a readable safetensors file"),
        ("other-base", 400, "another base model"),
    ],
)
def test_the_admin_api_refuses_a_bad_adapter_and_keeps_serving(client, http, adapter_dirs, tmp_path, adapter, status, reason):
    path = str(adapter_dirs.get(adapter, tmp_path / adapter))
    answer = http.post("/v1/load_lora_adapter", {"lora_name": f"bad-{adapter}", "lora_path": path})
    assert answer.status == status, answer.text
    error = answer.json()["error"]
    assert reason in error["message"]
    assert f"bad-{adapter}" not in served_models(client)
    assert client.chat.completions.create(model="alpha", messages=QUESTION, max_tokens=2).choices
    http.post("/v1/unload_lora_adapter", {"lora_name": f"bad-{adapter}"})


def test_the_admin_api_names_a_missing_field(http):
    answer = http.post("/v1/load_lora_adapter", {"lora_name": "x"})
    assert answer.status == 400
    assert answer.json()["error"]["param"] == "lora_path"


def test_bad_adapters_in_the_config_file_are_reported_and_the_rest_is_served(server, client, http, adapter_dirs, tmp_path, restore_config):
    config = dict(server.config)
    config["adapters"] = config["adapters"] + [
        {"name": "broken", "uri": str(adapter_dirs["corrupt"])},
        {"name": "missing", "uri": str(tmp_path / "nowhere")},
    ]
    server.write_config(config)
    states = wait_until(
        lambda: (s := adapter_states(http)).get("broken", {}).get("status") == "failed"
        and s.get("missing", {}).get("status") == "failed"
        and s,
        "both adapters to fail",
    )
    assert "safetensors" in states["broken"]["error"]
    assert "not found" in states["missing"]["error"]
    assert states["alpha"]["status"] == "loaded"
    with pytest.raises(openai.NotFoundError) as refused:
        client.chat.completions.create(model="broken", messages=QUESTION, max_tokens=2)
    assert "failed to load" in refused.value.message
    assert client.chat.completions.create(model="alpha", messages=QUESTION, max_tokens=2).choices
    health = http.get("/health").json()
    assert {a["name"]: a["status"] for a in health["adapters"]}["broken"] == "failed"


def test_a_config_file_that_does_not_parse_changes_nothing(server, client, http, restore_config):
    server.config_path.write_text('{"baseModel": ')
    wait_until(lambda: http.get("/v1/adapters").json()["config_error"], "the config error to be reported")
    assert "not a valid serve config" in http.get("/health").json()["config_error"]
    assert "alpha" in served_models(client)


def test_adapters_from_the_object_store_are_checked_against_their_manifest(s3, http, client, reference, adapter_dirs):
    from finetune_trainer.contract import join_uri

    s3.wait_ready()
    store = s3.store()
    good = "s3://models/jobs/team/tune-1-uid/model/adapter"
    store.upload_artifact(adapter_dirs["beta"], good, kind="adapter", base_model="tiny")
    loaded = http.post("/v1/load_lora_adapter", {"lora_name": "from-s3", "lora_path": good})
    assert loaded.status == 200, loaded.text
    answer = client.chat.completions.create(model="from-s3", messages=QUESTION, max_tokens=12, temperature=0)
    assert answer.choices[0].message.content == reference.chat(QUESTION, 12, adapter_dirs["beta"])
    http.post("/v1/unload_lora_adapter", {"lora_name": "from-s3"})

    tampered = "s3://models/jobs/team/tune-2-uid/model/adapter"
    store.upload_artifact(adapter_dirs["alpha"], tampered, kind="adapter", base_model="tiny")
    store.write_bytes(join_uri(tampered, "adapter_model.safetensors"), (adapter_dirs["gamma"] / "adapter_model.safetensors").read_bytes())
    refused = http.post("/v1/load_lora_adapter", {"lora_name": "tampered", "lora_path": tampered})
    assert refused.status == 400, refused.text
    assert "does not match its manifest" in refused.json()["error"]["message"]

    incomplete = "s3://models/jobs/team/tune-3-uid/model/adapter"
    store.upload_file(adapter_dirs["alpha"] / "adapter_config.json", join_uri(incomplete, "adapter_config.json"))
    refused = http.post("/v1/load_lora_adapter", {"lora_name": "incomplete", "lora_path": incomplete})
    assert refused.status == 404, refused.text
    assert "manifest.json" in refused.json()["error"]["message"]
