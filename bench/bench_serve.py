"""Benchmark of the builtin server: batched serving against plain transformers ``generate``, one at a time.

Both sides run the same small Llama (wide enough that compute matters) on the CPU with the same number
of torch threads and the same prompts, greedy, ``max_tokens`` each:

* baseline: ``model.generate`` for one prompt after the other, in this process;
* server: ``finetune-trainer serve`` in a subprocess, 8 concurrent clients of the official ``openai``
  client streaming chat completions.

Reported: generated tokens per second of each and their ratio, time to first token (p50, p99) of the
server, how many answers are identical on both sides, and the time to hot-load a LoRA adapter through
the admin API. The last line printed is the figures as one JSON object.

Run: ``make bench-serve`` (or ``python bench/bench_serve.py --help``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

API_KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_prompts(count: int, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    topics = ["the sea", "a small robot", "bread", "winter", "a lost key", "mountains", "a library", "trains"]
    prompts = []
    for i in range(count):
        words = " ".join(rng.choice(["please", "kindly", "briefly", "slowly", "now"]) for _ in range(rng.randint(0, 10)))
        prompts.append([{"role": "user", "content": f"Tell me about {topics[i % len(topics)]}, {words}."}])
    return prompts


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def baseline(model_dir: Path, prompts: list[list[dict]], max_tokens: int) -> tuple[float, int, list[str]]:
    """Plain transformers: one ``generate`` call per prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    encoded = [
        tokenizer(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False), add_special_tokens=False)["input_ids"]
        for p in prompts
    ]
    with torch.no_grad():
        model.generate(input_ids=torch.tensor([encoded[0]]), max_new_tokens=4, do_sample=False)  # warm-up
        started = time.perf_counter()
        tokens, texts = 0, []
        for ids in encoded:
            out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False)
            new = out[0, len(ids) :].tolist()
            if tokenizer.eos_token_id in new:
                new = new[: new.index(tokenizer.eos_token_id)]
            tokens += len(new)
            texts.append(tokenizer.decode(new, skip_special_tokens=True))
        elapsed = time.perf_counter() - started
    return elapsed, tokens, texts


async def serve_clients(url: str, model: str, prompts: list[list[dict]], max_tokens: int, clients: int):
    """``clients`` concurrent streaming clients working through the prompts; wall time, tokens, TTFTs, texts."""
    from openai import AsyncOpenAI

    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(prompts)):
        queue.put_nowait(i)
    ttfts: list[float] = []
    texts: list[str] = [""] * len(prompts)
    tokens = 0

    async with AsyncOpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=600) as client:

        async def worker() -> None:
            nonlocal tokens
            while not queue.empty():
                i = queue.get_nowait()
                sent = time.perf_counter()
                first = None
                parts = []
                stream = await client.chat.completions.create(
                    model=model, messages=prompts[i], max_tokens=max_tokens, temperature=0, stream=True,
                    stream_options={"include_usage": True},
                )  # fmt: skip
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        if first is None:
                            first = time.perf_counter() - sent
                        parts.append(chunk.choices[0].delta.content)
                    if chunk.usage is not None:
                        tokens += chunk.usage.completion_tokens
                ttfts.append(first if first is not None else time.perf_counter() - sent)
                texts[i] = "".join(parts)

        started = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(clients)])
        elapsed = time.perf_counter() - started
    return elapsed, tokens, ttfts, texts


