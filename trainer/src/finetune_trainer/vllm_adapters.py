"""``finetune-trainer vllm-adapters --config /etc/finetune/adapters.json``: LoRA adapters loaded into a running
vLLM server and unloaded from it, as the list in the config changes, without restarting it.

It runs as a sidecar beside the vLLM container (started with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``).
Every few seconds it rereads the config (a mounted ConfigMap the kubelet refreshes in place), asks vLLM
which adapters it serves (``GET /v1/models``), downloads each missing adapter (``manifest.json`` checked,
its rank checked against ``--max-lora-rank``) and loads it (``POST /v1/load_lora_adapter``), and unloads
the ones no longer listed (``POST /v1/unload_lora_adapter``). An adapter vLLM lost (its container
restarted) is loaded again. The state of every adapter (``loaded``, ``loading``, ``failed`` with the
reason) goes to ``state_file`` in the shape of the builtin server's ``/health``; the endpoint's auth
middleware serves it at ``/health``. vLLM's adapter routes answer only this sidecar: the middleware admits
them from the pod itself (loopback) only.

Exit codes: 0 when stopped (SIGTERM), 42 for a config it cannot read at start.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from finetune_trainer import serving_checks
from finetune_trainer.contract import VLLM_LORA_RANKS, ExitCode, VllmAdaptersConfig
from finetune_trainer.storage import IncompleteArtifactError, ObjectStore, StorageError

log = logging.getLogger("finetune_trainer.vllm_adapters")

INTERVAL_SECONDS = 2.0
REQUEST_TIMEOUT_SECONDS = 600.0
"""vLLM reads an adapter's weights while it answers a load request."""


class AdapterRefused(Exception):
    """The adapter cannot be served as it is (incomplete, too high a rank, refused by vLLM): not retried
    until its URI changes."""


