"""The finetune operator: Dataset, FineTuneJob, Evaluation and InferenceEndpoint as Kubernetes resources."""

__version__ = "0.1.0"

TRAINER_MODULES = (
    "finetune_trainer.contract",
    "finetune_trainer.data.validate",
    "finetune_trainer.storage",
    "finetune_trainer.evaluate.table",
    "finetune_trainer.serving_checks",
)
"""The only trainer modules the operator's code imports: the operator-trainer contract, and for the CLI the
validator the cluster runs (``finetune dataset check``), the object store client and the evaluation table; the serving checks (the LoRA ranks vLLM serves).
All torch-free: the operator image has no torch (tests/operator/test_boundaries.py holds both to it)."""
