"""What vLLM refuses at start, checked from a model's ``config.json`` and an adapter's ``adapter_config.json``.

vLLM exits when ``--max-model-len`` is above the model's context length, when ``--tensor-parallel-size``
does not divide the model's attention heads, and when an adapter's rank is above ``--max-lora-rank``;
the pod then crash-loops with the reason deep in its log. The vllm runtime's fetch runs these checks
first, so the endpoint's status names the field to change. The rules follow vLLM's own
(``_get_and_verify_max_len``, ``verify_with_parallel_config``, the LoRA rank check); where a config
leaves the answer open, nothing is refused: vLLM decides.

Standard library only: the operator's side of the contract may use it too.
"""

from __future__ import annotations

from typing import Any

CONTEXT_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_target_positions",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)
"""Keys of config.json vLLM reads the context length from; the smallest present wins."""

UNSCALED_ROPE_TYPES = frozenset({"su", "longrope", "llama3"})
"""RoPE scaling types whose factor vLLM does not apply to the context length (it is already there)."""


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of a config (multimodal configs nest it under ``text_config``)."""
    nested = config.get("text_config")
    return nested if isinstance(nested, dict) else config


def context_length(config: dict[str, Any]) -> tuple[float, str] | None:
    """(tokens, what says so) the model attends over, as vLLM derives it; None when the config does not say."""
    cfg = text_config(config)
    found = [(cfg[k], k) for k in CONTEXT_KEYS if isinstance(cfg.get(k), (int, float)) and not isinstance(cfg.get(k), bool)]
    if not found:
        return None
    length, key = min(found)
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    if isinstance(rope, dict):
        rope_type = rope.get("rope_type") or rope.get("type") or "default"
        factor = rope.get("factor")
        if rope_type not in UNSCALED_ROPE_TYPES and isinstance(factor, (int, float)):
            if rope_type == "yarn" and isinstance(rope.get("original_max_position_embeddings"), int):
                length = rope["original_max_position_embeddings"]
            length = length * factor
            key = f"{key} with rope_scaling factor {factor:g}"
    return length, key


def model_problems(config: dict[str, Any], max_model_len: int, tensor_parallel_size: int) -> list[str]:
    """Why vLLM would refuse to serve this model with these settings (empty: it would not)."""
    problems = []
    cfg = text_config(config)
    derived = context_length(config)
    if derived is not None:
        length, key = derived
        model_max = cfg.get("model_max_length")
        if max_model_len > length and not (isinstance(model_max, int) and max_model_len <= model_max):
            problems.append(
                f"spec.maxModelLen {max_model_len} is above the model's context length {int(length)} "
                f"({key} in config.json); set spec.maxModelLen to {int(length)} or less"
            )
    heads = cfg.get("num_attention_heads")
    if isinstance(heads, int) and heads > 0 and heads % tensor_parallel_size:
        divisors = [n for n in range(1, min(heads, 16) + 1) if heads % n == 0]
        problems.append(
            f"spec.resources.gpus {tensor_parallel_size} does not divide the model's {heads} attention heads "
            f"(vLLM splits them evenly across a replica's GPUs); use one of {', '.join(map(str, divisors))} GPUs"
        )
    return problems


def adapter_rank(adapter_config: dict[str, Any]) -> int | None:
    """The largest LoRA rank of an adapter (``r``, or a per-module ``rank_pattern``)."""
    ranks = [adapter_config.get("r")]
    pattern = adapter_config.get("rank_pattern")
    if isinstance(pattern, dict):
        ranks += list(pattern.values())
    ranks = [r for r in ranks if isinstance(r, int) and not isinstance(r, bool)]
    return max(ranks) if ranks else None


def adapter_problem(uri: str, adapter_config: dict[str, Any], max_lora_rank: int, allowed: tuple[int, ...]) -> str | None:
    """Why vLLM would refuse this adapter under ``--max-lora-rank max_lora_rank``; None if it would not."""
    rank = adapter_rank(adapter_config)
    if rank is None or rank <= max_lora_rank:
        return None
    enough = next((r for r in allowed if r >= rank), None)
    fix = f"set spec.maxLoraRank to {enough} or more" if enough else f"vLLM serves ranks up to {allowed[-1]}: retrain with a lower lora.r"
    return f"{uri} has LoRA rank {rank}, above the endpoint's spec.maxLoraRank {max_lora_rank}; {fix}"
