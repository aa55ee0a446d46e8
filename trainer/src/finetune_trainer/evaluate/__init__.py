"""Evaluation: generate answers for a dataset with one or more models and grade them.

``finetune-trainer evaluate --config eval.json`` (``run.py``) reads an ``EvaluateConfig``, turns the
dataset into graded turns (``samples.py``), answers them through an OpenAI-compatible endpoint or a
model loaded directly (``generate.py``), scores each answer with the configured graders
(``graders.py``, ``judge.py``, ``embeddings.py``), and writes ``results.jsonl`` and ``summary.json``
(means with bootstrap confidence intervals, ``stats.py``) under the output URI, manifest last.
``table.py`` renders a summary for people.
"""
