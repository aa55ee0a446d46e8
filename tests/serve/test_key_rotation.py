"""A rotated API key Secret (the mounted file swapped for a new one) takes effect without a restart."""

from __future__ import annotations

import os

import openai
import pytest

from tests.conftest import wait_until

from .conftest import HttpClient, ServerProcess

pytestmark = pytest.mark.slow

HELLO = [{"role": "user", "content": "hello"}]


def swap(path, text: str) -> None:
    """As the kubelet updates a Secret volume: a new file swapped in atomically."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def answers(url: str, key: str) -> bool:
    with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30) as client:
        try:
            client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=1)
        except openai.AuthenticationError:
            return False
    return True


def test_a_rotated_key_file_replaces_the_key_and_a_bad_one_keeps_it(tiny_model, tmp_path):
    key_file = tmp_path / "api-key"
    key_file.write_text("first-key\n")
    server = ServerProcess(tmp_path, {"baseModel": str(tiny_model), "servedModelName": "tiny", "apiKeyFile": str(key_file)})
    try:
        server.wait_ready()
        assert answers(server.url, "first-key") and not answers(server.url, "second-key")

        swap(key_file, "second-key\n")
        wait_until(lambda: answers(server.url, "second-key"), "the new key to be accepted", timeout=30)
        assert not answers(server.url, "first-key"), "the old key stops working"

        swap(key_file, "   \n")  # an empty Secret must not open the API or lock everyone out
        wait_until(lambda: "is empty; keeping the current key" in server.log(), "the empty key file to be reported", timeout=30)
        assert answers(server.url, "second-key") and HttpClient(server.url).get("/v1/models").status == 401
        assert "second-key" not in server.log() and "first-key" not in server.log()
    finally:
        server.stop()
