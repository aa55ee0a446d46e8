"""What the server does with clients it must refuse or that go away: keys, bad requests, limits, disconnects."""

from __future__ import annotations

import http.client
import json

import openai
import pytest

from tests.conftest import wait_until

from .conftest import API_KEY, HttpClient, metric_value

pytestmark = pytest.mark.slow

HELLO = [{"role": "user", "content": "hello"}]
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def test_requests_without_the_api_key_are_refused(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong-key", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as refused:
            client.chat.completions.create(model="tiny-base", messages=HELLO, max_tokens=2)
        assert refused.value.code == "invalid_api_key"
    anonymous = HttpClient(server.url)
    for path in ("/v1/models", "/v1/adapters"):
        answer = anonymous.get(path)
        assert answer.status == 401
        assert answer.json()["error"]["type"] == "invalid_request_error"
    assert anonymous.post("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/x"}).status == 401


def test_probes_and_metrics_need_no_key(server):
    anonymous = HttpClient(server.url)
    assert anonymous.get("/healthz").status == 200
    assert anonymous.get("/readyz").status == 200
    assert anonymous.get("/health").json()["status"] == "ready"
    assert anonymous.get("/metrics").status == 200


def test_the_key_never_appears_in_the_log(server, client):
    client.models.list()
    assert API_KEY not in server.log()


MALFORMED = [
    (CHAT, b"{not json"),
    (CHAT, b""),
    (CHAT, b"[1, 2, 3]"),
    (CHAT, b'"a string"'),
    (CHAT, b"\xff\xfe\x00garbage"),
    (CHAT, json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()),
    (CHAT, json.dumps({"model": "tiny-base"}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": []}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": "hi"}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": [{"content": "hi"}]}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": [{"role": "wizard", "content": "hi"}]}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": [{"role": "user", "content": 42}]}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": [None]}).encode()),
    (CHAT, json.dumps({"model": 7, "messages": HELLO}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": HELLO, "max_tokens": 0}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": HELLO, "max_tokens": -5}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": HELLO, "max_tokens": "ten"}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": HELLO, "max_tokens": 1.5}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": HELLO, "max_tokens": True}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": HELLO, "max_tokens": 10**30}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": HELLO, "temperature": 3}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": HELLO, "temperature": "hot"}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": HELLO, "top_p": 0}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": HELLO, "n": 0}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": HELLO, "n": 1000}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": HELLO, "stop": 5}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": HELLO, "stop": [""]}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": HELLO, "stop": ["a"] * 100}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": HELLO, "seed": "x"}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": HELLO, "stream": "yes"}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": HELLO, "stream_options": {"include_usage": "y"}}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": HELLO, "logprobs": True}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": HELLO, "tools": [{"type": "function"}]}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": HELLO, "presence_penalty": 1}).encode()),
    (CHAT, json.dumps({"model": "tiny-base", "messages": HELLO, "response_format": {"type": "json_object"}}).encode()),
    (CHAT, b'{"model": "tiny-base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": NaN}'),
    (COMPLETIONS, json.dumps({"model": "tiny-base"}).encode()),
    (COMPLETIONS, json.dumps({"model": "tiny-base", "prompt": ""}).encode()),
    (COMPLETIONS, json.dumps({"model": "tiny-base", "prompt": []}).encode()),
    (COMPLETIONS, json.dumps({"model": "tiny-base", "prompt": [1, "a"]}).encode()),
    (COMPLETIONS, json.dumps({"model": "tiny-base", "prompt": [-1, 5]}).encode()),
    (COMPLETIONS, json.dumps({"model": "tiny-base", "prompt": [10**9]}).encode()),
    (COMPLETIONS, json.dumps({"model": "tiny-base", "prompt": [[]]}).encode()),
    (COMPLETIONS, json.dumps({"model": "tiny-base", "prompt": {"text": "hi"}}).encode()),
    (COMPLETIONS, json.dumps({"model": "tiny-base", "prompt": ["x"] * 1000}).encode()),
    (COMPLETIONS, json.dumps({"model": "tiny-base", "prompt": "hi", "echo": True}).encode()),
    (COMPLETIONS, json.dumps({"model": "tiny-base", "prompt": "hi", "best_of": 3}).encode()),
    ("/v1/load_lora_adapter", b"{}"),
    ("/v1/load_lora_adapter", json.dumps({"lora_name": "", "lora_path": "/x"}).encode()),
    ("/v1/unload_lora_adapter", json.dumps({"lora_name": 5}).encode()),
    ("/v1/nowhere", b"{}"),
]


@pytest.mark.parametrize(("path", "body"), MALFORMED, ids=[f"{i}" for i in range(len(MALFORMED))])
def test_malformed_requests_get_a_4xx_in_openai_error_shape(http, path, body):
    answer = http.post(path, raw=body)
    assert 400 <= answer.status < 500, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]


def test_a_bad_field_is_named_in_the_error(http):
    answer = http.post(CHAT, {"model": "tiny-base", "messages": HELLO, "temperature": 9}).json()["error"]
    assert answer["param"] == "temperature"
    missing = http.post(CHAT, {"model": "tiny-base"}).json()["error"]
    assert missing["param"] == "messages"
    assert "Missing required parameter" in missing["message"]


