"""The finetune trainer: validate datasets, fine-tune, evaluate and serve language models.

Import ``finetune_trainer.contract`` for the torch-free operator–trainer contract; every other module
may import torch.
"""

__version__ = "0.1.0"
