"""An llm_judge's ``url`` is a URL its tenant chose: what the evaluation pod refuses, told as the attacks.

A tenant who may name a Secret for a judge (but not read it) tries to have the pod send the key somewhere it
can read: over plain http, through a redirect to another origin, or to the node's metadata service and the
cluster's own addresses. Each is refused (before the first request where the URL shows it, as a per-sample
error where only a redirect does), and the key never appears in a message. Endpoints the operator resolved
from an InferenceEndpoint (``trustedEndpoint``) are its own Services and are not held to these rules.
"""

from __future__ import annotations

import http.server
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from finetune_trainer.contract import EvalModel, GraderSpec
from finetune_trainer.evaluate.endpoints import MAX_RETRIES
from finetune_trainer.evaluate.errors import BadInput
from finetune_trainer.evaluate.graders import GradeItem
from finetune_trainer.evaluate.judge import LlmJudgeGrader
from finetune_trainer.evaluate.run import main
from finetune_trainer.evaluate.samples import EvalTurn
from finetune_trainer.outbound import MAX_REDIRECTS
from tests.tls import LoopbackServer, self_signed_certificate

from .conftest import write_config, write_jsonl

KEY = "sk-judge-9d2e"


class JudgeServer:
    """A loopback judge that records every request (path, Authorization). It answers ``SCORE: 5``, or, with
    ``redirect_to`` set, answers 307 to ``redirect_to`` + the request's path (``"self"``: to itself, forever)."""

    def __init__(self, certificate: tuple[Path, Path] | None = None):
        self.requests: list[tuple[str, str | None]] = []
        self.redirect_to: str | None = None
        judge = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the http.server API)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                judge.requests.append((self.path, self.headers.get("Authorization")))
                if judge.redirect_to is not None:
                    target = judge.url if judge.redirect_to == "self" else judge.redirect_to
                    self.send_response(307)
                    self.send_header("Location", target + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                message = {"role": "assistant", "content": "SCORE: 5"}
                body = json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": "judge",
                                   "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}).encode()  # fmt: skip
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.loopback = LoopbackServer(Handler, certificate)
        self.url, self.stop = self.loopback.url, self.loopback.stop


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def servers(certificate, monkeypatch) -> Iterator[dict[str, JudgeServer]]:
    """Two https judges (another port is another origin) and a plain http one, all trusted."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    made = {"a": JudgeServer(certificate), "b": JudgeServer(certificate), "plain": JudgeServer()}
    yield made
    for server in made.values():
        server.stop()


@pytest.fixture
def key_file(tmp_path: Path) -> str:
    path = tmp_path / "judge-key"
    path.write_text(KEY + "\n")
    return str(path)


def judge_grader(endpoint: str, key_file: str | None = None, allow_private_urls: bool = False, trusted: bool = False) -> LlmJudgeGrader:
    judge = EvalModel(name="judge", endpoint=endpoint, model="judge", api_key_file=key_file, trusted_endpoint=trusted)
    return LlmJudgeGrader.from_spec(GraderSpec(name="judge", type="llm_judge", judge=judge), allow_private_urls=allow_private_urls)


def grade_one(grader: LlmJudgeGrader) -> object:
    turn = EvalTurn(example=0, turn=0, messages=({"role": "user", "content": "Capital of France?"},), references=("Paris",))
    return grader.grade([GradeItem(turn, "Paris")])[0]


def refusal(endpoint: str, **options) -> BadInput:
    with pytest.raises(BadInput) as caught:
        judge_grader(endpoint, **options)
    assert caught.value.reason == "EndpointRefused"
    assert KEY not in str(caught.value)
    return caught.value


# -- Before the first request ----------------------------------------------------------------------


def test_a_key_is_never_sent_over_plain_http(servers, key_file):
    plain = servers["plain"]
    error = refusal(f"{plain.url}/v1", key_file=key_file, allow_private_urls=True)
    assert "token_needs_https" in str(error) and "'judge'" in str(error)
    assert plain.requests == []


@pytest.mark.parametrize(
    ("host", "words"),
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.7", "private"),
        ("[::1]", "loopback"),
        ("[::ffff:192.168.1.1]", "private"),
        ("100.64.0.1", "reserved"),
    ],
)
def test_private_addresses_are_refused_unless_the_admin_allows_them(host, words):
    error = refusal(f"http://{host}:8000/v1")
    assert words in str(error) and "address_refused" in str(error) and "FINETUNE_ALLOW_PRIVATE_URLS" in str(error)


@pytest.mark.parametrize("allow_private_urls", [False, True])
def test_the_metadata_service_is_refused_even_where_private_addresses_are_allowed(allow_private_urls):
    error = refusal("http://169.254.169.254/latest/v1", allow_private_urls=allow_private_urls)
    assert "link-local" in str(error)


def test_a_judge_on_a_private_address_the_admin_allows_grades(servers, key_file):
    a = servers["a"]
    assert grade_one(judge_grader(f"{a.url}/v1", key_file=key_file, allow_private_urls=True)) == 1.0
    assert a.requests == [("/v1/chat/completions", f"Bearer {KEY}")]


def test_an_endpoint_the_operator_resolved_is_called_as_it_is(servers, key_file):
    """An InferenceEndpoint's Service: plain http inside the cluster, on a private address."""
    plain = servers["plain"]
    assert grade_one(judge_grader(f"{plain.url}/v1", key_file=key_file, trusted=True)) == 1.0
    assert plain.requests == [("/v1/chat/completions", f"Bearer {KEY}")]


def test_an_evaluation_with_a_refused_judge_url_exits_42_naming_the_rule(tmp_path, capsys):
    dataset = write_jsonl(tmp_path / "answered.jsonl", [{"prompt": "Capital of France?", "completion": "Paris", "response": "Paris"}])
    judge = {"name": "judge", "endpoint": "http://127.0.0.1:9/v1", "model": "judge"}
    config = {
        "models": [{"name": "recorded"}],
        "regrade": True,
        "dataset": str(dataset),
        "graders": [{"name": "judge", "type": "llm_judge", "judge": judge}],
        "outputUri": str(tmp_path / "out"),
    }
    assert main(["--config", str(write_config(tmp_path / "eval.json", config)), "--quiet"]) == 42
    assert "EndpointRefused" in capsys.readouterr().err
    assert not (tmp_path / "out" / "summary.json").exists()


# -- Redirects -------------------------------------------------------------------------------------


def test_a_redirect_to_another_origin_does_not_carry_the_key(servers, key_file):
    a, b = servers["a"], servers["b"]
    a.redirect_to = b.url
    assert grade_one(judge_grader(f"{a.url}/v1", key_file=key_file, allow_private_urls=True)) == 1.0
    assert a.requests == [("/v1/chat/completions", f"Bearer {KEY}")]
    assert b.requests == [("/v1/chat/completions", None)]


def test_a_redirect_to_the_metadata_service_is_a_per_sample_error(servers):
    a = servers["a"]
    a.redirect_to = "http://169.254.169.254"
    score = grade_one(judge_grader(f"{a.url}/v1", allow_private_urls=True))
    assert score.reason == "JudgeUnreachable"
    assert "link-local" in score.message


def test_redirects_are_followed_at_most_max_redirects_times(servers):
    a = servers["a"]
    a.redirect_to = "self"
    score = grade_one(judge_grader(f"{a.url}/v1", allow_private_urls=True))
    assert score.reason == "JudgeUnreachable"
    assert "redirect" in score.message.lower()
    # Each attempt (the first and the client's retries) stops after MAX_REDIRECTS redirects.
    assert len(a.requests) == (MAX_REDIRECTS + 1) * (MAX_RETRIES + 1)


@pytest.mark.parametrize("endpoint", ["http://169.254.169.254/latest/v1", "http://10.0.0.7:8000/v1"])
def test_a_pairwise_judge_is_held_to_the_same_rules(endpoint, key_file):
    from finetune_trainer.evaluate.pairwise import PairwiseGrader

    judge = EvalModel(name="judge", endpoint=endpoint, model="judge", api_key_file=key_file)
    with pytest.raises(BadInput) as caught:
        PairwiseGrader.from_spec(GraderSpec(name="win_rate", type="pairwise", judge=judge))
    assert caught.value.reason == "EndpointRefused" and KEY not in str(caught.value)
