"""The finetune operator: Dataset, FineTuneJob, Evaluation and InferenceEndpoint as Kubernetes resources."""

__version__ = "0.1.0"
