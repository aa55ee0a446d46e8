"""``python -m finetune_local.tiny_model``: a small Llama-architecture model for the tests, the demo and the
benchmarks (not part of the trainer image: no cluster needs it).

Written offline and deterministically from a seed: the same seed gives byte-identical weights. The
tokenizer is byte-level (every byte is a token, plus chat special tokens), so any UTF-8 text encodes
without a trained vocabulary, and its chat template marks assistant turns with ``{% generation %}``
so transformers can return the assistant-token mask.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from finetune_trainer.contract import ExitCode

SPECIAL_TOKENS = ["<pad>", "<s>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>\n{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}\n"
    "{% else %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tokenizer(corpus: list[str] | None = None, vocab_size: int = 1024):
    """A byte-level BPE tokenizer: the special tokens, the 256 byte tokens, and, when a corpus is given,
    merges learned from it up to ``vocab_size`` (so frequent words become single tokens, as in a real
    model's vocabulary). Without a corpus there are no merges: every byte is a token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    if corpus:
        backend = Tokenizer(models.BPE(fuse_unk=False))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        trainer = trainers.BpeTrainer(vocab_size=max(vocab_size, len(SPECIAL_TOKENS) + len(alphabet)), special_tokens=SPECIAL_TOKENS,
                                      initial_alphabet=alphabet, show_progress=False)
        backend.train_from_iterator(corpus, trainer=trainer)
    else:
        vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
        for symbol in alphabet:
            vocab[symbol] = len(vocab)
        backend = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="<|end|>",
        pad_token="<pad>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def corpus_texts(path: Path) -> list[str]:
    """The text of a JSONL file for tokenizer training: every message's content, prompt, completion or text."""
    texts: list[str] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        texts.extend(m.get("content", "") for m in row.get("messages", []) if isinstance(m, dict))
        texts.extend(str(row[key]) for key in ("prompt", "completion", "text") if key in row)
    return texts


def make_tiny_model(
    output: Path,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 176,
    max_position_embeddings: int = 2048,
    init_std: float = 0.02,
    tokenizer_corpus: list[str] | None = None,
    vocab_size: int = 1024,
) -> Path:
    """Write config, safetensors weights, tokenizer and generation config of a tiny Llama to ``output``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(tokenizer_corpus, vocab_size)
    vocab_size = len(tokenizer)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        initializer_range=init_std,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
    (output / "tiny_model.json").write_text(json.dumps({"seed": seed, "vocab_size": vocab_size}, indent=2) + "\n")
    return output


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune_local.tiny_model", description=__doc__.splitlines()[0])
    parser.add_argument("--output", "-o", required=True, help="folder to write the model to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--intermediate-size", type=int, default=176)
    parser.add_argument("--init-std", type=float, default=0.02,
                        help="weight init scale; the output head's logits can reach about init-std x hidden-size, "
                             "so a frozen head (LoRA) needs about 1/sqrt(hidden-size) to express confident answers")
    parser.add_argument("--tokenizer-corpus", type=Path, metavar="JSONL",
                        help="learn BPE merges from this file's text (default: no merges, one token per byte)")
    parser.add_argument("--vocab-size", type=int, default=1024, help="vocabulary size with --tokenizer-corpus")
    parser.add_argument("--upload", metavar="S3_URI", help="also upload the model (with its manifest) to this URI")
    parser.add_argument("--endpoint", help="object store host:port for --upload")
    parser.add_argument("--insecure", action="store_true", help="plain HTTP to the object store")
    args = parser.parse_args(argv)
    path = make_tiny_model(
        Path(args.output),
        seed=args.seed,
        hidden_size=args.hidden_size,
        num_layers=args.layers,
        num_heads=args.heads,
        num_kv_heads=args.kv_heads,
        intermediate_size=args.intermediate_size,
        init_std=args.init_std,
        tokenizer_corpus=corpus_texts(args.tokenizer_corpus) if args.tokenizer_corpus else None,
        vocab_size=args.vocab_size,
    )
    if args.upload:
        from finetune_trainer.contract import StorageConfig
        from finetune_trainer.storage import ObjectStore

        if not args.endpoint:
            parser.error("--upload needs --endpoint")
        store = ObjectStore(StorageConfig(endpoint=args.endpoint, secure=not args.insecure))
        store.upload_artifact(path, args.upload, kind="model", base_model="tiny-llama")
    print(path)
    return ExitCode.OK


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
