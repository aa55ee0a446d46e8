"""The builtin OpenAI-compatible server (``finetune-trainer serve``): the ``builtin`` runtime of an InferenceEndpoint.

``server`` (command line, start-up, config reload, shutdown), ``api`` (routes), ``protocol`` (request
bodies), ``engine`` (continuous batching), ``adapters`` (LoRA hot-loading), ``metrics``, ``errors``.
"""
