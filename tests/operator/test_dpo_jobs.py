"""DPO FineTuneJobs decided by the pure reconcile function: the Dataset's format must fit the objective, the
options reach the trainer, and a job continuing an SFT job starts from its model and records the chain."""

from __future__ import annotations

import copy

import pytest

from finetune_operator.api.finetunejob import progress_status
from finetune_operator.reconcile.finetunejob import Observed
from finetune_trainer import contract

from .test_finetunejob_lifecycle import OWNER, READY_DATASET, SPEC, job_of, run, running_world

PREFERENCES = copy.deepcopy(READY_DATASET)
PREFERENCES["status"]["format"] = "preference"
CHATS = copy.deepcopy(READY_DATASET)
CHATS["status"]["format"] = "chat"
DPO = {**SPEC, "dataset": "preferences", "objective": "dpo", "suffix": "dpo"}
SFT_MODEL = "s3://ft/jobs/team-a/sft-bot-u-0/model"


def sft_job(phase: str = "Completed", **spec) -> dict:
    """The SFT job a DPO job continues, as the API shows it."""
    output = {"name": "team-a/Llama-3.2-1B-Instruct:support:sft-bot", "uri": SFT_MODEL, "adapter": spec.get("method") != "full"}
    return {
        "metadata": {"name": "sft-bot", "namespace": "team-a"},
        "spec": {"baseModel": SPEC["baseModel"], "dataset": "support-chats", "suffix": "support", **spec},
        "status": {"phase": phase, **({"outputModel": output} if phase == "Completed" else {})},
    }


def trainer_config_of(plan) -> contract.TrainerConfig:
    return contract.TrainerConfig.model_validate_json(plan.create[0]["data"]["config.json"])


def condition(plan, kind: str) -> dict:
    return next(c for c in plan.status["conditions"] if c["type"] == kind)


def test_a_dpo_job_on_a_preference_dataset_hands_the_trainer_its_options():
    plan = run(spec={**DPO, "dpo": {"beta": 0.25, "lossType": "ipo"}}, observed=Observed(dataset=PREFERENCES))
    config = trainer_config_of(plan)
    assert plan.new_phase == "Queued"
    assert config.objective == "dpo" and config.dpo == contract.DpoOptions(beta=0.25, loss_type="ipo")
    default = trainer_config_of(run(spec=DPO, observed=Observed(dataset=PREFERENCES)))
    assert default.dpo == contract.DpoOptions() and default.dpo.beta == 0.1


@pytest.mark.parametrize(
    ("spec", "dataset", "words"),
    [
        (DPO, CHATS, "spec.dataset: Dataset preferences is in chat format; objective dpo (spec.objective) trains on preference pairs"),
        (SPEC, PREFERENCES, "spec.dataset: Dataset support-chats holds preference pairs, which train with objective dpo"),
    ],
)
def test_a_dataset_of_the_wrong_format_for_the_objective_keeps_the_job_pending_and_says_why(spec, dataset, words):
    plan = run(spec=spec, observed=Observed(dataset=dataset))
    assert plan.create == [] and plan.new_phase == "Pending"
    assert words in plan.status["message"]
    assert condition(plan, "Validated")["reason"] == "DatasetWrongFormat"


def test_a_validation_dataset_must_hold_preference_pairs_too():
    plan = run(spec={**DPO, "validationDataset": "chats"}, observed=Observed(dataset=PREFERENCES, validation_dataset=CHATS))
    assert plan.create == [] and "spec.validationDataset: Dataset chats is in chat format" in plan.status["message"]


def test_dpo_options_without_objective_dpo_are_an_invalid_spec():
    plan = run(spec={**SPEC, "dpo": {"beta": 0.5}}, observed=Observed(dataset=CHATS))
    assert plan.new_phase == "Failed" and "spec.dpo: dpo options need objective dpo" in plan.status["message"]


