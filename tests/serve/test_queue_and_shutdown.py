"""A small server (one sequence at a time, one waiting request) under more load than it takes, then SIGTERM."""

from __future__ import annotations

import concurrent.futures
import signal

import openai
import pytest

from tests.conftest import wait_until

from .conftest import HttpClient, ServerProcess, metric_value

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_server(tiny_model, tmp_path_factory):
    """No API key configured: the API is open (and the server says so in its log)."""
    config = {"baseModel": str(tiny_model), "maxBatchSize": 1, "maxQueue": 1, "maxModelLen": 1024}
    process = ServerProcess(tmp_path_factory.mktemp("small-server"), config)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def gauges(http: HttpClient) -> tuple[float, float]:
    text = http.get("/metrics").text
    return metric_value(text, "finetune_server_running_requests"), metric_value(text, "finetune_server_queue_depth")


def test_without_a_key_the_api_is_open_and_the_log_warns(small_server, tiny_model):
    with openai.OpenAI(base_url=f"{small_server.url}/v1", api_key="anything", max_retries=0) as client:
        assert [m.id for m in client.models.list().data] == [str(tiny_model)]
    assert "no API key configured" in small_server.log()


def test_a_full_queue_answers_429_and_the_waiting_request_is_served_later(small_server, tiny_model):
    http = HttpClient(small_server.url)
    model = str(tiny_model)
    with openai.OpenAI(base_url=f"{small_server.url}/v1", api_key="anything", max_retries=0, timeout=120) as client:
        running = iter(client.completions.create(model=model, prompt="go on", max_tokens=900, temperature=0, stream=True))
        next(running)  # the only batch slot is taken
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(client.completions.create, model=model, prompt="me next", max_tokens=3, temperature=0)
            wait_until(lambda: gauges(http) == (1, 1), "one running and one waiting request")
            with pytest.raises(openai.RateLimitError) as refused:
                client.completions.create(model=model, prompt="and me", max_tokens=3)
            assert refused.value.status_code == 429
            assert refused.value.code == "rate_limit_exceeded"
            running.close()  # the first client gives up: its slot frees
            assert waiting.result().usage.completion_tokens == 3
    text = http.get("/metrics").text
    assert metric_value(text, "finetune_server_requests_total", {"status": "429"}) == 1


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(small_server, tiny_model):
    http = HttpClient(small_server.url)
    with openai.OpenAI(base_url=f"{small_server.url}/v1", api_key="anything", max_retries=0, timeout=120) as client:
        stream = client.completions.create(
            model=str(tiny_model), prompt="last words", max_tokens=900, temperature=0, stream=True, stream_options={"include_usage": True}
        )
        chunks = iter(stream)
        first = next(chunks)
        small_server.proc.send_signal(signal.SIGTERM)
        rest = list(chunks)
    assert [c.choices[0].finish_reason for c in [first, *rest] if c.choices and c.choices[0].finish_reason] == ["length"]
    assert rest[-1].usage.completion_tokens == 900
    assert small_server.proc.wait(60) == 0
    assert http.get("/healthz").status == 0  # nothing listens any more
    assert "shutting down" in small_server.log()
