"""``finetune datasets check|create|list|get|download|delete`` (``dataset`` is an alias).

``check`` runs the same checker as the cluster's validation Job, on the laptop, before anything is uploaded.
``create`` checks, uploads the file to the object store under
``s3://<bucket>/uploads/<ns>/<name>/<sha256>/<filename>`` (with a progress bar) and creates (or updates) the
Dataset object. ``get`` shows the check report the cluster's validation wrote into status, with the token and
message statistics. ``download`` fetches the normalised train and validation files the jobs train on,
verified against their manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_operator.cli.base import (
    EXIT_FAILED,
    EXIT_NOT_READY,
    EXIT_OK,
    CliError,
    Subcommand,
    add_kube_arguments,
    add_output_argument,
    add_storage_arguments,
    list_subcommand,
)
from finetune_operator.cli.kube import Kube, namespace_of
from finetune_operator.cli.output import Column, age, dump, print_fields
from finetune_operator.cli.output import size as _size

if TYPE_CHECKING:
    from finetune_trainer.contract import DatasetCheckReport

API_GROUP = "finetune.dev"
API_VERSION = "v1alpha1"
PLURAL = "datasets"
DEFAULT_BUCKET = "finetune"
UPLOADS_PREFIX = "uploads"


# ----------------------------------------------------------------------------------------------
# Printing a check report (a local check's, or the one in a Dataset's status)


def _flag(value: bool | None) -> str:
    return "-" if value is None else ("ok" if value else "FAILED")


def _stats(stats: Any) -> str:
    get = (lambda k: stats.get(k)) if isinstance(stats, dict) else (lambda k: getattr(stats, k))
    return f"min {get('min')} · mean {get('mean'):g} · max {get('max')} · total {get('total')}"


def format_report(report: DatasetCheckReport, file: str, min_samples: int) -> str:
    """The report as a small table, then the first errors with their lines and rules."""
    rows = [
        ("file", f"{file} ({_size(report.file_size)}{', ' + report.filetype if report.filetype else ''})"),
        ("found", _flag(report.found)),
        ("format", report.format or "-"),
        ("utf-8", _flag(report.utf8)),
        ("line type", _flag(report.line_type)),
        ("keys and values", _flag(report.key_value)),
        ("min samples", f"{_flag(report.has_min_samples)} ({report.num_samples or 0} valid, at least {min_samples})"),
    ]
    if report.token_stats is not None:
        rows.append(("tokens per example", _stats(report.token_stats)))
    if report.message_stats is not None:
        rows.append(("messages per example", _stats(report.message_stats)))
    if report.sha256:
        rows.append(("sha256", report.sha256))
    rows.append(("result", ("PASSED: " if report.is_check_passed else "FAILED: ") + report.message))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    if report.errors:
        lines += ["", f"{'LINE':<8} {'RULE':<20} MESSAGE"]
        for error in report.errors:
            where = "-" if error.line is None else str(error.line)
            lines.append(f"{where:<8} {error.rule:<20} {error.message}")
        if report.error_count > len(report.errors):
            lines.append(f"... and {report.error_count - len(report.errors)} more")
    return "\n".join(lines)


def _check_options(args: argparse.Namespace):
    from finetune_trainer.data.validate import CheckOptions

    if args.max_seq_length is not None and args.tokenizer is None:
        suffix = Path(args.file).suffix.lower()
        if suffix not in (".parquet", ".pq"):
            raise CliError("--max-seq-length needs --tokenizer (a folder with tokenizer.json) for a JSONL file")
    if args.tokenizer is not None:
        path = Path(args.tokenizer)
        if not (path / "tokenizer.json").is_file() and not (path.is_file() and path.suffix == ".json"):
            raise CliError(f"--tokenizer {args.tokenizer}: no tokenizer.json there")
    return CheckOptions(
        format=args.format,
        min_samples=args.min_samples,
        max_seq_length=args.max_seq_length,
        tokenizer=args.tokenizer,
        max_errors=args.max_errors,
    )


def _run_check(args: argparse.Namespace, file: Path) -> DatasetCheckReport:
    from finetune_trainer.data.validate import check_file

    try:
        return check_file(file, _check_options(args))
    except ImportError as e:  # Parquet needs pyarrow, token counts need tokenizers: both in the trainer extra
        raise CliError(f"this check needs the Python package {e.name}: pip install 'finetune-operator[trainer]'") from None


def _add_check_arguments(parser: argparse.ArgumentParser, file_positional: bool = True) -> None:
    if file_positional:
        parser.add_argument("file", help="the JSONL or Parquet file")
    parser.add_argument("--format", default="auto", choices=["auto", "chat", "instruction", "text", "parquet"], help="default: auto")
    parser.add_argument("--min-samples", type=int, default=10, metavar="N", help="fewest valid examples (default 10)")
    parser.add_argument("--max-seq-length", type=int, default=None, metavar="N", help="reject the file when every example is longer")
    parser.add_argument("--tokenizer", default=None, metavar="DIR", help="a folder with tokenizer.json, for token statistics")
    parser.add_argument("--max-errors", type=int, default=20, metavar="N", help="errors to list (default 20)")


# ----------------------------------------------------------------------------------------------
# finetune dataset check


def _dataset_check_arguments(parser: argparse.ArgumentParser) -> None:
    _add_check_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def dataset_check(args: argparse.Namespace) -> int:
    report = _run_check(args, Path(args.file))
    if args.json:
        print(report.to_json())
    else:
        print(format_report(report, args.file, args.min_samples))
    return EXIT_OK if report.is_check_passed else EXIT_FAILED


# ----------------------------------------------------------------------------------------------
# finetune dataset create


def _dataset_create_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="name of the Dataset object")
    parser.add_argument("--file", required=True, help="the JSONL or Parquet file to upload")
    _add_check_arguments(parser, file_positional=False)
    parser.add_argument("-n", "--namespace", default=None, help="default: the kubeconfig context's namespace, else default")
    parser.add_argument("--validation-split", type=float, default=0.0, metavar="F", help="fraction held out for validation (0 < F <= 0.5)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the split (default 42)")
    parser.add_argument("--bucket", default=os.environ.get("FINETUNE_STORAGE_BUCKET", DEFAULT_BUCKET), help="object store bucket")
    parser.add_argument(
        "--endpoint", default=os.environ.get("FINETUNE_STORAGE_ENDPOINT"), metavar="HOST:PORT", help="object store endpoint"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=os.environ.get("FINETUNE_STORAGE_SECURE", "true").lower() in ("false", "0", "no"),
        help="plain HTTP to the object store",
    )
    parser.add_argument("--region", default=os.environ.get("FINETUNE_STORAGE_REGION") or None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--credentials-file",
        default=None,
        metavar="PATH",
        help="object store keys: an AWS credentials file ([default] aws_access_key_id/aws_secret_access_key) or a "
        "folder with files accessKey and secretKey; default: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
    )
    parser.add_argument(
        "--credentials-secret", default=None, metavar="NAME", help="Secret the cluster reads the file with (spec.source.secretRef)"
    )
    parser.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG, else ~/.kube/config")
    parser.add_argument("--context", default=None, help="kubeconfig context")
    parser.add_argument("--dry-run", action="store_true", help="check and print the Dataset; upload and apply nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def read_credentials(credentials_file: str | None) -> tuple[str, str]:
    """Access and secret key from ``--credentials-file`` or the AWS_* environment variables."""
    from finetune_operator.cli.store import read_credentials_file

    if credentials_file:
        return read_credentials_file(credentials_file)
    access = os.environ.get("AWS_ACCESS_KEY_ID", "")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    if not access or not secret:
        raise CliError("no object store credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or --credentials-file")
    return access, secret


def dataset_object(args: argparse.Namespace, namespace: str, uri: str) -> dict[str, Any]:
    """The Dataset to apply, checked against the API's own model (so a bad split is refused here)."""
    from pydantic import ValidationError

    from finetune_operator.api.dataset import DatasetSpec

    source: dict[str, Any] = {"uri": uri}
    if args.credentials_secret:
        source["secretRef"] = {"name": args.credentials_secret}
    spec: dict[str, Any] = {"source": source, "format": args.format}
    if args.validation_split:
        spec["validation"] = {"fraction": args.validation_split, "seed": args.seed}
    if args.min_samples != 10:
        spec["minSamples"] = args.min_samples
    try:
        checked = DatasetSpec.model_validate(spec)
    except ValidationError as e:
        problems = "; ".join(f"spec.{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise CliError(f"invalid Dataset: {problems}") from None
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "Dataset",
        "metadata": {"name": args.name, "namespace": namespace},
        "spec": checked.model_dump(by_alias=True, exclude_unset=True, mode="json"),
    }


