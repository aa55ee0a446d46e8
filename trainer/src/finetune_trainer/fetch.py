"""``finetune-trainer fetch --config fetch.json``: download models and adapters from the object store.

Each item of the ``FetchConfig`` is a complete artifact (its ``manifest.json`` lists every file with its
size and sha256); it is downloaded into its ``dest`` folder and checked against the manifest. An item
without a manifest, or with a file that does not match it, is refused: nothing half-uploaded is served.

Exit codes: 0 every item fetched; 42 (bad input) an item does not exist or is incomplete, or the config
is wrong; 1 the object store could not be read (worth retrying). The reason is written to the
termination message file (``$FINETUNE_TERMINATION_LOG``) as ``Reason: message``, never a credential.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from finetune_trainer.contract import DEFAULT_TERMINATION_LOG, TERMINATION_MESSAGE_LIMIT, ExitCode, FetchConfig
from finetune_trainer.storage import IncompleteArtifactError, ObjectStore, StorageError

log = logging.getLogger("finetune_trainer.fetch")

TERMINATION_LOG_ENV = "FINETUNE_TERMINATION_LOG"


def _terminate(reason: str, message: str) -> None:
    path = os.environ.get(TERMINATION_LOG_ENV, DEFAULT_TERMINATION_LOG)
    try:
        Path(path).write_text(f"{reason}: {message}"[:TERMINATION_MESSAGE_LIMIT], encoding="utf-8")
    except OSError:
        pass


def fetch(config: FetchConfig, store: ObjectStore | None = None) -> None:
    """Download every item; raises ``IncompleteArtifactError`` / ``StorageError`` naming the URI."""
    store = store or ObjectStore(config.storage)
    for item in config.items:
        log.info("fetching %s into %s", item.uri, item.dest)
        manifest = store.download_artifact(item.uri, Path(item.dest))
        log.info("fetched %s: %d files, %d bytes", item.uri, len(manifest.files), manifest.total_size)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="finetune-trainer fetch", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="fetch config JSON (FetchConfig)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        config = FetchConfig.model_validate_json(Path(args.config).read_bytes())
    except OSError as e:
        _terminate("InvalidConfig", f"cannot read {args.config}: {e.strerror}")
        log.error("cannot read %s: %s", args.config, e.strerror)
        return ExitCode.BAD_INPUT
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        message = f"{args.config}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
        _terminate("InvalidConfig", message)
        log.error("%s", message)
        return ExitCode.BAD_INPUT
    try:
        fetch(config)
    except IncompleteArtifactError as e:
        _terminate("ArtifactNotFound", str(e))
        log.error("%s", e)
        return ExitCode.BAD_INPUT
    except StorageError as e:
        _terminate("StorageError", str(e))
        log.error("%s", e)
        return ExitCode.RETRYABLE
    return ExitCode.OK
