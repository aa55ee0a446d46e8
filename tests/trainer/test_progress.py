"""The progress reporter: progress.json, events.jsonl and the Prometheus endpoint, without a training run."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from finetune_trainer.progress import ProgressReporter
from finetune_trainer.storage import ObjectStore


def test_metrics_follow_the_progress_snapshot(tmp_path: Path):
    reporter = ProgressReporter(ObjectStore(), str(tmp_path), metrics_port=0, enabled=True)
    assert reporter.metrics is None  # port 0: no endpoint
    reporter.close()

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reporter = ProgressReporter(ObjectStore(), str(tmp_path), metrics_port=port, enabled=True)
    try:
        reporter.update(step=3, total_steps=10, train_loss=1.5, tokens_per_second=250.0, trained_tokens=1200)
        reporter.update(step=4, eval_loss=1.25, trained_tokens=1500)
        body = urllib.request.urlopen(f"http://127.0.0.1:{reporter.metrics.port}/metrics", timeout=5).read().decode()
    finally:
        reporter.close()
    values = dict(line.rsplit(" ", 1) for line in body.splitlines() if line.startswith("finetune_trainer_"))
    assert float(values["finetune_trainer_step"]) == 4
    assert float(values["finetune_trainer_total_steps"]) == 10
    assert float(values["finetune_trainer_train_loss"]) == 1.5
    assert float(values["finetune_trainer_eval_loss"]) == 1.25
    assert float(values["finetune_trainer_tokens_per_second"]) == 250
    assert float(values["finetune_trainer_trained_tokens_total"]) == 1500


def test_only_rank_zero_writes(tmp_path: Path):
    quiet = ProgressReporter(ObjectStore(), str(tmp_path), enabled=False)
    quiet.event("Fine-tuning job started")
    quiet.phase("training", step=1)
    assert not (tmp_path / "progress.json").exists() and not (tmp_path / "events.jsonl").exists()

    main = ProgressReporter(ObjectStore(), str(tmp_path), enabled=True)
    main.event("Fine-tuning job started", reason="JobStarted")
    main.phase("training", step=1, total_steps=5)
    assert json.loads((tmp_path / "progress.json").read_text())["phase"] == "training"
    (event,) = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert (event["type"], event["reason"], event["message"]) == ("Normal", "JobStarted", "Fine-tuning job started")