class UploadProgress:
    """The minio client's progress hook (``set_meta``, then ``update`` per part), drawn with tqdm."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None

    def set_meta(self, object_name: str, total_length: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=total_length,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=Path(object_name).name,
            disable=not self.enabled,
            file=sys.stderr,
        )

    def update(self, length: int) -> None:
        if self.bar is not None:
            self.bar.update(length)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def upload(args: argparse.Namespace, file: Path, bucket: str, key: str) -> bool:
    """Put the file at ``s3://bucket/key``; False when an object of the same size is already there."""
    from minio import Minio
    from minio.error import S3Error
    from urllib3.exceptions import HTTPError

    if not args.endpoint:
        raise CliError("no object store endpoint: --endpoint HOST:PORT or FINETUNE_STORAGE_ENDPOINT")
    endpoint = args.endpoint
    secure = not args.insecure
    if "://" in endpoint:  # tolerate a URL: its scheme says whether TLS is on
        scheme, _, endpoint = endpoint.partition("://")
        secure = scheme == "https" and not args.insecure
    access, secret = read_credentials(args.credentials_file)
    client = Minio(endpoint.rstrip("/"), access_key=access, secret_key=secret, secure=secure, region=args.region)
    target = f"s3://{bucket}/{key}"
    try:
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
        try:
            if client.stat_object(bucket, key).size == file.stat().st_size:
                return False
        except S3Error as e:
            if e.code not in ("NoSuchKey", "NoSuchObject"):
                raise
        progress = UploadProgress(enabled=not args.no_progress)
        try:
            client.fput_object(bucket, key, str(file), progress=progress)
        finally:
            progress.close()
    except S3Error as e:
        raise CliError(f"upload to {target} failed: {e.code}") from None
    except (HTTPError, OSError) as e:
        raise CliError(f"upload to {target} failed: cannot reach {endpoint} ({type(e).__name__})") from None
    return True




