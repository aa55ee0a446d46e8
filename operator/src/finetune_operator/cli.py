"""``finetune``: the user's command line, also installed as ``kubectl-finetune`` (so ``kubectl finetune ...``).

    finetune dataset check FILE [--format auto] [--min-samples N] [--max-seq-length N --tokenizer DIR] [--json]
    finetune dataset create NAME --file FILE [--namespace NS] [--validation-split F] [--seed S] ...
    finetune evaluation show NAME [--namespace NS]

``dataset check`` runs the same checker as the cluster's validation Job, on the laptop, before anything is
uploaded. ``dataset create`` checks, uploads the file to the object store under
``s3://<bucket>/uploads/<ns>/<name>/<sha256>/<filename>`` and creates (or updates) the Dataset object.

Commands live in ``SUBCOMMANDS``, grouped by noun (``dataset``, ``evaluation``, ...): a new one is a
``Subcommand`` entry with a function that adds its arguments and a function that runs it and returns the
exit code. Heavy imports (the validator, minio, the Kubernetes client) happen inside the run functions, so
``finetune --help`` is instant and nothing here imports torch.

Object store settings come from flags, else from the operator's environment variable names
(``FINETUNE_STORAGE_ENDPOINT``, ``FINETUNE_STORAGE_BUCKET``, ``FINETUNE_STORAGE_SECURE``); keys from
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` or ``--credentials-file``. Keys are never printed.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from finetune_trainer.contract import DatasetCheckReport

EXIT_OK = 0
EXIT_FAILED = 1
"""The check failed, or the upload or the API call did."""
EXIT_USAGE = 2

API_GROUP = "finetune.dev"
API_VERSION = "v1alpha1"
DATASET_PLURAL = "datasets"
DEFAULT_BUCKET = "finetune"
UPLOADS_PREFIX = "uploads"


@dataclass(frozen=True)
class Subcommand:
    """One ``finetune GROUP NAME`` command."""

    group: str
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


GROUP_HELP: dict[str, str] = {
    "dataset": "check training files locally and create Dataset objects",
    "evaluation": "show the scores of Evaluation objects",
}


class CliError(Exception):
    """A failure to report in one line (no traceback) with exit code 1."""


# ----------------------------------------------------------------------------------------------
# Printing a check report


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _flag(value: bool | None) -> str:
    return "-" if value is None else ("ok" if value else "FAILED")


def _stats(stats: Any) -> str:
    return f"min {stats.min} · mean {stats.mean:g} · max {stats.max} · total {stats.total}"


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
    if credentials_file:
        path = Path(credentials_file).expanduser()
        if path.is_dir():
            try:
                return (path / "accessKey").read_text().strip(), (path / "secretKey").read_text().strip()
            except OSError as e:
                raise CliError(f"--credentials-file {path}: {e.strerror}") from None
        parser = configparser.ConfigParser()
        try:
            parser.read_string(path.read_text())
        except (OSError, configparser.Error) as e:
            raise CliError(f"--credentials-file {path}: not a readable credentials file ({type(e).__name__})") from None
        sections = ["default"] if parser.has_section("default") else parser.sections()
        for section in sections:
            values = parser[section]
            access = values.get("aws_access_key_id") or values.get("accessKey")
            secret = values.get("aws_secret_access_key") or values.get("secretKey")
            if access and secret:
                return access.strip(), secret.strip()
        raise CliError(f"--credentials-file {path}: no aws_access_key_id and aws_secret_access_key in it")
    access = os.environ.get("AWS_ACCESS_KEY_ID", "")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    if not access or not secret:
        raise CliError("no object store credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or --credentials-file")
    return access, secret


def _kube_namespace(args: argparse.Namespace) -> str:
    if args.namespace:
        return args.namespace
    try:
        from kubernetes import config

        contexts, active = config.list_kube_config_contexts(config_file=args.kubeconfig)
    except Exception:  # no kubeconfig: the default namespace, as kubectl does
        return "default"
    chosen = active
    if args.context:
        chosen = next((c for c in contexts if c.get("name") == args.context), None)
        if chosen is None:
            raise CliError(f"no context {args.context!r} in the kubeconfig")
    return (chosen or {}).get("context", {}).get("namespace") or "default"


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
            api.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, DATASET_PLURAL, name)
        except ApiException as e:
            if e.status != 404:
                raise
            api.create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, DATASET_PLURAL, body)
            return "created"
        patch = {"spec": {**body["spec"], "validation": body["spec"].get("validation")}}
        api.patch_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, DATASET_PLURAL, name, patch, _content_type="application/merge-patch+json"
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
    namespace = _kube_namespace(args)
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
# finetune evaluation show


EVALUATION_PLURAL = "evaluations"


def _evaluation_show_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="name of the Evaluation")
    parser.add_argument("-n", "--namespace", default=None, help="default: the kubeconfig context's namespace, else default")
    parser.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG, else ~/.kube/config")
    parser.add_argument("--context", default=None, help="kubeconfig context")


def read_custom_object(args: argparse.Namespace, plural: str, namespace: str, name: str) -> dict[str, Any]:
    """One object of this API group, read with the kubeconfig's credentials."""
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException
    from kubernetes.config.config_exception import ConfigException

    try:
        api_client = config.new_client_from_config(config_file=args.kubeconfig, context=args.context)
    except (ConfigException, OSError) as e:
        raise CliError(f"cannot load the kubeconfig: {e}") from None
    try:
        return client.CustomObjectsApi(api_client).get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, plural, name)
    except ApiException as e:
        if e.status == 404:
            raise CliError(f"{plural[:-1]} {namespace}/{name} not found") from None
        raise CliError(f"reading {plural[:-1]} {namespace}/{name} failed: {e.status} {e.reason}") from None
    except Exception as e:  # urllib3 connection errors and the like
        if type(e).__module__.startswith("urllib3"):
            raise CliError(f"cannot reach the Kubernetes API: {type(e).__name__}") from None
        raise
    finally:
        api_client.close()


