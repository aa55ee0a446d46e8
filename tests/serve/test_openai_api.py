"""A user points the official OpenAI client at the builtin server and uses it like the hosted API."""

from __future__ import annotations

import asyncio

import pytest
from openai import AsyncOpenAI

from .conftest import API_KEY

pytestmark = pytest.mark.slow

HELLO = [{"role": "user", "content": "Say hello."}]


def test_lists_the_base_model_and_the_adapters_of_the_config_file(client, server):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) >= {"tiny-base", "alpha"}
    assert models["tiny-base"].owned_by == "finetune"
    assert client.models.retrieve("alpha").id == "alpha"


def test_chat_answers_with_the_model_own_chat_template_greedily(client, reference):
    answer = client.chat.completions.create(model="tiny-base", messages=HELLO, max_tokens=12, temperature=0)
    assert answer.object == "chat.completion"
    assert answer.id.startswith("chatcmpl-")
    assert answer.model == "tiny-base"
    choice = answer.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == reference.chat(HELLO, 12)
    assert choice.finish_reason == "length"
    prompt = reference.tokenizer.apply_chat_template(HELLO, add_generation_prompt=True, tokenize=False)
    assert answer.usage.prompt_tokens == len(reference.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert answer.usage.completion_tokens == 12
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 12


def test_max_completion_tokens_limits_the_answer(client):
    answer = client.chat.completions.create(model="tiny-base", messages=HELLO, max_completion_tokens=3, temperature=0)
    assert answer.usage.completion_tokens == 3
    assert answer.choices[0].finish_reason == "length"


def test_streamed_chat_equals_the_whole_answer_and_ends_with_usage(client):
    whole = client.chat.completions.create(model="tiny-base", messages=HELLO, max_tokens=20, temperature=0)
    stream = client.chat.completions.create(
        model="tiny-base", messages=HELLO, max_tokens=20, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_include_usage_has_no_usage_chunk(client):
    chunks = list(client.chat.completions.create(model="tiny-base", messages=HELLO, max_tokens=4, temperature=0, stream=True))
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_completions_of_several_prompts_with_n_choices(client, reference):
    answer = client.completions.create(model="tiny-base", prompt=["Once upon", "The end"], max_tokens=6, temperature=0, n=2)
    assert answer.object == "text_completion"
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    assert answer.choices[0].text == answer.choices[1].text == reference.complete("Once upon", 6)
    assert answer.choices[2].text == answer.choices[3].text == reference.complete("The end", 6)
    assert answer.usage.completion_tokens == 24
    assert answer.usage.prompt_tokens == len("Once upon") + len("The end")


def test_streamed_completion(client, reference):
    chunks = list(client.completions.create(model="tiny-base", prompt="Once upon", max_tokens=8, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == reference.complete("Once upon", 8)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_strings_end_the_answer_and_are_trimmed(client, reference):
    full = reference.complete("Once upon", 16)
    stop = full[5:7]
    expected = full[: full.index(stop)]
    answer = client.completions.create(model="tiny-base", prompt="Once upon", max_tokens=16, temperature=0, stop=[stop, "never-seen"])
    assert answer.choices[0].text == expected
    assert answer.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="tiny-base", prompt="Once upon", max_tokens=16, temperature=0, stop=stop, stream=True)
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_seed_makes_sampling_repeatable(client):
    def sample(seed: int) -> str:
        answer = client.completions.create(model="tiny-base", prompt="Once upon", max_tokens=16, temperature=1.0, top_p=0.9, seed=seed)
        return answer.choices[0].text

    assert sample(7) == sample(7)
    assert len({sample(s) for s in (1, 2, 3)}) > 1


def test_a_hundred_concurrent_clients_are_all_answered(server, reference):
    expected = reference.chat(HELLO, 8)

    async def run() -> list:
        async with AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120) as client:
            calls = [
                client.chat.completions.create(model="tiny-base", messages=HELLO, max_tokens=8, temperature=0) for _ in range(100)
            ]
            return await asyncio.gather(*calls)

    answers = asyncio.run(run())
    assert len(answers) == 100
    assert all(a.choices[0].message.content == expected for a in answers)
    assert all(a.usage.completion_tokens == 8 for a in answers)
