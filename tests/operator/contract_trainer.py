"""A trainer that follows the operator–trainer contract without training anything.

The operator's integration tests run it in place of ``finetune-trainer train`` so that a FineTuneJob's
whole lifecycle takes seconds: it reads the same config file, writes progress.json and events.jsonl,
uploads checkpoints and a model folder with manifest.json last, resumes from its newest complete
checkpoint, exits with the contract's codes and writes the termination message. What it does is chosen
by the base model URI's last segment:

* ``.../fail-bad-input``: exit ExitCode.BAD_INPUT with reason InvalidDataset (like a bad dataset);
* ``.../crash-once``: crash (exit 1) the first time, succeed on the retry;
* ``.../slow``: one second a step, to kill things mid-run;
* ``.../hold``: hold after the first checkpoint until told to stop (SIGTERM, then exit as preempted) or
  released (an object ``release`` appears in its output folder, then go on); a run that resumes from a
  checkpoint goes on to the end. What a test does mid-run lands mid-run whatever the machine's speed;
* anything else: train ``CONTRACT_TRAINER_STEPS`` steps of ``CONTRACT_TRAINER_STEP_SECONDS`` each.

    python -m tests.operator.contract_trainer train --config config.json
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from finetune_trainer import contract
from finetune_trainer.storage import ObjectStore


def write_termination(message: str) -> None:
    path = os.environ.get("FINETUNE_TERMINATION_LOG", contract.DEFAULT_TERMINATION_LOG)
    try:
        Path(path).write_text(message[: contract.TERMINATION_MESSAGE_LIMIT])
    except OSError:
        pass


class ContractTrainer:
    def __init__(self, config: contract.TrainerConfig):
        self.config = config
        self.store = ObjectStore(config.storage)
        self.root = config.output_uri
        self.progress = contract.Progress(total_epochs=config.hyperparameters.epochs)
        self.stop = False

    def uri(self, *parts: str) -> str:
        return contract.join_uri(self.root, *parts)

    def event(self, message: str, reason: str = "Progress", type_: str = "Normal") -> None:
        line = contract.TrainerEvent(type=type_, reason=reason, message=message).model_dump_json(by_alias=True)
        self.store.append_line(self.uri(contract.EVENTS_FILE), line)

    def write_progress(self, **update) -> None:
        self.progress = self.progress.model_copy(update={**update, "updated_at": contract.utcnow()})
        self.store.write_json(self.uri(contract.PROGRESS_FILE), self.progress)

    def newest_checkpoint(self) -> int:
        steps = []
        for name in self.store.list(self.uri(contract.CHECKPOINTS_DIR)):
            parts = name.split("/")
            if len(parts) == 2 and parts[1] == contract.MANIFEST_FILE and parts[0].startswith("step-"):
                steps.append(int(parts[0][len("step-") :]))
        return max(steps, default=0)

    def fail(self, reason: str, message: str, code: int) -> int:
        self.write_progress(phase="failed", reason=reason, message=message, exit_code=code)
        self.event(f"Job failed: {reason}: {message}", reason="Failed", type_="Warning")
        write_termination(f"{reason}: {message}")
        return code

    def run(self) -> int:
        behaviour = self.config.base_model.rstrip("/").rsplit("/", 1)[-1]
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stop", True))
        self.write_progress(phase="downloading")
        self.event("Fine-tuning job started", reason="Started")
        if behaviour == "fail-bad-input":
            return self.fail("InvalidDataset", "line 3: unknown role 'bot' (rule unknown_role)", contract.ExitCode.BAD_INPUT)
        if behaviour == "crash-once" and not self.store.exists(self.uri("crashed-once")):
            self.store.write_bytes(self.uri("crashed-once"), b"1")
            print("simulated crash", file=sys.stderr)
            return contract.ExitCode.RETRYABLE
        total = int(os.environ.get("CONTRACT_TRAINER_STEPS", "6"))
        step_seconds = 1.0 if behaviour == "slow" else float(os.environ.get("CONTRACT_TRAINER_STEP_SECONDS", "0.3"))
        every = max(1, total // max(1, self.config.hyperparameters.n_checkpoints)) if self.config.hyperparameters.n_checkpoints else 0
        start = self.newest_checkpoint()
        checkpoints = [contract.CheckpointRecord(step=s, uri=self.uri(contract.checkpoint_dir(s))) for s in range(every, start + 1, every)] if every else []
        if start:
            self.event(f"Resuming from checkpoint at step {start}", reason="Resumed")
        self.write_progress(phase="training", step=start, total_steps=total, checkpoints=checkpoints)
        self.event("Training started", reason="TrainingStarted")
        for step in range(start + 1, total + 1):
            time.sleep(step_seconds)
            loss = 2.0 / step
            eta = (total - step) * step_seconds
            self.write_progress(step=step, epoch=step / total * self.config.hyperparameters.epochs, train_loss=loss, tokens_per_second=1000.0, eta_seconds=eta)
            if every and step % every == 0 and step < total:
                with tempfile.TemporaryDirectory() as tmp:
                    (Path(tmp) / "adapter_model.safetensors").write_bytes(f"step {step}".encode())
                    self.store.upload_artifact(Path(tmp), self.uri(contract.checkpoint_dir(step)), kind="checkpoint", step=step)
                checkpoints.append(contract.CheckpointRecord(step=step, uri=self.uri(contract.checkpoint_dir(step))))
                self.write_progress(checkpoints=checkpoints)
                self.event(f"Checkpoint saved at step {step}", reason="CheckpointSaved")
            if behaviour == "hold" and not start and checkpoints:
                self.event(f"Holding at step {step} until stopped", reason="Holding")
                while not self.stop and not self.store.exists(self.uri("release")):
                    time.sleep(0.05)
            if self.stop:
                self.write_progress(phase="pending", message="preempted")
                self.event(f"Training stopped at step {step}; will resume from the last checkpoint", reason="Preempted")
                return contract.ExitCode.PREEMPTED
        self.write_progress(phase="uploading")
        self.event("Uploading output model", reason="Uploading")
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": self.config.base_model, "r": self.config.lora.r}))
            (Path(tmp) / "adapter_model.safetensors").write_bytes(b"weights")
            time.sleep(step_seconds)
            self.store.upload_artifact(Path(tmp), self.uri(contract.MODEL_DIR), kind="adapter", base_model=self.config.base_model)
        self.event("Model upload complete", reason="Uploaded")
        self.write_progress(phase="done", model_uri=self.uri(contract.MODEL_DIR), eta_seconds=0)
        self.event("Fine-tuning job completed", reason="Completed")
        return contract.ExitCode.OK


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] != "train" or argv[1] != "--config":
        print("usage: contract_trainer train --config FILE", file=sys.stderr)
        return contract.ExitCode.BAD_INPUT
    try:
        config = contract.TrainerConfig.model_validate_json(Path(argv[2]).read_text())
    except (OSError, ValueError) as e:
        write_termination(f"ImpossibleConfig: {e}")
        return contract.ExitCode.BAD_INPUT
    return int(ContractTrainer(config).run())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