def test_dpo_after_sft_starts_from_its_adapter_and_its_model_name_records_the_chain():
    chained = {**DPO, "fromCheckpoint": "sft-bot"}
    waiting = run(spec=chained, observed=Observed(dataset=PREFERENCES, checkpoint_source=sft_job("Running")))
    assert waiting.new_phase == "Pending" and "waiting for sft-bot to complete" in waiting.status["message"]

    plan = run(spec=chained, status=waiting.status, observed=Observed(dataset=PREFERENCES, checkpoint_source=sft_job()))
    config = trainer_config_of(plan)
    chain = "team-a/Llama-3.2-1B-Instruct:support:sft-bot:dpo:chat-bot"
    assert config.from_checkpoint == SFT_MODEL and config.output_model_name == chain
    job = job_of(plan)
    assert job["metadata"]["annotations"]["finetune.dev/output-model-name"] == chain

    # It completes after the SFT job was deleted: the name was recorded with its Job.
    done = contract.Progress(phase="done", step=4, total_steps=4, model_uri="s3://ft/jobs/team-a/chat-bot-u-1/model",
                             eval_loss=0.2134, eval_reward_accuracy=0.95, eval_reward_margin=2.4)
    finished = running_world(job, done, pod_phase="Succeeded")
    finished.job["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    finished.model_complete = True
    completed = run(spec=chained, status=plan.status, observed=finished)
    assert completed.new_phase == "Completed" and completed.status["outputModel"]["name"] == chain
    words = f"Fine-tuning job completed: model {chain} (validation: DPO loss 0.213, reward accuracy 0.950, reward margin 2.400)"
    assert completed.status["message"] == words and any(e.message == words for e in completed.events)


def test_full_dpo_continues_the_merged_model_of_a_lora_sft_job_and_nothing_else():
    full = {**DPO, "method": "full", "fromCheckpoint": "sft-bot"}
    plan = run(spec=full, observed=Observed(dataset=PREFERENCES, checkpoint_source=sft_job()))
    assert plan.create == [] and condition(plan, "Validated")["reason"] == "CheckpointIncompatible"
    assert "sft-bot made a LoRA adapter without a merged model" in plan.status["message"]

    merged = sft_job(output={"merge": True})
    merged["status"]["outputModel"]["mergedUri"] = "s3://ft/jobs/team-a/sft-bot-u-0/merged"
    plan = run(spec=full, observed=Observed(dataset=PREFERENCES, checkpoint_source=merged))
    assert trainer_config_of(plan).from_checkpoint == "s3://ft/jobs/team-a/sft-bot-u-0/merged"

    checkpoint = run(spec={**full, "fromCheckpoint": "sft-bot:10"}, observed=Observed(dataset=PREFERENCES, checkpoint_source=merged))
    assert "sft-bot:10 is a LoRA checkpoint; method full continues a full model" in checkpoint.status["message"]

    of_full = sft_job(method="full")
    plan = run(spec=full, observed=Observed(dataset=PREFERENCES, checkpoint_source=of_full))
    assert trainer_config_of(plan).from_checkpoint == SFT_MODEL


@pytest.mark.parametrize(
    ("source", "words"),
    [
        (sft_job(method="full"), "sft-bot fine-tuned every weight (method full); method lora continues a LoRA adapter"),
        (sft_job(baseModel={"uri": "hf://org/other"}), "sft-bot's adapter belongs to baseModel hf://org/other, not hf://meta-llama/Llama-3.2-1B-Instruct"),
    ],
)
def test_a_lora_job_continues_only_a_lora_adapter_of_its_own_base_model(source, words):
    plan = run(spec={**DPO, "fromCheckpoint": "sft-bot"}, observed=Observed(dataset=PREFERENCES, checkpoint_source=source))
    assert plan.create == [] and words in plan.status["message"]
    assert condition(plan, "Validated")["reason"] == "CheckpointIncompatible"


def test_progress_shows_the_dpo_figures_and_drops_an_impossible_accuracy():
    progress = contract.Progress(phase="training", step=3, total_steps=9, train_loss=0.41, reward_accuracy=0.875, reward_margin=1.25,
                                 eval_loss=0.5, eval_reward_accuracy=0.8, eval_reward_margin=0.9)
    shown = progress_status(progress)
    assert (shown["trainLoss"], shown["rewardAccuracy"], shown["rewardMargin"]) == (0.41, 0.875, 1.25)
    assert (shown["evalLoss"], shown["evalRewardAccuracy"], shown["evalRewardMargin"]) == (0.5, 0.8, 0.9)
    assert "rewardAccuracy" not in progress_status(progress.model_copy(update={"reward_accuracy": 3.0}))


def test_label_smoothing_with_the_ipo_loss_is_an_invalid_spec():
    plan = run(spec={**DPO, "dpo": {"lossType": "ipo", "labelSmoothing": 0.1}}, observed=Observed(dataset=PREFERENCES))
    assert plan.new_phase == "Failed" and "spec.dpo.labelSmoothing: applies to lossType sigmoid only" in plan.status["message"]
