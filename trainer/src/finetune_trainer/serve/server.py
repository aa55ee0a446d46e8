"""``finetune-trainer serve --config serve.json``: the builtin OpenAI-compatible server.

Start-up: the HTTP port opens at once (``/healthz`` answers, ``/readyz`` says 503), the base model loads
in a thread, then the config file's adapters; ``/readyz`` turns 200 when each of them is loaded or has
failed (a failed adapter is reported, not fatal).

While running, the config file is polled every ``--reload-interval`` seconds; when its content changes
(a ConfigMap volume update swaps the file) the adapters are loaded and unloaded to match. A config
file that no longer parses is reported at ``/health`` and ``/v1/adapters`` and changes nothing.

SIGTERM (or SIGINT): ``/readyz`` turns 503, the port closes, requests in flight finish (at most
``--drain-timeout`` seconds), the process exits 0.

The API key comes from ``apiKeyFile`` or the ``FINETUNE_API_KEY`` environment variable; without one
the API is open (a warning says so at start-up). ``apiKeyFile`` is polled like the config file, so a
rotated Secret takes effect without a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from finetune_trainer.contract import ExitCode, ServeConfig, write_termination_message
from finetune_trainer.storage import ObjectStore, StorageError, is_s3, local_path

log = logging.getLogger("finetune_trainer.serve")

API_KEY_ENV = "FINETUNE_API_KEY"
SWITCH_INTERVAL_SECONDS = 0.0005


def read_config(path: Path) -> tuple[ServeConfig, bytes]:
    raw = path.read_bytes()
    return ServeConfig.model_validate_json(raw), raw


def read_api_key(config: ServeConfig) -> str | None:
    if config.api_key_file:
        key = Path(config.api_key_file).read_text(encoding="utf-8").strip()
        if not key:
            raise ValueError(f"apiKeyFile {config.api_key_file} is empty")
        return key
    key = os.environ.get(API_KEY_ENV, "").strip()
    return key or None


SMALL_MODEL_PARAMETERS = 50_000_000


def cpu_threads(model: Any, requested: int | None) -> int:
    """Threads for torch on CPU.

    A small model's matrices are too small to split: more threads only add synchronisation, which on a
    busy node (other pods on the same cores) makes each step many times slower. Small models get one
    thread; larger ones the cores this process may use (cgroup CPU sets included).
    """
    if requested:
        return requested
    if sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMETERS:
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def load_base_model(uri: str, store: ObjectStore, cache_dir: Path) -> tuple[Any, Any, Any, str]:
    """Model, the engine's tokenizer, the request side's tokenizer, and the device, from a model URI.

    ``s3://`` folders are downloaded with their manifest checked; ``hf://org/name[@revision]`` is read
    through the Hugging Face cache; anything else is a local folder.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    revision = None
    if is_s3(uri):
        source = str(store.fetch_folder(uri, cache_dir / "base-model"))
    elif uri.startswith("hf://"):
        source, _, rev = uri[len("hf://") :].partition("@")
        revision = rev or None
    else:
        path = local_path(uri)
        if not path.is_dir():
            raise StorageError(f"{uri}: no such folder")
        source = str(path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(source, revision=revision, dtype=dtype).to(device).eval()
    engine_tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    request_tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    import peft  # noqa: F401  (imported now so the first adapter load does not pay for it)

    return model, engine_tokenizer, request_tokenizer, device




def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


class Server:
    """The running server: HTTP front, engine, adapter registry and config watcher."""

    def __init__(self, config: ServeConfig, config_path: Path | None, raw_config: bytes, api_key: str | None, threads: int | None = None):
        from finetune_trainer.serve.api import ServerState
        from finetune_trainer.serve.metrics import ServerMetrics

        self.config = config
        self.threads = threads
        self.config_path = config_path
        self.config_digest = hashlib.sha256(raw_config).hexdigest()
        self.store = ObjectStore(config.storage)
        self.cache_dir = Path(tempfile.mkdtemp(prefix="finetune-serve-"))
        self.state = ServerState(
            base_model_uri=config.base_model,
            served_model_name=config.served_model_name or config.base_model,
            api_key=api_key,
            max_model_len=config.max_model_len,
            max_body_bytes=config.max_body_bytes,
            metrics=ServerMetrics(),
        )
        self.runner = None
        self.stopping = asyncio.Event()
        self.key_problem: str | None = None

    async def run(self, host: str, port: int, reload_interval: float, drain_timeout: float) -> int:
        from aiohttp import web

        from finetune_trainer.serve.api import build_app

        app = build_app(self.state)
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=drain_timeout, handler_cancellation=True, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        bound = self.runner.addresses[0] if self.runner.addresses else (host, port)
        log.info("listening on http://%s:%s", bound[0], bound[1])
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        watcher = None
        exit_code = ExitCode.OK
        try:
            loader = asyncio.create_task(self._start_model())
            stop_wait = asyncio.create_task(self.stopping.wait())
            await asyncio.wait({loader, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if loader.done() and loader.result() is not None:
                exit_code = loader.result()
            elif not self.stopping.is_set():
                if self.config_path is not None or self.config.api_key_file:
                    watcher = asyncio.create_task(self._watch_files(reload_interval))
                await self.stopping.wait()
            else:
                loader.cancel()
            stop_wait.cancel()
        finally:
            log.info("shutting down: finishing requests in flight (at most %.0fs)", drain_timeout)
            self.state.draining = True
            if watcher is not None:
                watcher.cancel()
            await self.runner.cleanup()
            if self.state.engine is not None:
                self.state.engine.stop()
            if self.state.adapters is not None:
                self.state.adapters.close()
            shutil.rmtree(self.cache_dir, ignore_errors=True)
        log.info("stopped")
        return exit_code

    async def _start_model(self) -> int | None:
        from finetune_trainer.serve.adapters import AdapterRegistry
        from finetune_trainer.serve.engine import GenerationEngine

        state, config = self.state, self.config
        log.info("loading base model %s", config.base_model)
        try:
            model, engine_tokenizer, request_tokenizer, device = await asyncio.to_thread(
                load_base_model, config.base_model, self.store, self.cache_dir
            )
        except (StorageError, OSError, ValueError) as e:
            state.load_error = f"cannot load base model {config.base_model}: {e}"
            log.error("%s", state.load_error)
            write_termination_message(state.load_error)
            return ExitCode.BAD_INPUT
        threads = cpu_threads(model, self.threads)
        if device == "cpu":
            import torch

            torch.set_num_threads(threads)
            log.info("using %d CPU thread(s) for the model", threads)
        positions = getattr(model.config, "max_position_embeddings", None)
        if positions and positions < state.max_model_len:
            log.info("maxModelLen %d is more than the model's %d positions: using %d", state.max_model_len, positions, positions)
            state.max_model_len = positions
        pad = request_tokenizer.pad_token_id
        if pad is None:
            pad = request_tokenizer.eos_token_id or 0
        engine = GenerationEngine(
            model,
            engine_tokenizer,
            max_batch_size=config.max_batch_size,
            max_queue=config.max_queue,
            eos_token_ids=eos_token_ids(model, request_tokenizer),
            pad_token_id=pad,
            device=device,
            num_threads=threads if device == "cpu" else None,
        )
        engine.start()
        registry = AdapterRegistry(engine, self.store, self.cache_dir / "adapters", reserved_names={state.served_model_name})
        state.metrics.bind(lambda: engine.queue_depth, lambda: engine.running_count, registry.counts)
        state.tokenizer, state.engine, state.adapters = request_tokenizer, engine, registry
        log.info("base model loaded on %s; serving it as %r", device, state.served_model_name)
        futures = registry.reconcile(config.adapters)
        if futures:
            await asyncio.wait([asyncio.wrap_future(f) for f in futures])
        state.ready = True
        log.info("ready: %s", ", ".join(f"{a['name']} {a['status']}" for a in registry.describe()) or "no adapters")
        return None

    async def _watch_files(self, interval: float) -> None:
        """Every ``interval`` seconds: reload the adapters when the config file's content changes, and
        take a new API key when the key file's does (a rotated Secret: no restart, no dropped request)."""
        while True:
            await asyncio.sleep(interval)
            if self.config_path is not None:
                await self._reload_config()
            if self.config.api_key_file:
                await self._reload_api_key(Path(self.config.api_key_file))

    async def _reload_config(self) -> None:
        assert self.config_path is not None
        try:
            raw = await asyncio.to_thread(self.config_path.read_bytes)
        except OSError as e:
            self._config_problem(f"cannot read {self.config_path}: {e.strerror}")
            return
        digest = hashlib.sha256(raw).hexdigest()
        if digest == self.config_digest:
            return
        self.config_digest = digest
        try:
            config = ServeConfig.model_validate_json(raw)
        except ValidationError as e:
            self._config_problem(f"{self.config_path} is not a valid serve config: {_first_error(e)}")
            return
        self.state.config_error = None
        log.info("config file changed: %d adapter(s) listed", len(config.adapters))
        _warn_unreloadable(self.config, config)
        self.config = config
        self.state.adapters.reconcile(config.adapters)

    async def _reload_api_key(self, path: Path) -> None:
        """The key is never logged; an unreadable or empty file keeps the current key (a rotation is
        written as a new file swapped in, so a half-written key is never seen)."""
        try:
            key = (await asyncio.to_thread(path.read_text, encoding="utf-8")).strip()
        except OSError as e:
            problem = f"cannot read apiKeyFile {path}: {e.strerror}; keeping the current key"
        else:
            if key and key != self.state.api_key:
                self.state.api_key = key
                self.key_problem = None
                log.info("apiKeyFile %s changed: requests now need the new key", path)
                return
            problem = f"apiKeyFile {path} is empty; keeping the current key" if not key else None
        if problem and problem != self.key_problem:
            log.error("%s", problem)
        self.key_problem = problem

    def _config_problem(self, message: str) -> None:
        if self.state.config_error != message:
            log.error("%s; keeping the adapters as they are", message)
        self.state.config_error = message


def _first_error(e: ValidationError) -> str:
    first = e.errors(include_url=False)[0]
    return f"{'.'.join(str(p) for p in first['loc']) or 'config'}: {first['msg']}"


def _warn_unreloadable(old: ServeConfig, new: ServeConfig) -> None:
    changed = [
        name
        for name in ("base_model", "served_model_name", "api_key_file", "max_batch_size", "max_queue", "max_model_len", "max_body_bytes")
        if getattr(old, name) != getattr(new, name)
    ]
    if changed:
        log.warning("config fields %s changed; they take effect at the next restart (only adapters reload live)", ", ".join(changed))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="finetune-trainer serve", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="serve config JSON (ServeConfig); reread while running for adapter changes")
    parser.add_argument("--host", help="address to listen on (overrides the config)")
    parser.add_argument("--port", type=int, help="port to listen on (overrides the config); 0 picks a free one")
    parser.add_argument("--reload-interval", type=float, default=1.0, help="seconds between checks of the config file")
    parser.add_argument("--drain-timeout", type=float, default=25.0, help="seconds to let requests finish after SIGTERM")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: 1 for small models, else the usable cores)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    config_path = Path(args.config)
    try:
        config, raw = read_config(config_path)
    except OSError as e:
        log.error("cannot read config %s: %s", config_path, e.strerror)
        return ExitCode.BAD_INPUT
    except ValidationError as e:
        log.error("%s is not a valid serve config: %s", config_path, _first_error(e))
        return ExitCode.BAD_INPUT
    try:
        api_key = read_api_key(config)
    except (OSError, ValueError) as e:
        log.error("cannot read the API key: %s", e)
        return ExitCode.BAD_INPUT
    if api_key is None:
        log.warning("no API key configured (apiKeyFile or %s): the API is open to anyone who can reach it", API_KEY_ENV)

    # The engine thread holds the GIL between torch ops; a short switch interval lets the HTTP thread
    # in often enough that requests are parsed and tokens sent while the model runs.
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    host = args.host if args.host is not None else config.host
    port = args.port if args.port is not None else config.port
    server = Server(config, config_path, raw, api_key, threads=args.threads)
    return int(asyncio.run(server.run(host, port, args.reload_interval, args.drain_timeout)))
