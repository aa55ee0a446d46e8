"""Fine-tuning through the CLI, as the operator's Job runs it: ``finetune-trainer train --config config.json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from finetune_trainer.contract import ExitCode, Manifest
from finetune_trainer.storage import sha256_file

from .conftest import TrainerRun, arithmetic_conversations, read_events, read_progress, trainer_config, write_jsonl

pytestmark = pytest.mark.slow


def assert_manifest_complete(folder: Path) -> Manifest:
    """Every file of the folder is in its manifest with the right size and hash, and nothing else."""
    manifest = Manifest.model_validate_json((folder / "manifest.json").read_text())
    on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert sorted(f.path for f in manifest.files) == on_disk
    for entry in manifest.files:
        assert (folder / entry.path).stat().st_size == entry.size
        assert sha256_file(folder / entry.path) == entry.sha256
    return manifest


def mean_loss(model, tokenizer, rows: list[dict]) -> float:
    """Mean loss of the assistant answers, computed with plain transformers."""
    losses = []
    for row in rows:
        prompt = tokenizer.apply_chat_template(row["messages"][:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(row["messages"], tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        ids = tokenizer(full, add_special_tokens=False, return_tensors="pt").input_ids
        labels = ids.clone()
        labels[:, : prompt_ids.shape[1]] = -100
        with torch.no_grad():
            losses.append(float(model(input_ids=ids, labels=labels).loss))
    return sum(losses) / len(losses)


def test_lora_fine_tune_learns_and_leaves_a_loadable_adapter(tiny_model: Path, tmp_path: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = arithmetic_conversations(48, seed=1)
    data = write_jsonl(tmp_path / "data" / "train.jsonl", rows)
    output = tmp_path / "job"
    config = trainer_config(
        tiny_model,
        [str(data)],
        output,
        validationSplit=0.1,
        merge=True,
        hyperparameters={"epochs": 3, "nEvals": 2, "nCheckpoints": 2},
    )
    result = TrainerRun(tmp_path / "run", config).run()
    assert result.returncode == ExitCode.OK, result.stderr

    # progress.json: done, with the model URI, after everything else.
    progress = read_progress(output)
    assert progress["phase"] == "done"
    assert progress["step"] == progress["totalSteps"] > 0
    assert progress["modelUri"] == progress["adapterUri"] == str(output / "model")
    assert progress["mergedModelUri"] == str(output / "merged")
    assert progress["tokensPerSecond"] > 0 and progress["trainedTokens"] > 0
    assert 0 <= progress["paddingFraction"] < 0.5
    assert progress["evalLoss"] < 10 and progress["trainLoss"] < 10
    total = progress["totalSteps"]
    assert [c["step"] for c in progress["checkpoints"]] == [total // 2, total]
    for checkpoint in progress["checkpoints"]:
        manifest = assert_manifest_complete(Path(checkpoint["uri"]))
        assert manifest.kind == "checkpoint" and manifest.step == checkpoint["step"]

    # events.jsonl: the hosted services' story, in order.
    messages = [e["message"] for e in read_events(output)]
    expected = [
        "Fine-tuning job started",
        "Downloading base model",
        "Training started",
        f"Epoch 1 completed at step {total // 3}",
        f"Checkpoint saved at step {total // 2}",
        f"Epoch 3 completed at step {total}",
        f"Checkpoint saved at step {total}",
        "Uploading output model",
        "Model upload complete",
        "Fine-tuning job completed",
    ]
    positions = [next(i for i, m in enumerate(messages) if m == want) for want in expected]
    assert positions == sorted(positions), messages
    assert sum(m.startswith("Validation loss ") for m in messages) == 2

    # The adapter: PEFT layout with plain target names and the base model's URI, loadable and better.
    adapter = output / "model"
    manifest = assert_manifest_complete(adapter)
    assert manifest.kind == "adapter" and manifest.base_model == str(tiny_model)
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tiny_model)
    assert sorted(adapter_config["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    before = mean_loss(base, tokenizer, rows[:16])
    tuned = PeftModel.from_pretrained(base, adapter).eval()
    after = mean_loss(tuned, tokenizer, rows[:16])
    # A random tiny model behind a frozen output head cannot go far; a clear drop is what LoRA can show.
    assert after < before - 0.4, (before, after)
    prompt = tokenizer.apply_chat_template(rows[0]["messages"][:-1], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated = tuned.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]

    # The merged model: a plain transformers model with the adapter's behaviour.
    assert assert_manifest_complete(output / "merged").kind == "merged-model"
    merged = AutoModelForCausalLM.from_pretrained(output / "merged").eval()
    assert mean_loss(merged, tokenizer, rows[:16]) == pytest.approx(after, rel=1e-3)


def test_full_fine_tune_learns_and_leaves_a_loadable_model(tiny_model: Path, tmp_path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = arithmetic_conversations(32, seed=2)
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    output = tmp_path / "job"
    # The base model on a PersistentVolumeClaim: pvc://<claim>/<path>, mounted at <root>/<claim>.
    pvc_uri = f"pvc://{tiny_model.parent.name}/{tiny_model.name}"
    config = trainer_config(pvc_uri, [str(data)], output, method="full", hyperparameters={"epochs": 3, "learningRate": 0.003, "batchSize": "auto"})
    result = TrainerRun(tmp_path / "run", config, env={"FINETUNE_PVC_ROOT": str(tiny_model.parent.parent)}).run()
    assert result.returncode == ExitCode.OK, result.stderr
    progress = read_progress(output)
    assert progress["phase"] == "done" and progress["modelUri"] == str(output / "model")
    assert "adapterUri" not in progress
    assert "batch size 4," in result.stderr  # batchSize auto on CPU
    manifest = assert_manifest_complete(output / "model")
    assert manifest.kind == "model"
    assert (output / "model" / "model.safetensors").exists() and (output / "model" / "tokenizer.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(output / "model")
    before = mean_loss(AutoModelForCausalLM.from_pretrained(tiny_model), tokenizer, rows[:16])
    tuned = AutoModelForCausalLM.from_pretrained(output / "model").eval()
    assert mean_loss(tuned, tokenizer, rows[:16]) < before * 0.8


def failed_run(tmp_path: Path, config: dict) -> tuple[int, str, dict, str]:
    result = TrainerRun(tmp_path / "run", config).run()
    progress = read_progress(Path(config["outputUri"]))
    termination = (tmp_path / "run" / "termination-log").read_text()
    return result.returncode, result.stderr, progress, termination


def test_qlora_on_cpu_is_refused_before_any_download(tmp_path: Path):
    config = trainer_config("hf://org/never-downloaded", ["missing.jsonl"], tmp_path / "job", method="qlora")
    code, stderr, progress, termination = failed_run(tmp_path, config)
    assert code == ExitCode.BAD_INPUT
    assert progress["phase"] == "failed" and progress["reason"] == "ImpossibleConfig"
    assert "qlora" in progress["message"] and "GPU" in progress["message"]
    assert termination.startswith("ImpossibleConfig: method qlora")
    assert "Traceback" not in stderr
    assert "Downloading base model" not in [e["message"] for e in read_events(tmp_path / "job")]


def test_more_gpus_than_visible_is_refused(tmp_path: Path):
    config = trainer_config("hf://org/never-downloaded", ["missing.jsonl"], tmp_path / "job", numGpus=2)
    code, stderr, progress, termination = failed_run(tmp_path, config)
    assert code == ExitCode.BAD_INPUT
    assert progress["reason"] == "ImpossibleConfig"
    assert termination == "ImpossibleConfig: numGpus is 2 but this node has 0 visible GPU(s)"
    assert "Traceback" not in stderr


def test_a_bad_line_fails_with_its_line_number(tiny_model: Path, tmp_path: Path):
    data = tmp_path / "train.jsonl"
    rows = arithmetic_conversations(5)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"messages": "hello"}\n')
    code, stderr, progress, termination = failed_run(tmp_path, trainer_config(tiny_model, [str(data)], tmp_path / "job"))
    assert code == ExitCode.BAD_INPUT
    assert progress["reason"] == "InvalidDataset"
    assert termination == f"InvalidDataset: {data} line 6: 'messages' must be a non-empty list"
    assert "Traceback" not in stderr
    assert read_events(tmp_path / "job")[-1]["message"] == f"Job failed: {data} line 6: 'messages' must be a non-empty list"


def test_a_missing_base_model_is_bad_input(tmp_path: Path):
    data = write_jsonl(tmp_path / "train.jsonl", arithmetic_conversations(4))
    code, stderr, progress, termination = failed_run(tmp_path, trainer_config(tmp_path / "nowhere", [str(data)], tmp_path / "job"))
    assert code == ExitCode.BAD_INPUT
    assert progress["reason"] == "BaseModelNotFound"
    assert termination == f"BaseModelNotFound: {tmp_path / 'nowhere'}: no such model folder"


def test_an_invalid_config_names_the_field(tmp_path: Path):
    config = trainer_config("m", ["d"], tmp_path / "job", hyperparameters={"maxSeqLength": 4})
    run = TrainerRun(tmp_path / "run", config)
    result = run.run()
    assert result.returncode == ExitCode.BAD_INPUT
    assert run.termination_log.read_text() == (
        "InvalidConfig: invalid config: hyperparameters.maxSeqLength: Input should be greater than or equal to 64"
    )