def apply_dataset(args: argparse.Namespace, body: dict[str, Any]) -> str:
    """Create the Dataset, or merge-patch its spec when it exists. Returns ``created`` or ``configured``."""
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException
    from kubernetes.config.config_exception import ConfigException

    try:
        api_client = config.new_client_from_config(config_file=args.kubeconfig, context=args.context)
    except (ConfigException, OSError) as e:
        raise CliError(f"cannot load the kubeconfig: {e}") from None
    api = client.CustomObjectsApi(api_client)
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    try:
        try:
            api.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, name)
        except ApiException as e:
            if e.status != 404:
                raise
            api.create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, body)
            return "created"
        patch = {"spec": {**body["spec"], "validation": body["spec"].get("validation")}}
        api.patch_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, PLURAL, name, patch, _content_type="application/merge-patch+json"
        )
        return "configured"
    except ApiException as e:
        detail = e.reason
        try:
            detail = json.loads(e.body).get("message") or detail
        except (TypeError, ValueError, AttributeError):
            pass
        raise CliError(f"applying Dataset {namespace}/{name} failed: {e.status} {detail}") from None
    except Exception as e:  # urllib3 connection errors and the like
        if type(e).__module__.startswith("urllib3"):
            raise CliError(f"cannot reach the Kubernetes API: {type(e).__name__}") from None
        raise
    finally:
        api_client.close()


def dataset_create(args: argparse.Namespace) -> int:
    import yaml

    from finetune_trainer.storage import sha256_file

    file = Path(args.file)
    if not file.is_file():
        raise CliError(f"--file {args.file}: no such file")
    report = _run_check(args, file)
    if not report.is_check_passed:
        print(format_report(report, args.file, args.min_samples))
        print("\nNothing was uploaded.", file=sys.stderr)
        return EXIT_FAILED
    print(report.message)
    sha256 = sha256_file(file)
    namespace = namespace_of(args)
    key = f"{UPLOADS_PREFIX}/{namespace}/{args.name}/{sha256}/{file.name}"
    uri = f"s3://{args.bucket}/{key}"
    body = dataset_object(args, namespace, uri)
    if args.dry_run:
        print(f"would upload {file} to {uri} and apply:\n")
        print(yaml.safe_dump(body, sort_keys=False).rstrip())
        return EXIT_OK
    if upload(args, file, args.bucket, key):
        print(f"uploaded {file.name} to {uri}")
    else:
        print(f"{uri} is already uploaded")
    verb = apply_dataset(args, body)
    print(f"dataset.{API_GROUP}/{args.name} {verb}")
    return EXIT_OK


# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# finetune datasets list | get | download | delete


def _samples(o: dict[str, Any]) -> Any:
    return (o.get("status") or {}).get("numSamples")


