"""``finetune-trainer fetch --config fetch.json``: download models and adapters from the object store.

Each item of the ``FetchConfig`` is a complete artifact (its ``manifest.json`` lists every file with its
size and sha256); it is downloaded into its ``dest`` folder and checked against the manifest. An item
without a manifest, or with a file that does not match it, is refused: nothing half-uploaded is served.

With ``limits``, the base model's config.json (fetched, mounted, or for ``hf://`` read alone from the
Hub) and every adapter's rank are then checked against what vLLM accepts (``serving_checks``), so a spec
vLLM would refuse fails here, with the field to change, instead of crash-looping the server.

Exit codes: 0 every item fetched; 42 (bad input) an item does not exist or is incomplete, a limit is
exceeded, or the config is wrong; 1 the object store could not be read (worth retrying). The reason is
written to the termination message file (``$FINETUNE_TERMINATION_LOG``) as ``Reason: message``, never a
credential.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from finetune_trainer import serving_checks
from finetune_trainer.contract import ExitCode, FetchConfig, VLLM_LORA_RANKS, write_termination_message
from finetune_trainer.storage import IncompleteArtifactError, ObjectStore, StorageError

log = logging.getLogger("finetune_trainer.fetch")


class LimitExceeded(ValueError):
    """The model or an adapter is one vLLM would refuse with the endpoint's settings."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def fetch(config: FetchConfig, store: ObjectStore | None = None) -> None:
    """Download every item, then check the limits; raises ``IncompleteArtifactError`` / ``StorageError``
    naming the URI, or ``LimitExceeded`` naming the field to change."""
    if config.items:
        store = store or ObjectStore(config.storage)
    for item in config.items:
        log.info("fetching %s into %s", item.uri, item.dest)
        manifest = store.download_artifact(item.uri, Path(item.dest))
        log.info("fetched %s: %d files, %d bytes", item.uri, len(manifest.files), manifest.total_size)
    if config.limits is not None:
        check_limits(config)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def base_model_config(config: FetchConfig) -> dict | None:
    """The base model's config.json: from the fetched folder, a mounted folder, or (hf://) the Hub alone."""
    fetched = next((i for i in config.items if i.kind == "model"), None)
    if fetched is not None:
        return _read_json(Path(fetched.dest) / "config.json")
    uri = config.base_model
    if not uri:
        return None
    if uri.startswith("hf://"):
        return _hub_config(uri, config.base_model_token_file)
    return _read_json(Path(uri) / "config.json")


def _hub_config(uri: str, token_file: str | None) -> dict | None:
    """config.json of ``hf://org/name[@revision]``, or None when the Hub cannot say (vLLM will)."""
    from huggingface_hub import hf_hub_download

    repo, _, revision = uri[len("hf://") :].partition("@")
    token = None
    if token_file:
        try:
            token = Path(token_file).read_text().strip() or None
        except OSError:
            token = None
    try:
        return _read_json(Path(hf_hub_download(repo, "config.json", revision=revision or None, token=token)))
    except Exception as e:  # offline, gated, rate-limited: not this check's to decide
        log.warning("cannot read config.json of %s (%s); leaving its limits to vLLM", uri, type(e).__name__)
        return None


def check_limits(config: FetchConfig) -> None:
    limits = config.limits
    assert limits is not None
    model = base_model_config(config)
    if model is not None:
        problems = serving_checks.model_problems(model, limits.max_model_len, limits.tensor_parallel_size)
        if problems:
            raise LimitExceeded("ModelLimitExceeded", "; ".join(problems))
    if limits.max_lora_rank is None:
        return
    for item in config.items:
        if item.kind != "adapter":
            continue
        adapter = _read_json(Path(item.dest) / "adapter_config.json") or {}
        problem = serving_checks.adapter_problem(item.uri, adapter, limits.max_lora_rank, VLLM_LORA_RANKS)
        if problem:
            raise LimitExceeded("AdapterRankTooHigh", problem)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="finetune-trainer fetch", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="fetch config JSON (FetchConfig)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        config = FetchConfig.model_validate_json(Path(args.config).read_bytes())
    except OSError as e:
        write_termination_message(reason="InvalidConfig", message=f"cannot read {args.config}: {e.strerror}")
        log.error("cannot read %s: %s", args.config, e.strerror)
        return ExitCode.BAD_INPUT
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        message = f"{args.config}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
        write_termination_message(reason="InvalidConfig", message=message)
        log.error("%s", message)
        return ExitCode.BAD_INPUT
    try:
        fetch(config)
    except IncompleteArtifactError as e:
        write_termination_message(reason="ArtifactNotFound", message=str(e))
        log.error("%s", e)
        return ExitCode.BAD_INPUT
    except StorageError as e:
        write_termination_message(reason="StorageError", message=str(e))
        log.error("%s", e)
        return ExitCode.RETRYABLE
    except LimitExceeded as e:
        write_termination_message(reason=e.reason, message=str(e))
        log.error("%s: %s", e.reason, e)
        return ExitCode.BAD_INPUT
    return ExitCode.OK
