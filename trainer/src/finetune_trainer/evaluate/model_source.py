"""Where a model to load directly lives: a local folder for every URI scheme the spec allows.

* a local path or ``file://`` path: used in place;
* ``s3://bucket/prefix``: an artifact with a ``manifest.json``, downloaded and verified; a folder without
  one (copied by hand) is refused, as training and serving refuse it (``finetune-trainer upload`` fixes it);
* ``hf://org/name[@revision]``: a Hugging Face Hub snapshot (the hub's cache and ``HF_TOKEN`` apply;
  with ``HF_HUB_OFFLINE=1`` only what is cached);
* ``pvc://claim/path``: the operator mounts the claim at ``/models/<claim>`` (the root can be moved
  with ``$FINETUNE_PVC_ROOT``), as for training.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from finetune_trainer.contract import MANIFEST_FILE
from finetune_trainer.evaluate.errors import BadInput
from finetune_trainer.storage import IncompleteArtifactError, ObjectStore, StorageError, is_s3, local_path, missing_manifest_message

log = logging.getLogger(__name__)

PVC_ROOT_ENV = "FINETUNE_PVC_ROOT"
DEFAULT_PVC_ROOT = "/models"


def resolve_model_folder(uri: str, store: ObjectStore, workdir: Path, what: str = "model") -> Path:
    """A local folder holding the files of ``uri`` (raises ``BadInput`` ModelNotFound when there is none)."""
    if is_s3(uri):
        dest = Path(workdir) / "models" / hashlib.sha256(uri.encode()).hexdigest()[:16]
        try:
            if not store.exists(f"{uri.rstrip('/')}/{MANIFEST_FILE}"):
                raise BadInput("ModelNotFound", f"{what} {missing_manifest_message(uri, bool([n for n in store.list(uri) if n]))}")
            return store.fetch_folder(uri, dest)
        except IncompleteArtifactError as e:
            raise BadInput("ModelNotFound", f"{what} {uri}: {e}") from None
        except StorageError as e:
            if "NoSuch" in str(e):
                raise BadInput("ModelNotFound", f"{what} {uri}: {e}") from None
            raise
    if uri.startswith("hf://"):
        repo, _, revision = uri[len("hf://") :].partition("@")
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        try:
            return Path(snapshot_download(repo_id=repo, revision=revision or None, token=os.environ.get("HF_TOKEN") or None))
        except (GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError, LocalEntryNotFoundError) as e:
            # Other errors (a network blip) propagate: the Job may retry.
            raise BadInput("ModelNotFound", f"{what} {uri}: {type(e).__name__}") from None
    if uri.startswith("pvc://"):
        path = Path(os.environ.get(PVC_ROOT_ENV, DEFAULT_PVC_ROOT)) / uri[len("pvc://") :]
    else:
        path = local_path(uri)
    if not path.is_dir():
        raise BadInput("ModelNotFound", f"{what} {uri}: no such folder")
    return path
