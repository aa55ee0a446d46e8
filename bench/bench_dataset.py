"""Dataset validation benchmark: how fast the checker reads chat JSONL, and that its memory does not grow.

Writes a 50 MB and a 200 MB chat JSONL file (realistic lengths: an optional system prompt, 1 to 4 turns,
user messages of 10 to 200 words, answers of 20 to 400, some code, some non-ASCII) to a temporary folder,
then for each:

* runs ``finetune-trainer validate --config`` (check, sha256, 10 % split, publish to a local folder with
  its manifest) in a subprocess, and reads the child's peak RSS from ``wait4``; its wall time gives the
  end-to-end rate, start-up and publishing included;
* times the check-hash-split pass alone (``check_source``) in a fresh interpreter, several runs, best kept.

Goal: at least 50 MB/s for check and split, and the same peak RSS for 50 MB as for 200 MB. The last line
printed is the figures as one JSON object.

    python bench/bench_dataset.py [--sizes 50,200] [--repeat 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_MB_PER_S = 50.0
MB = 1_000_000

WORDS = (
    "the a of to and in is it that for on with as this be are was by at from or an can will not have "
    "model data training example token sequence learning rate batch gradient loss validation cluster node "
    "kubernetes operator dataset adapter checkpoint storage bucket object request response latency memory "
    "python function return value error message config file line format chat assistant user system "
    "über café naïve résumé 東京 数据 модель ошибка"
).split()
CODE = "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # 5\n"


def sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    if rng.random() < 0.1:
        text += "\n```python\n" + CODE + "```\n"
    if rng.random() < 0.2:
        text += ' He said "yes".\nNext line.'
    return text


def write_chat_jsonl(path: Path, target_bytes: int, seed: int = 0) -> int:
    """Write about ``target_bytes`` of chat examples; return how many. Messages come from pools for speed."""
    rng = random.Random(seed)
    systems = [sentence(rng, rng.randint(8, 40)) for _ in range(50)]
    users = [sentence(rng, rng.randint(10, 200)) for _ in range(2000)]
    answers = [sentence(rng, rng.randint(20, 400)) for _ in range(2000)]
    written = count = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target_bytes:
            messages = [{"role": "system", "content": rng.choice(systems)}] if rng.random() < 0.5 else []
            for turn in range(rng.randint(1, 4)):
                prefix = f"[{count}.{turn}] "  # every example distinct
                messages.append({"role": "user", "content": prefix + rng.choice(users)})
                messages.append({"role": "assistant", "content": rng.choice(answers)})
            line = json.dumps({"messages": messages}, ensure_ascii=False) + "\n"
            f.write(line)
            written += len(line.encode("utf-8"))
            count += 1
    return count


def run_command(data: Path, work: Path) -> dict:
    """``finetune-trainer validate`` in a child process: wall time and the child's own peak RSS."""
    config = {
        "source": str(data),
        "validationSplit": 0.1,
        "outputUri": str(work / "datasets" / "bench" / data.stem),
        "reportUri": str(work / f"{data.stem}-report.json"),
    }
    config_file = work / f"{data.stem}-config.json"
    config_file.write_text(json.dumps(config))
    command = [str(Path(sys.executable).parent / "finetune-trainer"), "validate", "--config", str(config_file)]
    env = {**os.environ, "FINETUNE_TERMINATION_LOG": str(work / "termination-log")}
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"validate failed ({child.returncode}): {child.stderr.read().decode()[-2000:]}")
    child.stderr.close()
    report = json.loads(Path(config["reportUri"]).read_text())
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "report": report}  # ru_maxrss is in KiB on Linux


def time_check_and_split(data: Path, work: Path, repeat: int) -> float:
    """Best wall time of the check-hash-split pass alone, in-process."""
    from finetune_trainer.contract import ValidateConfig
    from finetune_trainer.data.validate_cmd import check_source

    config = ValidateConfig(source=str(data), validation_split=0.1, output_uri=str(work / "unused"), report_uri=str(work / "unused.json"))
    best = float("inf")
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            started = time.perf_counter()
            report, sink = check_source(config, Path(tmp))
            best = min(best, time.perf_counter() - started)
            assert report.is_check_passed and sink is not None, report.message
    return best


def in_child(*args: str) -> dict:
    """Run this script's ``--child`` mode in a fresh interpreter and return the JSON it prints.

    Generating the data and the in-process timing run in children so this process stays small: a child's
    peak RSS as ``wait4`` reports it includes the memory of the process it was forked from (Linux records
    the old image's high-water mark at ``exec``), so a grown parent would inflate the figure it measures.
    """
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def child(args: list[str]) -> int:
    if args[0] == "generate":
        path, size = Path(args[1]), int(args[2])
        started = time.perf_counter()
        examples = write_chat_jsonl(path, size * MB)
        print(json.dumps({"examples": examples, "seconds": time.perf_counter() - started}))
    elif args[0] == "time":
        path, work, repeat = Path(args[1]), Path(args[2]), int(args[3])
        print(json.dumps({"seconds": time_check_and_split(path, work, repeat)}))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200", help="file sizes in MB, comma-separated (default 50,200)")
    parser.add_argument("--repeat", type=int, default=3, help="in-process timing runs per size (best kept)")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-dataset-"))
    work.mkdir(parents=True, exist_ok=True)
    figures: dict[str, object] = {"goal_mb_per_s": GOAL_MB_PER_S}
    try:
        for size in sizes:
            data = work / f"chat-{size}mb.jsonl"
            generated = in_child("generate", str(data), str(size))
            examples = generated["examples"]
            actual_mb = data.stat().st_size / MB
            print(f"{data.name}: {actual_mb:.1f} MB, {examples} examples, written in {generated['seconds']:.1f} s", flush=True)

            command = run_command(data, work)
            check_split = in_child("time", str(data), str(work), str(args.repeat))["seconds"]
            rate = actual_mb / check_split
            end_to_end = actual_mb / command["wall_s"]
            report = command["report"]
            print(
                f"  check+hash+split: {rate:.1f} MB/s ({check_split:.2f} s)   "
                f"finetune-trainer validate end to end: {end_to_end:.1f} MB/s ({command['wall_s']:.2f} s), "
                f"peak RSS {command['peak_rss_mb']:.0f} MB   "
                f"train/validation {report['trainSamples']}/{report['validationSamples']}",
                flush=True,
            )
            figures[f"{size}mb"] = {
                "mb": round(actual_mb, 1),
                "examples": examples,
                "check_split_mb_per_s": round(rate, 1),
                "end_to_end_mb_per_s": round(end_to_end, 1),
                "peak_rss_mb": round(command["peak_rss_mb"], 1),
            }
            for path in work.glob("datasets"):
                shutil.rmtree(path)
            data.unlink()
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    rates = [f["check_split_mb_per_s"] for k, f in figures.items() if isinstance(f, dict)]
    rss = [f["peak_rss_mb"] for k, f in figures.items() if isinstance(f, dict)]
    figures["min_check_split_mb_per_s"] = min(rates)
    figures["meets_goal"] = min(rates) >= GOAL_MB_PER_S
    figures["rss_growth_mb"] = round(max(rss) - min(rss), 1)
    figures["bench_process_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