@dataclass
class AdapterSync:
    """One sidecar's view: what it loaded into vLLM, and what failed for good."""

    store: ObjectStore | None
    loaded: dict[str, str] = field(default_factory=dict)
    """name → URI loaded into vLLM."""
    refused: dict[str, tuple[str, str]] = field(default_factory=dict)
    """name → (URI, reason) that cannot be served."""
    retry: dict[str, str] = field(default_factory=dict)
    """name → last error that may pass (the object store was unreachable)."""
    folders: dict[str, Path] = field(default_factory=dict)
    """name → the folder its files were downloaded to."""

    # -- talking to vLLM --------------------------------------------------------------------------
    def _request(self, config: VllmAdaptersConfig, method: str, path: str, body: dict | None = None) -> tuple[int, str]:
        headers = {"Content-Type": "application/json"}
        if config.api_key_file:
            try:
                key = Path(config.api_key_file).read_text().strip()
            except OSError:
                key = ""
            if key:
                headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(config.server.rstrip("/") + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
                return response.status, response.read(1 << 20).decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read(1 << 20).decode(errors="replace")

    def served(self, config: VllmAdaptersConfig) -> set[str] | None:
        """Names of the LoRA adapters vLLM serves now; None while it does not answer."""
        try:
            status, text = self._request(config, "GET", "/v1/models")
        except OSError:
            return None
        if status != 200:
            return None
        try:
            models = json.loads(text).get("data") or []
        except (ValueError, AttributeError):
            return None
        return {m["id"] for m in models if isinstance(m, dict) and m.get("parent")}

    # -- one pass ---------------------------------------------------------------------------------
    def sync(self, config: VllmAdaptersConfig) -> list[dict[str, Any]]:
        """Bring vLLM's adapters to the config's list; returns every listed adapter's state."""
        desired = {a.name: a for a in config.adapters}
        served = self.served(config)
        if served is None:
            return [_state(a.name, a.uri, "loading", "waiting for the vLLM server to answer") for a in config.adapters]
        for name in list(self.loaded):
            if name not in served:  # vLLM restarted: load it again
                self.loaded.pop(name)
            elif name not in desired or desired[name].uri != self.loaded[name]:
                self._unload(config, name, keep_folder=name in desired)
        for name in list(self.refused):
            if name not in desired or desired[name].uri != self.refused[name][0]:
                self.refused.pop(name)
        states = []
        for name, adapter in desired.items():
            if self.loaded.get(name) == adapter.uri:
                states.append(_state(name, adapter.uri, "loaded"))
                continue
            if name in self.refused:
                states.append(_state(name, adapter.uri, "failed", self.refused[name][1]))
                continue
            try:
                self._load(config, adapter, already_served=name in served)
            except AdapterRefused as e:
                self.refused[name] = (adapter.uri, str(e))
                log.warning("adapter %s not served: %s", name, e)
                states.append(_state(name, adapter.uri, "failed", str(e)))
            except (StorageError, OSError) as e:  # may pass: tried again on the next pass
                self.retry[name] = str(e)
                states.append(_state(name, adapter.uri, "loading", f"retrying: {e}"))
            else:
                self.retry.pop(name, None)
                self.loaded[name] = adapter.uri
                log.info("adapter %s loaded from %s", name, adapter.uri)
                states.append(_state(name, adapter.uri, "loaded"))
        return states

    def _load(self, config: VllmAdaptersConfig, adapter: Any, already_served: bool) -> None:
        dest = Path(adapter.dest)
        if already_served:  # loaded by an earlier sidecar of this pod, maybe from another URI: load it afresh
            self._unload(config, adapter.name, keep_folder=True)
        shutil.rmtree(dest, ignore_errors=True)
        self.folders[adapter.name] = dest
        if self.store is None:
            raise AdapterRefused(f"{adapter.uri}: no object store is configured")
        try:
            self.store.download_artifact(adapter.uri, dest)
        except IncompleteArtifactError as e:
            raise AdapterRefused(str(e)) from None
        if config.max_lora_rank is not None:
            try:
                adapter_config = json.loads((dest / "adapter_config.json").read_text())
            except (OSError, ValueError):
                raise AdapterRefused(f"{adapter.uri} has no readable adapter_config.json: not a LoRA adapter") from None
            problem = serving_checks.adapter_problem(adapter.uri, adapter_config, config.max_lora_rank, VLLM_LORA_RANKS)
            if problem:
                raise AdapterRefused(f"AdapterRankTooHigh: {problem}")
        status, text = self._request(config, "POST", "/v1/load_lora_adapter", {"lora_name": adapter.name, "lora_path": str(dest)})
        if status != 200:
            raise AdapterRefused(f"vLLM refused {adapter.uri} (HTTP {status}): {_error_text(text)}")

    def _unload(self, config: VllmAdaptersConfig, name: str, keep_folder: bool) -> None:
        status, text = self._request(config, "POST", "/v1/unload_lora_adapter", {"lora_name": name})
        if status != 200:
            log.warning("vLLM did not unload adapter %s (HTTP %s): %s", name, status, _error_text(text))
        self.loaded.pop(name, None)
        folder = self.folders.pop(name, None)
        if folder is not None and not keep_folder:
            shutil.rmtree(folder, ignore_errors=True)
        log.info("adapter %s unloaded", name)


def _state(name: str, uri: str, status: str, error: str | None = None) -> dict[str, Any]:
    return {"name": name, "uri": uri, "status": status, "error": error}


def _error_text(text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            return str(error.get("message") or error)[:500]
        return str(data.get("message") or error or data)[:500]
    return str(data)[:500]


def write_state(path: Path, states: list[dict[str, Any]]) -> None:
    """The state, replaced atomically (the middleware may read it at any moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"adapters": states}))
    os.replace(tmp, path)


def read_config(path: Path) -> VllmAdaptersConfig:
    return VllmAdaptersConfig.model_validate_json(path.read_bytes())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="finetune-trainer vllm-adapters", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="VllmAdaptersConfig JSON (reread while running)")
    parser.add_argument("--interval", type=float, default=INTERVAL_SECONDS, help="seconds between passes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        config = read_config(args.config)
    except (OSError, ValidationError) as e:
        log.error("cannot read %s: %s", args.config, e)
        return ExitCode.BAD_INPUT
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    sync = AdapterSync(ObjectStore(config.storage) if config.storage else None)
    while not stopping:
        try:
            config = read_config(args.config)
        except (OSError, ValidationError) as e:  # a ConfigMap being swapped: keep the last good list
            log.warning("cannot reread %s (%s); keeping the previous list", args.config, type(e).__name__)
        write_state(Path(config.state_file), sync.sync(config))
        time.sleep(args.interval)
    return ExitCode.OK
