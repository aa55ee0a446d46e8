"""Data: formats, chat templating, loss masking, packing. Hand-checked on the tiny model's byte tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from finetune_trainer.data.chat import ChatFormatter, ChatTemplateError
from finetune_trainer.data.formats import DatasetError, Message, read_jsonl, read_parquet
from finetune_trainer.data.loader import BatchPlan, ExampleTokenizer, load_examples
from finetune_trainer.data.masking import IGNORE_INDEX
from finetune_trainer.data.packing import collate_rows
from finetune_trainer.train.loss import CausalLMLoss

CONVERSATION = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Yo", "weight": 0},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
}


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def trained_text(tokenizer, example) -> str:
    """The text of the tokens that carry a label, consecutive runs joined with '|'."""
    runs, current = [], []
    for token, label in zip(example.input_ids, example.labels):
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(token)
    if current:
        runs.append(current)
    return "|".join(tokenizer.decode(run) for run in runs)


def tokenize(tokenizer, record: dict, train_on_inputs: str = "auto", max_len: int = 512):
    from finetune_trainer.data.formats import parse_record

    return ExampleTokenizer(tokenizer, train_on_inputs, max_len)(parse_record(record, "test.jsonl", 1))


def test_auto_trains_only_assistant_turns_with_weight_one(tokenizer):
    example = tokenize(tokenizer, CONVERSATION, "auto")
    # The whole conversation is rendered (the template's block tags eat the newline after an assistant
    # turn); only the last answer and its end-of-turn token are trained.
    assert tokenizer.decode(example.input_ids) == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nYo<|end|>"
        "<|user|>\n2+2?<|end|>\n<|assistant|>\n4<|end|>"
    )
    assert trained_text(tokenizer, example) == "4<|end|>"


def test_weight_one_everywhere_trains_every_assistant_turn(tokenizer):
    record = json.loads(json.dumps(CONVERSATION))
    record["messages"][2]["weight"] = 1
    assert trained_text(tokenizer, tokenize(tokenizer, record, "auto")) == "Yo<|end|>|4<|end|>"
    assert trained_text(tokenizer, tokenize(tokenizer, record, "false")) == "Yo<|end|>|4<|end|>"


def test_train_on_inputs_true_trains_every_token(tokenizer):
    example = tokenize(tokenizer, CONVERSATION, "true")
    assert example.labels == example.input_ids


def test_instruction_trains_the_completion_and_eos(tokenizer):
    example = tokenize(tokenizer, {"prompt": "Q: 1+1\nA: ", "completion": "2"}, "auto")
    assert tokenizer.decode(example.input_ids) == "Q: 1+1\nA: 2<|end|>"
    assert trained_text(tokenizer, example) == "2<|end|>"
    assert tokenize(tokenizer, {"prompt": "Q", "completion": "2"}, "true").labels == tokenize(
        tokenizer, {"prompt": "Q", "completion": "2"}, "true"
    ).input_ids


def test_spans_do_not_need_generation_markers(tokenizer):
    plain = tokenizer.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    formatter = ChatFormatter(tokenizer, plain)
    assert not formatter.has_generation_markers
    ids, spans = formatter.tokenize([Message("user", "Hi"), Message("assistant", "Yo"), Message("user", "Ok")])
    # A span runs to where the next turn starts: the template's text after the answer is trained too.
    assert [tokenizer.decode(ids[s.start : s.end]) for s in spans] == ["Yo<|end|>\n"]


def test_template_that_rewrites_history_is_refused_clearly(tokenizer):
    # Renders the last message first: earlier renderings are not prefixes of later ones.
    reversed_template = "{% for m in messages|reverse %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    formatter = ChatFormatter(tokenizer, reversed_template)
    with pytest.raises(ChatTemplateError, match="growing prefix"):
        formatter.tokenize([Message("user", "Hi"), Message("assistant", "Yo")])


def test_missing_chat_template_is_a_clear_error(tokenizer):
    class NoTemplate:
        chat_template = None

    with pytest.raises(ChatTemplateError, match="no chat template and chatTemplate is not set"):
        ChatFormatter(NoTemplate())


def test_truncation_is_counted_and_fully_masked_examples_dropped(tokenizer, tmp_path: Path):
    path = tmp_path / "data.jsonl"
    long_prompt = {"prompt": "x" * 100, "completion": "answer"}  # the completion falls past maxSeqLength
    path.write_text(json.dumps(long_prompt) + "\n" + json.dumps({"text": "y" * 100}) + "\n" + json.dumps(CONVERSATION) + "\n")
    examples, stats = load_examples([(path, "s3://b/data.jsonl")], ExampleTokenizer(tokenizer, "auto", 64))
    assert (stats.truncated, stats.dropped, stats.examples) == (2, 1, 2)
    assert all(len(e) <= 64 for e in examples)


def test_bad_line_names_file_line_and_rule(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n" + '{"messages": [{"role": "robot", "content": "x"}]}\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl line 2: messages\[0\].role must be one of system, user, assistant"):
        list(read_jsonl(path))


def test_parquet_rows_keep_their_labels(tokenizer, tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "tokens.parquet"
    pq.write_table(pa.table({"input_ids": [[10, 11, 12, 13]], "labels": [[-100, -100, 12, 13]]}), path)
    (raw,) = list(read_parquet(path))
    assert ExampleTokenizer(tokenizer, "auto", 64)(raw).labels == [-100, -100, 12, 13]
    assert ExampleTokenizer(tokenizer, "true", 64)(raw).labels == [10, 11, 12, 13]


def per_example_losses(module: CausalLMLoss, rows, pad_id: int) -> torch.Tensor:
    """Loss sum of every example, from one forward over the batch built from ``rows``."""
    batch = collate_rows(rows, pad_id)
    keep = batch.targets != IGNORE_INDEX
    hidden = module.causal_lm.get_decoder()(
        input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False
    ).last_hidden_state
    logits = module.causal_lm.get_output_embeddings()(hidden).float()
    token_loss = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    ).view_as(batch.targets)
    # Split each row back into its examples by the position ids restarting at 0.
    losses = []
    for r, row in enumerate(rows):
        start = 0
        for example in row:
            losses.append(token_loss[r, start : start + len(example)][keep[r, start : start + len(example)]].sum())
            start += len(example)
    return torch.stack(losses)


@pytest.mark.parametrize("attention", ["packed_sdpa", "sdpa", "eager"])
def test_packed_examples_have_the_same_losses_as_unpacked(tiny_model: Path, tokenizer, tmp_path: Path, attention: str):
    from transformers import AutoModelForCausalLM

    import finetune_trainer.train.attention  # noqa: F401  (registers packed_sdpa)

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=attention).eval()
    module = CausalLMLoss(model)
    lengths = [5, 17, 9, 30, 3, 12, 22]
    records = [{"text": "".join(chr(97 + (i * 7 + j) % 26) for j in range(n))} for i, n in enumerate(lengths)]
    path = tmp_path / "text.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    examples, _ = load_examples([(path, str(path))], ExampleTokenizer(tokenizer, "auto", 64))
    plan = BatchPlan(examples, batch_size=8, max_seq_length=48, packing=True, seed=0, pad_token_id=0)
    assert any(len(row) > 1 for row in plan.rows), "the test needs rows holding several examples"
    with torch.no_grad():
        packed_rows = [[examples[i] for i in row] for row in plan.rows]
        packed = per_example_losses(module, packed_rows, tokenizer.pad_token_id)
        order = [i for row in plan.rows for i in row]
        alone = torch.stack([per_example_losses(module, [[examples[i]]], tokenizer.pad_token_id)[0] for i in order])
        padded = per_example_losses(module, [[examples[i]] for i in order], tokenizer.pad_token_id)
        # The loss the trainer uses is the sum of these.
        total = module(*(lambda b: (b.input_ids, b.position_ids, b.targets))(collate_rows(packed_rows, 0)))
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(total, alone.sum(), rtol=1e-5, atol=1e-5)


def test_without_packing_batches_group_similar_lengths(tokenizer, tmp_path: Path):
    import random

    rng = random.Random(1)
    path = tmp_path / "text.jsonl"
    path.write_text("".join(json.dumps({"text": "a" * rng.randint(1, 60)}) + "\n" for _ in range(64)))
    examples, _ = load_examples([(path, str(path))], ExampleTokenizer(tokenizer, "auto", 64))
    grouped = BatchPlan(examples, batch_size=4, max_seq_length=64, packing=False, seed=0, pad_token_id=0)
    assert grouped.padding_fraction_estimate() < 0.1
    assert sorted(i for b in grouped.local_batches(0) for row in b for i in row) == list(range(64))
    assert grouped.local_batches(0) == grouped.local_batches(0)  # same seed and epoch, same order
    assert grouped.local_batches(0) != grouped.local_batches(1)
