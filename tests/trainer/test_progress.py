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


def curve(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_the_learning_curve_has_a_line_per_step_and_the_validation_loss_on_its_step(tmp_path: Path):
    reporter = ProgressReporter(ObjectStore(), str(tmp_path), enabled=True)
    reporter.phase("training", step=0, total_steps=4)
    assert not (tmp_path / "metrics.jsonl").exists(), "no step trained yet: no curve"
    for step, loss in ((1, 2.5), (2, 2.0)):
        reporter.update(step=step, epoch=step / 4, train_loss=loss, tokens_per_second=100.0)
    reporter.update(eval_loss=1.9)
    reporter.update(step=3, epoch=0.75, train_loss=1.5)
    reporter.write()

    lines = curve(tmp_path)
    assert [(m["step"], m.get("trainLoss"), m.get("evalLoss")) for m in lines] == [(1, 2.5, None), (2, 2.0, 1.9), (3, 1.5, None)]
    assert lines[0]["epoch"] == 0.25 and lines[0]["tokensPerSecond"] == 100.0


def test_a_resumed_run_keeps_the_curve_and_replaces_the_steps_it_trains_again(tmp_path: Path):
    first = ProgressReporter(ObjectStore(), str(tmp_path), enabled=True)
    for step in (1, 2, 3):
        first.update(step=step, train_loss=3.0 - step / 10)
    first.phase("training")  # progress.json with the curve, then the process is killed after step 3

    second = ProgressReporter(ObjectStore(), str(tmp_path), enabled=True)
    second.resume_from(json.loads((tmp_path / "progress.json").read_text()))
    second.update(step=3, train_loss=0.5)  # resumed from the checkpoint at step 2: step 3 is trained again
    second.write()

    assert [(m["step"], m["trainLoss"]) for m in curve(tmp_path)] == [(1, 2.9), (2, 2.8), (3, 0.5)]
