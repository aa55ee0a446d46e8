"""Answers for the graded turns: from an OpenAI-compatible endpoint, a model loaded directly, or the dataset.

Every generator returns, per turn and in order, the answer text or a ``SampleError``. An empty answer
is an answer (graded as such); a request that fails is an error.

* ``EndpointGenerator``: chat turns go to ``/chat/completions`` with the conversation so far,
  instruction turns to ``/completions`` with the prompt; a few requests in flight at once.
* ``DirectGenerator``: transformers (+ a peft LoRA adapter), prompts batched with left padding and
  sorted by length; chat turns rendered with the tokenizer's chat template (the adapter folder's
  tokenizer when it has one, else the base model's).
* ``RecordedResponses``: ``regrade``; the answers the dataset already holds, no model involved.

Decoding is greedy when ``temperature`` is 0 (the default), so results are reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from finetune_trainer.contract import EvalModel, GenerationSettings
from finetune_trainer.evaluate.endpoints import openai_client, request_error
from finetune_trainer.evaluate.errors import BadInput, SampleError
from finetune_trainer.evaluate.samples import EvalTurn

if TYPE_CHECKING:
    from finetune_trainer.storage import ObjectStore

Answer = str | SampleError


class Generator(Protocol):
    def generate(self, turns: Sequence[EvalTurn]) -> list[Answer]: ...

    def close(self) -> None: ...


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the first of the stop strings, as an OpenAI server returns it."""
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


class RecordedResponses:
    """The answers held in the dataset (``regrade``): nothing is generated."""

    def __init__(self, model_name: str):
        self.model_name = model_name

    def generate(self, turns: Sequence[EvalTurn]) -> list[Answer]:
        answers: list[Answer] = []
        for turn in turns:
            response = turn.recorded_response(self.model_name)
            if response is None:
                answers.append(SampleError("NoResponse", f"example {turn.example} turn {turn.turn} holds no response for model {self.model_name!r}"))
            else:
                answers.append(response)
        return answers

    def close(self) -> None:
        pass


class EndpointGenerator:
    """Answers from an OpenAI-compatible API, ``settings.concurrency`` requests at a time."""

    def __init__(self, model: EvalModel, settings: GenerationSettings, allow_private_urls: bool = False):
        self.model = model
        self.settings = settings
        self._client = openai_client(model, allow_private_urls)

    def _sampling(self) -> dict:
        s = self.settings
        params: dict = {"max_tokens": s.max_tokens, "temperature": s.temperature, "top_p": s.top_p}
        if s.stop:
            params["stop"] = list(s.stop)
        if s.temperature > 0:
            params["seed"] = s.seed
        return params

    def answer(self, turn: EvalTurn) -> Answer:
        try:
            if turn.messages is not None:
                completion = self._client.chat.completions.create(
                    model=self.model.model,
                    messages=[{"role": m["role"], "content": m["content"]} for m in turn.messages],
                    **self._sampling(),
                )
                choices = completion.choices or []
                if not choices:
                    return SampleError("GenerationFailed", "the endpoint returned no choices")
                return (choices[0].message.content if choices[0].message is not None else None) or ""
            completion = self._client.completions.create(model=self.model.model, prompt=turn.prompt or "", **self._sampling())
            choices = completion.choices or []
            if not choices:
                return SampleError("GenerationFailed", "the endpoint returned no choices")
            return choices[0].text or ""
        except Exception as e:
            return request_error(e, "GenerationFailed", "GenerationFailed")

    def generate(self, turns: Sequence[EvalTurn]) -> list[Answer]:
        if not turns:
            return []
        with ThreadPoolExecutor(max_workers=min(self.settings.concurrency, len(turns))) as pool:
            return list(pool.map(self.answer, turns))

    def close(self) -> None:
        self._client.close()


