"""LoRA adapters served next to the base model: fetching, checking, hot-loading and unloading.

An adapter is served under its own model name. ``AdapterRegistry`` keeps one ``AdapterState`` per name
and loads adapters in a background thread:

1. fetch the folder: ``s3://`` URIs are downloaded with their ``manifest.json`` checked (size and
   sha256 of every file), local folders are used in place;
2. check it before it touches the model: a LoRA ``adapter_config.json``, a readable
   ``adapter_model.safetensors`` with finite weights, and every LoRA matrix fitting the base layer it
   targets (a layer the base model lacks, or other in/out features, means another base model);
3. install it in the engine thread between two decode steps, under an internal peft name, so running
   requests never see a half-loaded model.

Replacing an adapter (same name, new URI) loads the new version first and then switches the name over;
the old version, like an unloaded adapter, is deleted from the model once no running or waiting request
uses it. A failed load leaves the adapter in state ``failed`` with the reason; the rest keeps serving.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Literal

import torch

from finetune_trainer.contract import AdapterRef
from finetune_trainer.serve.engine import GenerationEngine
from finetune_trainer.storage import IncompleteArtifactError, ObjectStore, StorageError

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."

Status = Literal["loading", "loaded", "failed"]
Source = Literal["config", "api"]


class AdapterError(Exception):
    """An adapter cannot be served. ``status`` is the HTTP status the admin API answers with."""

    status = 400
    code = "invalid_adapter"


class AdapterNotFoundError(AdapterError):
    status = 404
    code = "adapter_not_found"


class AdapterFetchError(AdapterError):
    """The object store could not be read (not the adapter's fault): worth retrying."""

    status = 502
    code = "adapter_fetch_failed"


@dataclasses.dataclass
class AdapterState:
    """What the server knows about one adapter name."""

    name: str
    uri: str
    source: Source
    status: Status = "loading"
    error: str | None = None
    internal: str | None = None
    """The peft adapter name of the version that serves requests now (None: not servable)."""
    version: int = 0
    """Bumped by every load request for this name, so a superseded load does not win."""
    load_seconds: float | None = None
    loaded_at: float | None = None

    def describe(self) -> dict:
        return {
            "name": self.name,
            "uri": self.uri,
            "source": self.source,
            "status": self.status,
            "error": self.error,
            "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 3),
            "loaded_at": None if self.loaded_at is None else int(self.loaded_at),
        }


def linear_shapes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """``{module path: (in_features, out_features)}`` of every linear layer of the base model."""
    return {name: (m.in_features, m.out_features) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def check_adapter_folder(folder: Path, base_linears: dict[str, tuple[int, int]]) -> dict:
    """Raise ``AdapterError`` naming the problem unless ``folder`` holds a LoRA adapter for this base model.

    Returns the parsed adapter config.
    """
    config_path = folder / ADAPTER_CONFIG
    if not config_path.is_file():
        raise AdapterError(f"no {ADAPTER_CONFIG} in the adapter folder")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise AdapterError(f"{ADAPTER_CONFIG} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{ADAPTER_CONFIG} is not a JSON object")
    if config.get("peft_type") != "LORA":
        raise AdapterError(f"only LoRA adapters can be served; {ADAPTER_CONFIG} has peft_type {config.get('peft_type')!r}")
    if config.get("use_dora"):
        raise AdapterError("DoRA adapters (use_dora) are not supported by the builtin runtime")
    weights_path = folder / ADAPTER_WEIGHTS
    if not weights_path.is_file():
        raise AdapterError(f"no {ADAPTER_WEIGHTS} in the adapter folder (only safetensors weights are loaded)")
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(weights_path))
    except Exception as e:  # safetensors raises its own error types for truncated or garbled files
        raise AdapterError(f"{ADAPTER_WEIGHTS} is not a readable safetensors file: {e}") from None
    if not tensors:
        raise AdapterError(f"{ADAPTER_WEIGHTS} holds no tensors")
    ranks: dict[str, dict[str, int]] = {}
    for key, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise AdapterError(f"{ADAPTER_WEIGHTS}: tensor {key} has NaN or infinite values")
        module_path, kind = _lora_target(key)
        if kind is None:
            continue  # modules_to_save, embeddings and other extras are checked by peft itself
        if module_path not in base_linears:
            raise AdapterError(
                f"{ADAPTER_WEIGHTS}: tensor {key} targets layer {module_path!r}, which the base model does not have "
                "(was the adapter trained on another base model?)"
            )
        in_features, out_features = base_linears[module_path]
        if tensor.dim() != 2:
            raise AdapterError(f"{ADAPTER_WEIGHTS}: tensor {key} has {tensor.dim()} dimensions, expected 2")
        if kind == "A" and tensor.shape[1] != in_features:
            raise AdapterError(
                f"{ADAPTER_WEIGHTS}: tensor {key} has shape {tuple(tensor.shape)}, but layer {module_path!r} of the base "
                f"model has {in_features} input features (was the adapter trained on another base model?)"
            )
        if kind == "B" and tensor.shape[0] != out_features:
            raise AdapterError(
                f"{ADAPTER_WEIGHTS}: tensor {key} has shape {tuple(tensor.shape)}, but layer {module_path!r} of the base "
                f"model has {out_features} output features (was the adapter trained on another base model?)"
            )
        ranks.setdefault(module_path, {})[kind] = tensor.shape[0] if kind == "A" else tensor.shape[1]
    for module_path, pair in ranks.items():
        if len(pair) != 2:
            raise AdapterError(f"{ADAPTER_WEIGHTS}: layer {module_path!r} has only lora_{next(iter(pair))}, not both A and B")
        if pair["A"] != pair["B"]:
            raise AdapterError(f"{ADAPTER_WEIGHTS}: layer {module_path!r} has rank {pair['A']} in lora_A but {pair['B']} in lora_B")
    if not ranks:
        raise AdapterError(f"{ADAPTER_WEIGHTS} holds no LoRA matrices (lora_A/lora_B)")
    return config


def _lora_target(key: str) -> tuple[str, Literal["A", "B"] | None]:
    """``base_model.model.<path>.lora_A.weight`` → (``<path>``, ``"A"``)."""
    name = key[len(PEFT_PREFIX) :] if key.startswith(PEFT_PREFIX) else key
    for kind in ("A", "B"):
        marker = f".lora_{kind}."
        if marker in name:
            return name.split(marker, 1)[0], kind
    return name, None


class AdapterRegistry:
    """The adapters of one server, by served name. Thread-safe; loads run one at a time in a worker thread."""

    def __init__(self, engine: GenerationEngine, store: ObjectStore, cache_dir: Path, reserved_names: set[str]):
        self.engine = engine
        self.store = store
        self.cache_dir = Path(cache_dir)
        self.reserved_names = reserved_names
        self._base_linears = linear_shapes(engine.base_model)
        self._lock = threading.Lock()
        self._states: dict[str, AdapterState] = {}
        self._ids = itertools.count(1)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="adapter-loader")

    # -- queries --------------------------------------------------------------------------------
    def resolve(self, name: str) -> AdapterState | None:
        """The adapter serving ``name``, or None when no adapter has that name."""
        with self._lock:
            state = self._states.get(name)
            return dataclasses.replace(state) if state is not None else None

    def servable_names(self) -> list[str]:
        with self._lock:
            return [s.name for s in self._states.values() if s.internal is not None]

    def describe(self) -> list[dict]:
        with self._lock:
            return [s.describe() for s in sorted(self._states.values(), key=lambda s: s.name)]

    def counts(self) -> dict[str, int]:
        with self._lock:
            result = {"loaded": 0, "loading": 0, "failed": 0}
            for state in self._states.values():
                result[state.status] += 1
            return result

    # -- changes --------------------------------------------------------------------------------
    def load(self, name: str, uri: str, source: Source, replace: bool = True) -> concurrent.futures.Future:
        """Load (or replace) adapter ``name`` from ``uri``. The future ends with the final ``AdapterState``
        or raises ``AdapterError``."""
        if name in self.reserved_names:
            raise AdapterError(f"{name!r} is the base model's name; give the adapter another name")
        with self._lock:
            state = self._states.get(name)
            if state is not None and not replace:
                raise AdapterError(f"an adapter named {name!r} is already loaded; unload it first")
            if state is None:
                state = self._states[name] = AdapterState(name=name, uri=uri, source=source)
            state.uri, state.source, state.status, state.error = uri, source, "loading", None
            state.version += 1
            version = state.version
        log.info("loading adapter %s from %s", name, uri)
        return self._executor.submit(self._load, name, uri, version)

    def unload(self, name: str) -> AdapterState:
        """Stop serving ``name`` now; its weights leave the model when the requests using it are done."""
        with self._lock:
            state = self._states.pop(name, None)
        if state is None:
            raise AdapterNotFoundError(f"no adapter named {name!r} is loaded")
        if state.internal is not None:
            self.engine.release_adapter(state.internal)
        log.info("adapter %s unloaded", name)
        return state

    def reconcile(self, wanted: list[AdapterRef]) -> list[concurrent.futures.Future]:
        """Make the adapters from the config file match ``wanted``: load new, changed and failed ones,
        unload those the file no longer lists. Adapters loaded through the admin API are left alone
        unless the file names them."""
        wanted_by_name = {ref.name: ref.uri for ref in wanted}
        with self._lock:
            current = {name: (s.uri, s.status, s.source) for name, s in self._states.items()}
        futures = []
        for name, (_, _, source) in current.items():
            if source == "config" and name not in wanted_by_name:
                self.unload(name)
        for name, uri in wanted_by_name.items():
            known = current.get(name)
            if known is not None and known[0] == uri and known[1] != "failed" and known[2] == "config":
                continue
            try:
                futures.append(self.load(name, uri, "config"))
            except AdapterError as e:
                log.error("adapter %s from the config file cannot be loaded: %s", name, e)
                with self._lock:
                    self._states[name] = AdapterState(name=name, uri=uri, source="config", status="failed", error=str(e))
        return futures

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the loading worker ---------------------------------------------------------------------
    def _load(self, name: str, uri: str, version: int) -> AdapterState:
        started = time.monotonic()
        internal = f"adapter{next(self._ids)}"
        download = self.cache_dir / internal
        try:
            folder = self._fetch(uri, download)
            check_adapter_folder(folder, self._base_linears)
            self.engine.call_between_steps(lambda: self._install(internal, folder)).result()
        except AdapterError as e:
            return self._finish_failed(name, version, str(e), e)
        except Exception as e:  # anything unexpected is reported like a bad adapter, never raised into the server
            log.exception("loading adapter %s failed", name)
            return self._finish_failed(name, version, f"{type(e).__name__}: {e}", AdapterError(f"{type(e).__name__}: {e}"))
        finally:
            if download.exists():
                shutil.rmtree(download, ignore_errors=True)
        elapsed = time.monotonic() - started
        with self._lock:
            state = self._states.get(name)
            current = state is not None and state.version == version
            if current:
                old, state.internal = state.internal, internal
                state.status, state.error, state.load_seconds, state.loaded_at = "loaded", None, elapsed, time.time()
                result = dataclasses.replace(state)
        if not current:  # unloaded or replaced while loading: this version is not wanted any more
            self.engine.release_adapter(internal)
            raise AdapterError(f"adapter {name!r} was unloaded or replaced while it was loading")
        if old is not None:
            self.engine.release_adapter(old)
        log.info("adapter %s loaded from %s in %.2fs", name, uri, elapsed)
        return result

    def _finish_failed(self, name: str, version: int, reason: str, error: AdapterError) -> AdapterState:
        log.error("adapter %s cannot be served: %s", name, reason)
        with self._lock:
            state = self._states.get(name)
            if state is not None and state.version == version:
                old, state.internal = state.internal, None
                state.status, state.error = "failed", reason
                if old is not None:
                    self.engine.release_adapter(old)
        raise error

    def _fetch(self, uri: str, download: Path) -> Path:
        try:
            return self.store.fetch_folder(uri, download)
        except IncompleteArtifactError as e:
            if "has no" in str(e):
                raise AdapterNotFoundError(f"adapter not found: {e}") from None
            raise AdapterError(f"adapter is corrupt: {e}") from None
        except StorageError as e:
            text = str(e)
            if "NoSuch" in text or "no such folder" in text:
                raise AdapterNotFoundError(f"adapter not found: {text}") from None
            raise AdapterFetchError(f"cannot fetch the adapter: {text}") from None

    def _install(self, internal: str, folder: Path) -> None:
        """Runs in the engine thread: add the adapter's LoRA layers to the model."""
        from peft import PeftModel

        engine = self.engine
        try:
            if engine.peft_model is None:
                engine.peft_model = PeftModel.from_pretrained(engine.base_model, str(folder), adapter_name=internal, is_trainable=False)
            else:
                engine.peft_model.load_adapter(str(folder), adapter_name=internal, is_trainable=False)
            engine.peft_model.eval()
        except Exception as e:
            if engine.peft_model is not None and internal in engine.peft_model.peft_config:
                engine.peft_model.delete_adapter(internal)
            raise AdapterError(f"peft could not load the adapter: {e}") from None
