"""From dataset lines to graded turns: chat answered turn by turn in context, instruction, regrade shapes, bad files."""

from __future__ import annotations

import json

import pytest

from finetune_trainer.evaluate.errors import BadInput
from finetune_trainer.evaluate.samples import parse_dataset


def jsonl(*rows) -> bytes:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows).encode()


COQA_STYLE = {
    "messages": [
        {"role": "system", "content": "Answer from the story: The cat Tom lived in Paris with Anna."},
        {"role": "user", "content": "Who is Tom?"},
        {"role": "assistant", "content": "a cat"},
        {"role": "user", "content": "Where did he live?"},
        {"role": "assistant", "content": "Paris", "references": ["in Paris"]},
        {"role": "user", "content": "With whom?"},
        {"role": "assistant", "content": "Anna"},
    ]
}


def test_each_assistant_turn_is_graded_with_the_reference_answers_of_earlier_turns_in_context():
    turns = parse_dataset(jsonl(COQA_STYLE))
    assert [(t.example, t.turn) for t in turns] == [(0, 0), (0, 1), (0, 2)]
    assert [t.references for t in turns] == [("a cat",), ("Paris", "in Paris"), ("Anna",)]
    third = turns[2]
    assert [m["role"] for m in third.messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in third.messages if m["role"] == "assistant"] == ["a cat", "Paris"]
    assert all(set(m) == {"role", "content"} for m in third.messages)  # references stay out of the prompt
    assert third.prompt_excerpt() == "With whom?"


def test_instruction_examples_have_one_turn_and_text_examples_none():
    turns = parse_dataset(jsonl({"prompt": "2+2=", "completion": "4", "references": ["four"]}, {"text": "just text"}, {"prompt": "3+3=", "completion": "6"}))
    assert [(t.example, t.prompt, t.references) for t in turns] == [(0, "2+2=", ("4", "four")), (2, "3+3=", ("6",))]


def test_max_examples_takes_the_first_examples():
    turns = parse_dataset(jsonl(*({"prompt": f"{i}", "completion": f"{i}"} for i in range(10))), max_examples=3)
    assert [t.prompt for t in turns] == ["0", "1", "2"]


def test_recorded_responses_per_turn_per_model_or_at_the_top_level():
    chat = {
        "messages": [
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1", "response": {"base": "b1", "tuned": "t1"}},
            {"role": "user", "content": "Q2"},
            {"role": "assistant", "content": "A2"},
        ],
        "response": "same for all",
    }
    first, second = parse_dataset(jsonl(chat), regrade=True)
    assert (first.recorded_response("base"), first.recorded_response("tuned"), first.recorded_response("other")) == ("b1", "t1", None)
    assert second.recorded_response("base") == "same for all"  # the top-level response answers the last turn
    [instruction] = parse_dataset(jsonl({"prompt": "p", "completion": "c", "response": ""}), regrade=True)
    assert instruction.recorded_response("any") == ""  # an empty answer is an answer


@pytest.mark.parametrize(
    ("data", "reason", "words"),
    [
        (b"", "EmptyDataset", []),
        (b"\n  \n", "EmptyDataset", []),
        (jsonl({"text": "a"}, {"text": "b"}), "NoReferences", ["2 examples"]),
        (jsonl({"messages": [{"role": "user", "content": "only a question"}]}), "NoReferences", []),
        (jsonl({"prompt": "p", "completion": "c"}, "{not json"), "InvalidDataset", ["line 2", "not JSON"]),
        (jsonl({"prompt": "p", "completion": "c"}, {"messages": [{"role": "user"}]}), "InvalidDataset", ["line 2", "messages[0]"]),
        (jsonl({"prompt": "p", "completion": 4}), "InvalidDataset", ["line 1", "completion"]),
        (jsonl({"prompt": "p", "completion": "c", "references": "c"}), "InvalidDataset", ["references"]),
        (jsonl({"question": "q"}), "InvalidDataset", ["line 1", "messages"]),
        (b"\xff\xfe", "InvalidDataset", ["UTF-8"]),
    ],
)
def test_datasets_that_cannot_be_evaluated(data, reason, words):
    with pytest.raises(BadInput) as raised:
        parse_dataset(data)
    assert raised.value.reason == reason
    for word in words:
        assert word in raised.value.message


def test_regrade_needs_responses():
    with pytest.raises(BadInput, match="NoResponses"):
        parse_dataset(jsonl({"prompt": "p", "completion": "c"}), regrade=True)
    with pytest.raises(BadInput, match="InvalidDataset"):
        parse_dataset(jsonl({"prompt": "p", "completion": "c", "response": ["a"]}), regrade=True)