def test_the_server_still_answers_after_the_malformed_corpus(client):
    assert client.chat.completions.create(model="tiny-base", messages=HELLO, max_tokens=2, temperature=0).usage.completion_tokens == 2


def test_a_prompt_longer_than_the_context_is_refused(client):
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model="tiny-base", messages=[{"role": "user", "content": "x" * 600}], max_tokens=2)
    assert too_long.value.code == "context_length_exceeded"
    assert "512" in too_long.value.message
    with pytest.raises(openai.BadRequestError) as with_answer:
        client.completions.create(model="tiny-base", prompt="x" * 400, max_tokens=200)
    assert with_answer.value.code == "context_length_exceeded"


def test_a_body_over_the_limit_is_refused_with_413(http):
    answer = http.post(COMPLETIONS, {"model": "tiny-base", "prompt": "x" * (70 * 1024)})
    assert answer.status == 413
    assert answer.json()["error"]["code"] == "request_too_large"


def test_a_body_over_the_limit_sent_in_chunks_is_refused_with_413(server):
    """No Content-Length to judge by: the server stops reading at the limit."""
    connection = http_connection(server)
    chunks = iter([b'{"model": "tiny-base", "prompt": "', *([b"x" * 8192] * 9), b'"}'])
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    connection.request("POST", COMPLETIONS, chunks, headers, encode_chunked=True)
    answer = connection.getresponse()
    assert answer.status == 413
    assert json.loads(answer.read())["error"]["code"] == "request_too_large"
    connection.close()


def test_a_body_that_is_not_json_is_refused_naming_where_it_breaks(http):
    error = http.post(CHAT, raw=b'{"model": "tiny-base",\n "messages": [}').json()["error"]
    assert (error["code"], error["type"]) == ("invalid_json", "invalid_request_error")
    assert "line 2 column" in error["message"]
    error = http.post(CHAT, raw=b'{"model": "tiny-\xff"}').json()["error"]
    assert error["code"] == "invalid_json" and "not UTF-8" in error["message"]


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 30_000 + b"]" * 30_000,  # deeper than the JSON parser's own recursion
        json.dumps({"model": "tiny-base", "messages": HELLO, "metadata": json.loads("[" * 80 + "]" * 80)}).encode(),
    ],
    ids=["past-the-parser", "in-a-field"],
)
def test_a_deeply_nested_body_is_refused_with_400_and_the_server_keeps_answering(http, client, body):
    answer = http.post(CHAT, raw=body)
    assert answer.status == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "json_too_deep" and "nested more than 64" in error["message"]
    assert client.chat.completions.create(model="tiny-base", messages=HELLO, max_tokens=2, temperature=0).usage.completion_tokens == 2


def test_an_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="no-such-model", messages=HELLO, max_tokens=2)
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_a_client_that_disconnects_mid_stream_leaves_the_batch(server, http, client):
    def generated() -> float:
        return metric_value(http.get("/metrics").text, "finetune_server_generation_tokens_total", {"model": "tiny-base"})

    before = generated()
    connection = http_connection(server)
    body = {"model": "tiny-base", "prompt": "tell me everything", "max_tokens": 480, "temperature": 0, "stream": True}
    connection.request("POST", COMPLETIONS, json.dumps(body), {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: ")
    connection.sock.close()
    connection.close()

    def batch_empty() -> bool:
        text = http.get("/metrics").text
        return metric_value(text, "finetune_server_running_requests") == 0 and metric_value(text, "finetune_server_queue_depth") == 0

    wait_until(batch_empty, "the disconnected stream to leave the batch")
    assert generated() - before < 480
    assert client.completions.create(model="tiny-base", prompt="still there?", max_tokens=3, temperature=0).usage.completion_tokens == 3


def http_connection(server) -> http.client.HTTPConnection:
    host, port = server.url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=60)


def test_metrics_count_requests_tokens_and_latency(http, client):
    client.chat.completions.create(model="alpha", messages=HELLO, max_tokens=5, temperature=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nobody", messages=HELLO, max_tokens=5)
    text = http.get("/metrics").text
    assert metric_value(text, "finetune_server_requests_total", {"model": "alpha", "status": "200"}) >= 1
    assert metric_value(text, "finetune_server_requests_total", {"model": "unknown", "status": "404"}) >= 1
    assert metric_value(text, "finetune_server_generation_tokens_total", {"model": "alpha"}) >= 5
    assert metric_value(text, "finetune_server_prompt_tokens_total", {"model": "alpha"}) > 0
    assert metric_value(text, "finetune_server_request_duration_seconds_count", {"model": "alpha"}) >= 1
    assert metric_value(text, "finetune_server_time_to_first_token_seconds_count", {"model": "alpha"}) >= 1
    assert metric_value(text, "finetune_server_loaded_adapters") >= 1
    assert metric_value(text, "finetune_server_adapters", {"state": "loaded"}) >= 1
    assert "finetune_server_queue_depth" in text
    assert "finetune_server_running_requests" in text