class DirectGenerator:
    """Answers from a causal LM loaded in this process (CPU, or the first GPU when there is one)."""

    def __init__(self, model_dir: Path, adapter_dir: Path | None, settings: GenerationSettings, model_name: str = "model"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.settings = settings
        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        tokenizer_dir = adapter_dir if adapter_dir is not None and (adapter_dir / "tokenizer_config.json").is_file() else model_dir
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
        except (OSError, ValueError) as e:
            raise BadInput("ModelNotFound", f"model {model_name!r}: cannot load {model_dir.name}: {e}") from None
        if adapter_dir is not None:
            from peft import PeftModel

            try:
                model = PeftModel.from_pretrained(model, adapter_dir)
            except (OSError, ValueError) as e:
                raise BadInput("ModelNotFound", f"model {model_name!r}: cannot load adapter: {e}") from None
        self.model = model.to(self.device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        config = getattr(self.model, "config", None)
        self.max_positions = int(getattr(config, "max_position_embeddings", 0) or 0) or None
        self.model_name = model_name

    def prompt_ids(self, turn: EvalTurn) -> list[int]:
        """Token ids of the prompt, the oldest tokens dropped if it would not fit with the answer."""
        if turn.messages is not None:
            if not self.tokenizer.chat_template:
                raise BadInput("NoChatTemplate", f"model {self.model_name!r}: the tokenizer has no chat template for chat examples")
            text = self.tokenizer.apply_chat_template(list(turn.messages), add_generation_prompt=True, tokenize=False)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = self.tokenizer(turn.prompt or "")["input_ids"]
        if self.max_positions is not None:
            room = max(1, self.max_positions - self.settings.max_tokens)
            ids = ids[-room:]
        return list(ids)

    def _generate_batch(self, batch: list[list[int]]) -> list[Answer]:
        torch = self.torch
        s = self.settings
        padded = self.tokenizer.pad({"input_ids": batch}, padding=True, return_tensors="pt").to(self.device)
        params: dict = {"max_new_tokens": s.max_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if s.temperature > 0:
            params.update(do_sample=True, temperature=s.temperature, top_p=s.top_p)
        else:
            params.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            output = self.model.generate(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], **params)
        new_tokens = output[:, padded["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [cut_at_stop(text, s.stop) for text in texts]

    def generate(self, turns: Sequence[EvalTurn]) -> list[Answer]:
        if not turns:
            return []
        self.torch.manual_seed(self.settings.seed)
        prompts = [self.prompt_ids(turn) for turn in turns]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        answers: list[Answer | None] = [None] * len(prompts)
        size = self.settings.batch_size
        for start in range(0, len(order), size):
            indices = order[start : start + size]
            try:
                texts = self._generate_batch([prompts[i] for i in indices])
            except RuntimeError as e:  # out of memory and the like: these samples fail, the run goes on
                texts = [SampleError("GenerationFailed", f"{type(e).__name__}: {str(e)[:300]}")] * len(indices)
            for i, text in zip(indices, texts, strict=True):
                answers[i] = text
        assert all(a is not None for a in answers)
        return answers  # type: ignore[return-value]

    def close(self) -> None:
        del self.model
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()


def open_generator(
    model: EvalModel, settings: GenerationSettings, regrade: bool, store: ObjectStore, workdir: Path, allow_private_urls: bool = False
) -> Generator:
    """The generator for one model of the config (``regrade``: the dataset's recorded answers)."""
    if regrade:
        return RecordedResponses(model.name)
    if model.endpoint:
        return EndpointGenerator(model, settings, allow_private_urls)
    if model.model_uri:
        from finetune_trainer.evaluate.model_source import resolve_model_folder

        model_dir = resolve_model_folder(model.model_uri, store, workdir / model.name, what=f"model {model.name!r}")
        adapter_dir = None
        if model.adapter_uri:
            adapter_dir = resolve_model_folder(model.adapter_uri, store, workdir / model.name, what=f"adapter of {model.name!r}")
        return DirectGenerator(model_dir, adapter_dir, settings, model_name=model.name)
    raise BadInput("InvalidModel", f"model {model.name!r} needs an endpoint (with model) or a modelUri")