COLUMNS = [
    Column("NAME", lambda o: o["metadata"]["name"]),
    Column("PHASE", lambda o: (o.get("status") or {}).get("phase") or "Pending"),
    Column("SAMPLES", _samples),
    Column("TRAIN", lambda o: (o.get("status") or {}).get("trainSamples"), wide=True),
    Column("VALIDATION", lambda o: (o.get("status") or {}).get("validationSamples"), wide=True),
    Column("FORMAT", lambda o: (o.get("status") or {}).get("format") or (o.get("spec") or {}).get("format")),
    Column("SOURCE", lambda o: ((o.get("spec") or {}).get("source") or {}).get("uri") or "configMap", wide=True),
    Column("SHA256", lambda o: ((o.get("status") or {}).get("sha256") or "")[:12] or None, wide=True),
    Column("AGE", age),
]


def status_report(dataset: dict[str, Any]) -> DatasetCheckReport | None:
    """The check report in a Dataset's status (with its statistics), as the local checker returns it."""
    from finetune_trainer.contract import DatasetCheckReport

    status = dataset.get("status") or {}
    report = status.get("report")
    if not report:
        return None
    data = {**report, "sha256": status.get("sha256"), "tokenStats": status.get("tokenStats"), "messageStats": status.get("messageStats")}
    return DatasetCheckReport.model_validate({k: v for k, v in data.items() if v is not None})


def _get_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the Dataset")
    add_kube_arguments(parser)
    add_output_argument(parser)


def datasets_get(args: argparse.Namespace) -> int:
    with Kube.from_args(args) as kube:
        dataset = kube.get(PLURAL, args.name)
    if args.output in ("json", "yaml"):
        print(dump(dataset, args.output))
        return EXIT_OK
    spec, status = dataset.get("spec") or {}, dataset.get("status") or {}
    source = spec.get("source") or {}
    print_fields([
        ("Name", f"{dataset['metadata']['namespace']}/{dataset['metadata']['name']}"),
        ("Phase", status.get("phase") or "Pending"),
        ("Message", status.get("message")),
        ("Source", source.get("uri") or f"configMap {(source.get('configMapRef') or {}).get('name')}"),
        ("Samples", None if status.get("numSamples") is None else
         f"{status['numSamples']} ({status.get('trainSamples')} train, {status.get('validationSamples') or 0} validation)"),
        ("Train", status.get("trainUri") if args.output == "wide" else None),
        ("Validation", status.get("validationUri") if args.output == "wide" else None),
        ("Age", age(dataset)),
    ])  # fmt: skip
    report = status_report(dataset)
    if report is not None:
        print("\nCheck report:")
        print(format_report(report, source.get("uri") or "configMap", spec.get("minSamples", 10)))
    return EXIT_FAILED if status.get("phase") == "Invalid" else EXIT_OK


def _download_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the Dataset")
    parser.add_argument("-d", "--dir", default=None, metavar="DIR", help="folder to download into (default ./NAME)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_kube_arguments(parser)
    add_storage_arguments(parser)


def datasets_download(args: argparse.Namespace) -> int:
    from finetune_operator.cli.store import Store

    with Kube.from_args(args) as kube:
        dataset = kube.get(PLURAL, args.name)
        status = dataset.get("status") or {}
        if status.get("phase") != "Ready" or not status.get("trainUri"):
            raise CliError(f"dataset {args.name} is {status.get('phase') or 'Pending'}, not Ready: it has no normalised files", EXIT_NOT_READY)
        folder = status["trainUri"].rsplit("/", 1)[0]
        store = Store.from_args(args, kube)
    dest = Path(args.dir or args.name)
    manifest = store.download_artifact(folder, dest, progress=not args.no_progress)
    print(f"downloaded {len(manifest.files)} files ({_size(manifest.total_size)}) of {folder} to {dest}/, each sha256 verified")
    return EXIT_OK


def _delete_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the Dataset")
    add_kube_arguments(parser)


def datasets_delete(args: argparse.Namespace) -> int:
    with Kube.from_args(args) as kube:
        kube.delete(PLURAL, args.name)
    print(f"dataset.{API_GROUP}/{args.name} deleted")
    return EXIT_OK


COMMANDS = [
    Subcommand("datasets", "check", "check a JSONL or Parquet file the way the cluster will", _dataset_check_arguments, dataset_check),
    Subcommand("datasets", "create", "check, upload and create (or update) a Dataset", _dataset_create_arguments, dataset_create),
    list_subcommand("datasets", "list Datasets", PLURAL, COLUMNS, "datasets"),
    Subcommand("datasets", "get", "show a Dataset and its check report", _get_arguments, datasets_get),
    Subcommand("datasets", "download", "download a Dataset's normalised files (sha256 verified)", _download_arguments, datasets_download),
    Subcommand("datasets", "delete", "delete a Dataset", _delete_arguments, datasets_delete),
]
