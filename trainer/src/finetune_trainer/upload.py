"""``finetune-trainer upload FOLDER s3://bucket/prefix``: put a model or adapter folder in the object store as
an artifact, every file first and its ``manifest.json`` (sizes, sha256) last.

Training, evaluation and both serving runtimes read an ``s3://`` model or adapter only when its
``manifest.json`` is there: a folder copied by hand (``aws s3 sync``) has none and is refused with this
command's name in the message. Credentials come from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` or
``--credentials-dir`` (a folder with files ``accessKey`` and ``secretKey``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from finetune_trainer.contract import ExitCode, StorageConfig
from finetune_trainer.storage import ObjectStore, StorageError, is_s3


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="finetune-trainer upload", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the model or adapter folder (config.json / adapter_config.json and weights)")
    parser.add_argument("uri", help="s3://bucket/prefix to upload it under")
    parser.add_argument("--endpoint", required=True, help="object store host:port")
    parser.add_argument("--insecure", action="store_true", help="plain HTTP to the object store")
    parser.add_argument("--region", help="S3 region, if the store needs one")
    parser.add_argument("--credentials-dir", help="folder with files accessKey and secretKey (default: AWS_* env)")
    args = parser.parse_args(argv)
    if not is_s3(args.uri):
        parser.error(f"uri: {args.uri!r} is not an s3:// URI")
    folder: Path = args.folder
    if (folder / "adapter_config.json").exists():
        kind = "adapter"
    elif (folder / "config.json").exists():
        kind = "model"
    else:
        print(f"finetune-trainer upload: {folder} has neither config.json (a model) nor adapter_config.json (an adapter)", file=sys.stderr)
        return ExitCode.BAD_INPUT
    store = ObjectStore(StorageConfig(endpoint=args.endpoint, secure=not args.insecure, region=args.region, credentials_dir=args.credentials_dir))
    try:
        manifest = store.upload_artifact(folder, args.uri, kind=kind)
    except StorageError as e:
        print(f"finetune-trainer upload: {e}", file=sys.stderr)
        return ExitCode.RETRYABLE
    print(f"uploaded {len(manifest.files)} files ({manifest.total_size} bytes) of the {kind} to {args.uri}, manifest.json last")
    return ExitCode.OK