def format_evaluation(evaluation: dict[str, Any]) -> str:
    """The Evaluation's phase and message, its score table (as ``finetune-trainer evaluate`` prints it),
    the results URI and the pass criterion's verdict."""
    from finetune_trainer.contract import EvaluationSummary, ScoreRecord
    from finetune_trainer.evaluate.table import render_summary_table

    meta, spec, status = evaluation["metadata"], evaluation.get("spec") or {}, evaluation.get("status") or {}
    phase = status.get("phase") or "Pending"
    lines = [f"Evaluation {meta['namespace']}/{meta['name']}: {phase}"]
    if status.get("message"):
        lines.append(status["message"])
    scores = status.get("scores") or []
    if scores:
        summary = EvaluationSummary(
            scores=[ScoreRecord.model_validate({"mean": None, **row}) for row in scores],
            baseline=spec.get("baseline"),
            samples=status.get("samples") or 0,
        )
        lines += ["", render_summary_table(summary)]
    if status.get("resultsUri"):
        lines.append(f"Per-sample results: {status['resultsUri']}")
    passed = next((c for c in status.get("conditions") or [] if c.get("type") == "Passed"), None)
    if passed is not None:
        verdict = "PASSED" if passed.get("status") == "True" else "NOT PASSED"
        lines.append(f"Pass criterion: {verdict} ({passed.get('reason')}): {passed.get('message', '')}")
    return "\n".join(lines)


def evaluation_show(args: argparse.Namespace) -> int:
    namespace = _kube_namespace(args)
    evaluation = read_custom_object(args, EVALUATION_PLURAL, namespace, args.name)
    print(format_evaluation(evaluation))
    return EXIT_FAILED if (evaluation.get("status") or {}).get("phase") == "Failed" else EXIT_OK


# ----------------------------------------------------------------------------------------------
# The registry and the entry point


SUBCOMMANDS: list[Subcommand] = [
    Subcommand("dataset", "check", "check a JSONL or Parquet file the way the cluster will", _dataset_check_arguments, dataset_check),
    Subcommand(
        "dataset", "create", "check, upload and create (or update) a Dataset", _dataset_create_arguments, dataset_create
    ),
    Subcommand(
        "evaluation", "show", "print an Evaluation's score table (exit 1 when it Failed)", _evaluation_show_arguments, evaluation_show
    ),
]


def program_name(argv0: str | None = None) -> str:
    """``kubectl finetune`` when run as the kubectl plugin, else ``finetune``."""
    name = Path(argv0 or sys.argv[0]).name
    return "kubectl finetune" if name.startswith("kubectl-") else "finetune"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog or program_name(), description="Fine-tuning on your own Kubernetes cluster.")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    group_parsers: dict[str, argparse._SubParsersAction] = {}
    for command in SUBCOMMANDS:
        if command.group not in group_parsers:
            group = groups.add_parser(command.group, help=GROUP_HELP.get(command.group), description=GROUP_HELP.get(command.group))
            group_parsers[command.group] = group.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
        sub = group_parsers[command.group].add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
