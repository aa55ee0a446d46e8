"""Every trainer command leaves its last word the same way: ``Reason: message`` in the termination message
file, at most Kubernetes' 4096 bytes, never cut inside a character."""

from __future__ import annotations

import pytest

from finetune_trainer import contract


def test_the_reason_comes_first_and_the_file_is_the_one_the_environment_names(tmp_path, monkeypatch):
    path = tmp_path / "termination-log"
    monkeypatch.setenv(contract.TERMINATION_LOG_ENV, str(path))
    contract.write_termination_message("no manifest.json under s3://b/x", reason="ArtifactNotFound")
    assert path.read_text() == "ArtifactNotFound: no manifest.json under s3://b/x"
    contract.write_termination_message("Invalid: line 3: messages is missing")
    assert path.read_text() == "Invalid: line 3: messages is missing", "a later message replaces the earlier one"


@pytest.mark.parametrize("char", ["é", "€", "😀"])
def test_a_long_message_is_cut_to_the_limit_on_a_character_boundary(tmp_path, monkeypatch, char):
    path = tmp_path / "termination-log"
    monkeypatch.setenv(contract.TERMINATION_LOG_ENV, str(path))
    contract.write_termination_message("x" + char * 4096, reason="R")
    data = path.read_bytes()
    assert len(data) <= contract.TERMINATION_MESSAGE_LIMIT
    assert len(data) > contract.TERMINATION_MESSAGE_LIMIT - len(char.encode()), "only the split character is dropped"
    assert data.decode("utf-8").startswith("R: x" + char)


def test_a_file_that_cannot_be_written_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv(contract.TERMINATION_LOG_ENV, str(tmp_path / "no-such-folder" / "log"))
    contract.write_termination_message("still running", reason="R")  # outside a container: the log has it
    assert not (tmp_path / "no-such-folder").exists()


def test_every_trainer_command_uses_the_one_writer():
    """No command keeps a writer of its own (they drifted: one ignored the environment, some cut bytes)."""
    import ast
    import inspect

    from finetune_trainer import fetch, vllm_adapters
    from finetune_trainer.data import validate_cmd
    from finetune_trainer.evaluate import run
    from finetune_trainer.serve import server
    from finetune_trainer.train import recipe

    for module in (fetch, vllm_adapters, validate_cmd, run, server, recipe):
        tree = ast.parse(inspect.getsource(module))
        opened = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id in ("DEFAULT_TERMINATION_LOG", "TERMINATION_LOG_ENV")]
        assert opened == [], f"{module.__name__} writes the termination message itself"