def post(url: str, path: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def mean_from_metrics(url: str, histogram: str) -> float | None:
    """The mean of a histogram at ``/metrics`` (its sum over its count)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == histogram + "_sum":
                total += sample.value
            elif sample.name == histogram + "_count":
                count += sample.value
    return total / count if count else None


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become ready")


def make_adapter(model_dir: Path, output: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(output)
    return output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument(
        "--seed", type=int, default=2,
        help="model seed; the default's greedy answers are ordinary bytes, not special tokens that decode to nothing "
        "(which would leave time to first token and the answer comparison without meaning)",
    )
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()

    import torch

    from finetune_local.tiny_model import make_tiny_model

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    model_dir = make_tiny_model(
        work / "model", seed=args.seed, hidden_size=args.hidden_size, num_layers=args.layers, num_heads=8, num_kv_heads=4,
        intermediate_size=args.hidden_size * 8 // 3,
    )  # fmt: skip
    adapter_dir = make_adapter(model_dir, work / "adapter")
    prompts = make_prompts(args.prompts)

    base_seconds, base_tokens, base_texts = baseline(model_dir, prompts, args.max_tokens)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = {
        "baseModel": str(model_dir),
        "servedModelName": "bench",
        "maxBatchSize": args.max_batch_size,
        "maxQueue": 256,
        "maxModelLen": 1024,
    }
    (work / "serve.json").write_text(json.dumps(config))
    log = open(work / "server.log", "w")
    env = {**os.environ, "FINETUNE_API_KEY": API_KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "finetune_trainer.cli", "serve", "--config", str(work / "serve.json"),
         "--host", "127.0.0.1", "--port", str(port), "--threads", str(args.threads)],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        wait_ready(url, proc)
        asyncio.run(serve_clients(url, "bench", prompts[:2], 4, 2))  # warm-up
        serve_seconds, serve_tokens, ttfts, serve_texts = asyncio.run(
            serve_clients(url, "bench", prompts, args.max_tokens, args.clients)
        )
        server_ttft_mean = mean_from_metrics(url, "finetune_server_time_to_first_token_seconds")
        started = time.perf_counter()
        status, answer = post(url, "/v1/load_lora_adapter", {"lora_name": "bench-lora", "lora_path": str(adapter_dir)})
        load_seconds = time.perf_counter() - started
        if status != 200:
            raise SystemExit(f"adapter load failed: {answer}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

    base_tps = base_tokens / base_seconds
    serve_tps = serve_tokens / serve_seconds
    same = sum(a == b for a, b in zip(base_texts, serve_texts, strict=True))
    non_empty = sum(bool(t) for t in serve_texts)
    figures = {
        "prompts": len(prompts),
        "max_tokens": args.max_tokens,
        "clients": args.clients,
        "threads": args.threads,
        "baseline_tokens_per_second": round(base_tps, 1),
        "server_tokens_per_second": round(serve_tps, 1),
        "speedup": round(serve_tps / base_tps, 2),
        "ttft_p50_seconds": round(statistics.median(ttfts), 4),
        "ttft_p99_seconds": round(percentile(ttfts, 99), 4),
        "ttft_mean_seconds_server_side": None if server_ttft_mean is None else round(server_ttft_mean, 4),
        "identical_answers": same,
        "non_empty_answers": non_empty,
        "hidden_size": args.hidden_size,
        "adapter_load_seconds": round(load_seconds, 3),
        "adapter_load_seconds_server": answer.get("load_seconds"),
    }
    rows = [
        ("baseline (generate, one at a time)", f"{base_tokens} tokens in {base_seconds:.2f}s", f"{base_tps:.1f} tok/s"),
        (f"builtin server ({args.clients} clients)", f"{serve_tokens} tokens in {serve_seconds:.2f}s", f"{serve_tps:.1f} tok/s"),
        ("speedup", "", f"{serve_tps / base_tps:.2f}x"),
        ("TTFT p50 / p99", "", f"{figures['ttft_p50_seconds'] * 1000:.0f} / {figures['ttft_p99_seconds'] * 1000:.0f} ms"),
        ("identical greedy answers", f"{non_empty} of them non-empty", f"{same}/{len(prompts)}"),
        ("adapter hot-load (admin API)", "", f"{load_seconds:.3f}s"),
    ]
    print(f"{'':38} {'':28} {'':>14}")
    for name, detail, value in rows:
        print(f"{name:38} {detail:28} {value:>14}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
