"""kopf handlers: thin glue that reads the world, calls a pure reconcile function and writes status.

Importing this package registers every handler with kopf.
"""

from finetune_operator.handlers import dataset, evaluation, finetunejob, inferenceendpoint, startup  # noqa: F401
