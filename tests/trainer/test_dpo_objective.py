"""The DPO objective's parts: pairs kept whole in packed batches, per-sequence log-probabilities, the losses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from finetune_local.preference_data import follows_instruction, preference_pairs
from finetune_trainer.contract import DpoOptions
from finetune_trainer.data.formats import parse_record
from finetune_trainer.data.masking import IGNORE_INDEX
from finetune_trainer.data.preference import PairBatchPlan, PairTokenizer
from finetune_trainer.train.dpo import SequenceLogProbs, preference_loss


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def tokenized_pairs(tokenizer, rows: list[dict], max_len: int = 128, share_prompt: bool = False):
    tokenize = PairTokenizer(tokenizer, max_len, share_prompt=share_prompt)
    return [tokenize(parse_record(row, "pairs.jsonl", i + 1)) for i, row in enumerate(rows)]


def test_a_pair_trains_on_its_two_answers_and_their_end_of_turn_only(tokenizer):
    row = preference_pairs(1, seed=0)[0]
    (pair,) = tokenized_pairs(tokenizer, [row])
    for sequence, key in ((pair.preferred, "preferred_output"), (pair.non_preferred, "non_preferred_output")):
        trained = tokenizer.decode([t for t, label in zip(sequence.input_ids, sequence.labels) if label != IGNORE_INDEX])
        assert trained == row[key][0]["content"] + "<|end|>"
    shared = len(tokenizer.apply_chat_template(row["input"]["messages"], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
    assert pair.preferred.input_ids[:shared] == pair.non_preferred.input_ids[:shared], "the same conversation before each answer"


@pytest.mark.parametrize("share_prompt", [False, True], ids=["whole", "shared-prompt"])
def test_packed_batches_hold_whole_pairs_and_say_which_sequence_each_token_is(tokenizer, share_prompt: bool):
    pairs = tokenized_pairs(tokenizer, preference_pairs(30, seed=1), share_prompt=share_prompt)
    plan = PairBatchPlan(pairs, batch_size=2, max_seq_length=64, packing=True, seed=0, pad_token_id=tokenizer.pad_token_id)
    seen = []
    for rows in plan.global_batches(0):
        batch = plan.collate(rows)
        seen += batch.pairs
        assert len(batch.answer_tokens) == 2 * batch.num_pairs
        for k, index in enumerate(batch.pairs):
            for j, sequence in enumerate((pairs[index].preferred, pairs[index].non_preferred)):
                targets = batch.targets[batch.sequence_ids == 2 * k + j].tolist()
                assert targets == [t for t in sequence.labels[1:] if t != IGNORE_INDEX]
                assert batch.answer_tokens[2 * k + j] == sequence.num_label_tokens
        assert (batch.targets[batch.sequence_ids < 0] == IGNORE_INDEX).all()
        assert batch.input_ids.shape[1] <= 2 * 64
    assert sorted(seen) == list(range(30)), "every pair exactly once in an epoch"


def test_a_shared_prompt_lays_the_conversation_out_once_and_no_target_of_the_second_answer_in_it(tokenizer):
    rows = preference_pairs(20, seed=3)
    whole, shared = tokenized_pairs(tokenizer, rows), tokenized_pairs(tokenizer, rows, share_prompt=True)
    for row, a, b in zip(rows, whole, shared):
        prompt = len(tokenizer.apply_chat_template(row["input"]["messages"], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
        assert b.shared == prompt - 1, "everything up to the answer's first prediction"
        assert len(b) == len(a) - b.shared
        assert b.branch.input_ids == a.non_preferred.input_ids[b.shared :]
        assert all(t == IGNORE_INDEX for t in a.non_preferred.labels[1 : b.shared + 1]), "the shared positions predict none of it"
    plan = PairBatchPlan(shared, batch_size=4, max_seq_length=64, packing=True, seed=0, pad_token_id=tokenizer.pad_token_id)
    batch = plan.collate(plan.global_batches(0)[0])
    k, index = 0, batch.pairs[0]
    branch = (batch.sequence_ids[0] == 2 * k + 1).nonzero()[0, 0]  # its first target sits on the branch's first token...
    assert int(batch.position_ids[0, branch]) == shared[index].shared, "...whose position goes on from the shared tokens"


@pytest.mark.parametrize("share_prompt", [False, True], ids=["whole", "shared-prompt"])
def test_per_sequence_log_probabilities_are_the_same_packed_and_alone(tiny_model: Path, tokenizer, share_prompt: bool):
    from transformers import AutoModelForCausalLM

    import finetune_trainer.train.attention  # noqa: F401  (registers packed_sdpa)

    pairs = tokenized_pairs(tokenizer, preference_pairs(6, seed=2), share_prompt=share_prompt)
    assert all(p.shared > 0 for p in pairs) == share_prompt
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="packed_sdpa").eval()
    module = SequenceLogProbs(model)
    plan = PairBatchPlan(pairs, batch_size=6, max_seq_length=256, packing=True, seed=0, pad_token_id=tokenizer.pad_token_id)
    (rows,) = plan.global_batches(0)
    batch = plan.collate(rows)
    assert len(rows) < 6, "several pairs share a row"
    with torch.no_grad():
        packed = module(batch.input_ids, batch.position_ids, batch.targets, batch.sequence_ids, 2 * batch.num_pairs)
        for k, index in enumerate(batch.pairs):
            for j, sequence in enumerate((pairs[index].preferred, pairs[index].non_preferred)):
                ids = torch.tensor([sequence.input_ids])
                log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1], dim=-1)
                labels = torch.tensor(sequence.labels[1:])
                keep = labels != IGNORE_INDEX
                alone = log_probs[keep].gather(1, labels[keep, None]).sum()
                assert packed[2 * k + j] == pytest.approx(float(alone), abs=1e-4)


def test_the_sigmoid_loss_is_the_dpo_paper_s_and_label_smoothing_is_conservative_dpo():
    policy = torch.tensor([-10.0, -12.0, -7.0, -6.0], requires_grad=True)
    reference = torch.tensor([-11.0, -11.0, -7.5, -6.5])
    tokens = torch.tensor([3, 3, 2, 4])
    loss, preferred, rejected = preference_loss(policy, reference, tokens, DpoOptions(beta=0.2))
    margins = [(-10 + 11) - (-12 + 11), (-7 + 7.5) - (-6 + 6.5)]  # 2.0 and 0.0
    assert loss.tolist() == pytest.approx([math.log1p(math.exp(-0.2 * m)) for m in margins])
    assert preferred.tolist() == pytest.approx([0.2, 0.1]) and rejected.tolist() == pytest.approx([-0.2, 0.1])
    loss.sum().backward()
    assert policy.grad[0] < 0 < policy.grad[1], "descent raises the preferred answer and lowers the other"

    smoothed, _, _ = preference_loss(policy.detach(), reference, tokens, DpoOptions(beta=0.2, label_smoothing=0.25))
    expected = [0.75 * math.log1p(math.exp(-0.2 * m)) + 0.25 * math.log1p(math.exp(0.2 * m)) for m in margins]
    assert smoothed.tolist() == pytest.approx(expected)


def test_sft_weight_adds_the_preferred_answer_s_per_token_loss_and_pulls_it_up():
    policy = torch.tensor([-6.0, -9.0, -4.0, -2.0], requires_grad=True)
    reference = torch.tensor([-5.0, -5.0, -4.0, -4.0])
    tokens = torch.tensor([3, 2, 4, 4])
    plain, _, _ = preference_loss(policy, reference, tokens, DpoOptions(beta=0.2))
    rpo, preferred, rejected = preference_loss(policy, reference, tokens, DpoOptions(beta=0.2, sft_weight=0.5))
    assert (rpo - plain).tolist() == pytest.approx([0.5 * 6.0 / 3, 0.5 * 4.0 / 4])
    assert preferred.tolist() == pytest.approx([-0.2, 0.0]) and rejected.tolist() == pytest.approx([-0.8, 0.4]), "rewards are DPO's"
    (plain_grad,) = torch.autograd.grad(plain.sum(), policy)
    (rpo_grad,) = torch.autograd.grad(rpo.sum(), policy)
    assert (rpo_grad - plain_grad).tolist() == pytest.approx([-0.5 / 3, 0.0, -0.5 / 4, 0.0]), "only the preferred answers, per token"


def test_the_ipo_loss_averages_the_log_ratios_per_token_and_aims_at_one_over_two_beta():
    policy = torch.tensor([-10.0, -12.0])
    reference = torch.tensor([-11.0, -11.0])
    loss, _, _ = preference_loss(policy, reference, torch.tensor([2, 4]), DpoOptions(beta=0.5, loss_type="ipo"))
    margin = 1.0 / 2 - (-1.0) / 4
    assert loss.tolist() == pytest.approx([(margin - 1.0) ** 2])


def test_half_the_pairs_ask_for_each_case_and_the_preferred_answer_follows_the_instruction():
    rows = preference_pairs(200, seed=4)
    shouted = sum("Shout:" in r["input"]["messages"][0]["content"] for r in rows)
    assert 70 <= shouted <= 130
    for row in rows:
        prompt = row["input"]["messages"][0]["content"]
        assert follows_instruction(prompt, row["preferred_output"][0]["content"]) is True
        assert follows_instruction(prompt, row["non_preferred_output"][0]["content"]) is False
