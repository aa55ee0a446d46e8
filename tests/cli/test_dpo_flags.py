"""``finetune jobs create`` writes a DPO job after an SFT job as the YAML of deploy/examples/preference/ does,
and refuses DPO options that the API refuses, in one line naming the field (no cluster needed: --dry-run)."""

from __future__ import annotations

import pytest
import yaml

from finetune_operator.cli import main

DPO = ["jobs", "create", "case-dpo", "--model", "s3://finetune/models/tiny-case", "--dataset", "case-pairs", "-n", "team-a", "--dry-run"]


def test_a_dpo_job_from_the_cli_continues_the_sft_job_with_its_options(capsys):
    assert main([*DPO, "--objective", "dpo", "--dpo-beta", "0.5", "--dpo-sft-weight", "1", "--from-checkpoint", "case-sft", "--suffix", "dpo"]) == 0
    planned = yaml.safe_load(capsys.readouterr().out)
    assert planned["spec"] == {
        "baseModel": {"uri": "s3://finetune/models/tiny-case"}, "dataset": "case-pairs", "objective": "dpo",
        "dpo": {"beta": 0.5, "sftWeight": 1.0}, "fromCheckpoint": "case-sft", "suffix": "dpo",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--dpo-beta", "0.5"], "spec.dpo: dpo options need objective dpo"),
        (["--objective", "dpo", "--dpo-beta", "0"], "spec.dpo.beta: Input should be greater than 0"),
        (["--objective", "dpo", "--dpo-loss-type", "ipo", "--dpo-label-smoothing", "0.1"], "labelSmoothing"),
        (["--objective", "dpo", "--dpo-sft-weight", "-1"], "spec.dpo.sftWeight: Input should be greater than or equal to 0"),
    ],
)
def test_dpo_options_the_api_refuses_are_refused_in_one_line(capsys, flags: list[str], words: str):
    assert main([*DPO, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: invalid FineTuneJob: ") and words in err[0], err
