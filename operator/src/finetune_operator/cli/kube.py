"""The CLI's and the console's one door to the Kubernetes API, with the user's own kubeconfig.

``Kube.from_args(args)`` loads the kubeconfig (``--kubeconfig``, else ``$KUBECONFIG``, else
``~/.kube/config``) and the context (``--context``, else the current one), and picks the namespace as kubectl
does (``-n``, else the context's namespace, else ``default``). Every API error becomes a ``CliError`` with one
line that names the object and the rule: 404 → not found (exit 3), 401/403 → no access (exit 4), an
unreachable server → exit 7.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from finetune_operator.api.common import GROUP, VERSION
from finetune_operator.cli.base import EXIT_FAILED, EXIT_FORBIDDEN, EXIT_NOT_FOUND, EXIT_UNREACHABLE, CliError

PLURALS = {"Dataset": "datasets", "FineTuneJob": "finetunejobs", "InferenceEndpoint": "inferenceendpoints", "Evaluation": "evaluations"}
KINDS = {plural: kind for kind, plural in PLURALS.items()}
READABLE = {"finetunejobs": "finetunejob", "datasets": "dataset", "inferenceendpoints": "inferenceendpoint", "evaluations": "evaluation"}


def _api_message(error: Any) -> str:
    try:
        return json.loads(error.body).get("message") or error.reason
    except (TypeError, ValueError, AttributeError):
        return str(error.reason or error)


def _is_api_error(error: Exception) -> bool:
    from kubernetes.client.exceptions import ApiException

    return isinstance(error, ApiException)


def _is_connection_error(error: Exception) -> bool:
    module = type(error).__module__
    return module.startswith("urllib3") or isinstance(error, (ConnectionError, TimeoutError))


class Kube:
    """The API clients of one kubeconfig context and the namespace commands act in."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None):
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        import os

        self.kubeconfig = kubeconfig
        self.context = context
        path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or os.path.expanduser("~/.kube/config")
        if not os.path.exists(path):
            flag = "--kubeconfig" if kubeconfig else ("KUBECONFIG" if os.environ.get("KUBECONFIG") else "the kubeconfig")
            raise CliError(f"{flag} {path}: no such file (point --kubeconfig or KUBECONFIG at your cluster's kubeconfig)", EXIT_NOT_FOUND)
        try:
            contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
        except (ConfigException, OSError, TypeError, ValueError) as e:
            raise CliError(f"cannot load the kubeconfig: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        chosen = active
        if context:
            chosen = next((c for c in contexts if c.get("name") == context), None)
            if chosen is None:
                names = ", ".join(c.get("name", "?") for c in contexts) or "none"
                raise CliError(f"--context {context}: no such context in the kubeconfig (it has: {names})", EXIT_NOT_FOUND)
        self.namespace = namespace or ((chosen or {}).get("context") or {}).get("namespace") or "default"
        try:
            self.api_client = config.new_client_from_config(config_file=kubeconfig, context=context)
        except (ConfigException, OSError, TypeError, ValueError) as e:
            raise CliError(f"cannot load the kubeconfig: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        self.custom = client.CustomObjectsApi(self.api_client)
        self.core = client.CoreV1Api(self.api_client)

    @classmethod
    def from_args(cls, args: Any) -> Kube:
        return cls(getattr(args, "kubeconfig", None), getattr(args, "context", None), getattr(args, "namespace", None))

    def close(self) -> None:
        self.api_client.close()

    def __enter__(self) -> Kube:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- errors ------------------------------------------------------------------------------------------

    def error(self, e: Exception, what: str, verb: str, namespace: str | None = None) -> CliError:
        """One line for an API failure on ``what`` (e.g. ``finetunejob ticket-router``)."""
        from kubernetes.client.rest import ApiException

        ns = namespace or self.namespace
        if isinstance(e, ApiException):
            if e.status == 404:
                return CliError(f"{what} not found in namespace {ns}", EXIT_NOT_FOUND)
            if e.status in (401, 403):
                return CliError(f"no access: you may not {verb} {what} in namespace {ns} ({_api_message(e)})", EXIT_FORBIDDEN)
            return CliError(f"cannot {verb} {what} in namespace {ns}: {e.status} {_api_message(e)}", EXIT_FAILED)
        if _is_connection_error(e):
            host = self.api_client.configuration.host
            return CliError(f"cannot reach the Kubernetes API at {host} ({type(e).__name__})", EXIT_UNREACHABLE)
        return CliError(f"cannot {verb} {what}: {type(e).__name__}: {e}", EXIT_FAILED)

    def _call(self, fn: Any, what: str, verb: str, namespace: str | None, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # mapped to one line; anything else is a bug and main() reports it
            if _is_api_error(e) or _is_connection_error(e):
                raise self.error(e, what, verb, namespace) from None
            raise

    # -- the four kinds ----------------------------------------------------------------------------------

    def get(self, plural: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        ns = namespace or self.namespace
        return self._call(self.custom.get_namespaced_custom_object, f"{READABLE[plural]} {name}", "get", ns, GROUP, VERSION, ns, plural, name)

    def list(self, plural: str, namespace: str | None = None, all_namespaces: bool = False) -> list[dict[str, Any]]:
        if all_namespaces:
            body = self._call(self.custom.list_cluster_custom_object, plural, "list", "(all)", GROUP, VERSION, plural)
        else:
            ns = namespace or self.namespace
            body = self._call(self.custom.list_namespaced_custom_object, plural, "list", ns, GROUP, VERSION, ns, plural)
        items = body.get("items") or []
        return sorted(items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))

    def create(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        ns = body["metadata"].get("namespace") or self.namespace
        what = f"{READABLE[plural]} {body['metadata']['name']}"
        from kubernetes.client.rest import ApiException

        try:
            return self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, plural, body)
        except ApiException as e:
            if e.status == 409:
                raise CliError(f"{what} already exists in namespace {ns}", EXIT_FAILED) from None
            if e.status == 422:
                raise CliError(f"the API server refused {what}: {_api_message(e)}", EXIT_FAILED) from None
            raise self.error(e, what, "create", ns) from None
        except Exception as e:
            if _is_connection_error(e):
                raise self.error(e, what, "create", ns) from None
            raise

    def patch_spec(self, plural: str, name: str, spec: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        ns = namespace or self.namespace
        from kubernetes.client.rest import ApiException

        what = f"{READABLE[plural]} {name}"
        try:
            return self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, ns, plural, name, {"spec": spec}, _content_type="application/merge-patch+json"
            )
        except ApiException as e:
            if e.status == 422:
                raise CliError(f"the API server refused the change to {what}: {_api_message(e)}", EXIT_FAILED) from None
            raise self.error(e, what, "patch", ns) from None
        except Exception as e:
            if _is_connection_error(e):
                raise self.error(e, what, "patch", ns) from None
            raise

    def delete(self, plural: str, name: str, namespace: str | None = None) -> None:
        ns = namespace or self.namespace
        self._call(
            self.custom.delete_namespaced_custom_object, f"{READABLE[plural]} {name}", "delete", ns, GROUP, VERSION, ns, plural, name,
            propagation_policy="Background",
        )  # fmt: skip

    def watch(self, plural: str, name: str, namespace: str | None = None, timeout_seconds: int = 60) -> Iterator[dict[str, Any]]:
        """The object each time it changes (starting with its current state), until the server ends the watch."""
        from kubernetes import watch

        ns = namespace or self.namespace
        w = watch.Watch()
        try:
            stream = w.stream(
                self.custom.list_namespaced_custom_object, GROUP, VERSION, ns, plural,
                field_selector=f"metadata.name={name}", timeout_seconds=timeout_seconds,
            )  # fmt: skip
            for event in stream:
                if event.get("type") in ("ADDED", "MODIFIED") and isinstance(event.get("object"), dict):
                    yield event["object"]
                elif event.get("type") == "DELETED":
                    raise CliError(f"{READABLE[plural]} {name} was deleted", EXIT_NOT_FOUND)
        except CliError:
            raise
        except Exception as e:
            if _is_api_error(e) or _is_connection_error(e):
                raise self.error(e, f"{READABLE[plural]} {name}", "watch", ns) from None
            raise
        finally:
            w.stop()

    # -- core objects ------------------------------------------------------------------------------------

    def events_for(self, kind: str, name: str, namespace: str | None = None) -> list[Any]:
        """The Kubernetes Events whose involved object is this one (core/v1)."""
        ns = namespace or self.namespace
        selector = f"involvedObject.name={name},involvedObject.kind={kind}"
        body = self._call(self.core.list_namespaced_event, "events", "list", ns, ns, field_selector=selector)
        return list(body.items)

    def secret_value(self, name: str, key: str, namespace: str | None = None) -> str:
        import base64

        ns = namespace or self.namespace
        secret = self._call(self.core.read_namespaced_secret, f"secret {name}", "read", ns, name, ns)
        data = (secret.data or {}).get(key)
        if data is None:
            raise CliError(f"secret {name} in namespace {ns} has no key {key!r}", EXIT_NOT_FOUND)
        return base64.b64decode(data).decode().strip()

    def config_maps(self, label_selector: str, namespace: str | None = None) -> list[Any]:
        ns = namespace or self.namespace
        return list(self._call(self.core.list_namespaced_config_map, "configmaps", "list", ns, ns, label_selector=label_selector).items)

    def service(self, name: str, namespace: str | None = None) -> Any:
        ns = namespace or self.namespace
        return self._call(self.core.read_namespaced_service, f"service {name}", "get", ns, name, ns)


def namespace_of(args: Any) -> str:
    """The namespace as kubectl picks it, without connecting (a dry run needs no cluster): ``-n``, else the
    context's namespace, else ``default``."""
    if getattr(args, "namespace", None):
        return args.namespace
    try:
        from kubernetes import config

        contexts, active = config.list_kube_config_contexts(config_file=getattr(args, "kubeconfig", None))
    except Exception:  # no kubeconfig: the default namespace, as kubectl does
        return "default"
    chosen = active
    context = getattr(args, "context", None)
    if context:
        chosen = next((c for c in contexts if c.get("name") == context), None)
        if chosen is None:
            raise CliError(f"--context {context}: no such context in the kubeconfig", EXIT_NOT_FOUND)
    return ((chosen or {}).get("context") or {}).get("namespace") or "default"
