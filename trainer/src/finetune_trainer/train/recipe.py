"""``finetune-trainer train --config config.json``: the fine-tuning recipe.

One class, read top to bottom: ``setup`` (device, base model, data, model, optimizer, resume),
``train`` (the loop: accumulate, clip, step, evaluate, checkpoint), ``save_checkpoint``, ``upload``
(the output model, manifest last), and ``run`` that maps every failure to a typed reason and an exit
code. Only the process of rank 0 writes to the object store.

Two objectives share the loop: ``sft`` (``_optimizer_step``: the next-token loss over every label token)
and ``dpo`` (``_preference_step``: the DPO loss over whole preference pairs, against reference
log-probabilities computed once at set-up and kept in every checkpoint; see ``train/dpo.py``).

Multi-process: LoRA and QLoRA use DDP; full fine-tuning on more than one process shards parameters,
gradients and optimizer state with FSDP (``fully_shard`` per decoder layer), the model built on the meta
device and filled from rank 0 (``sharded.py``). See ``distributed.py`` for how the processes are started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from finetune_trainer.contract import (
    ExitCode,
    MODEL_DIR,
    TrainerConfig,
    checkpoint_dir,
    join_uri,
    write_termination_message,
)
from finetune_trainer.storage import ObjectStore, StorageError, is_s3

log = logging.getLogger("finetune_trainer")

WORK_DIR_ENV = "FINETUNE_WORK_DIR"
HOLD_AT_STEP_ENV = "FINETUNE_HOLD_AT_STEP"
"""A preemption drill: after this step the trainer writes its progress and holds until it is told to stop
(SIGTERM), as a drained node or a suspended Job would tell it. Tests use it to stop a run at a known step
whatever the machine's speed."""
MERGED_DIR = "merged"


# ----------------------------------------------------------------------------------------------
# Entry point


def main(argv: list[str]) -> int:
    """Train, then leave at once: the interpreter's teardown after torch and tokenizers takes seconds."""
    code = run_command(argv)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="finetune-trainer train", description="Fine-tune a model from a config file.")
    parser.add_argument("--config", required=True, help="TrainerConfig JSON (camelCase), as the operator writes it")
    args = parser.parse_args(argv)
    _setup_logging()
    try:
        config = load_config(Path(args.config))
    except ConfigError as e:
        log.error("%s", e)
        write_termination_message(reason="InvalidConfig", message=str(e))
        return int(ExitCode.BAD_INPUT)

    from finetune_trainer.train import distributed

    if not distributed.is_worker():
        try:
            workers = distributed.worker_environments(os.environ, config.num_gpus)
        except ValueError as e:
            log.error("%s", e)
            write_termination_message(reason="InvalidConfig", message=str(e))
            return int(ExitCode.BAD_INPUT)
        if len(workers) > 1:
            from finetune_trainer.train.errors import TrainerFailure
            from finetune_trainer.train.methods import plan_device

            try:
                plan_device(config, 0)  # refuse what this node cannot do before starting anything
            except TrainerFailure as f:
                log.error("%s", f.message)
                FineTuneRecipe.report_early_failure(config, f.reason, f.message, int(f.exit_code))
                return int(f.exit_code)
            return distributed.launch_workers(argv, workers)
        if workers:  # this node's one process of a job on several nodes: it is that worker itself
            os.environ.update(workers[0])
            _setup_logging()
    return FineTuneRecipe(config).run()


class ConfigError(ValueError):
    pass


def load_config(path: Path) -> TrainerConfig:
    """Read and validate the config; the error names the field and the rule, in one line."""
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config {path} is not valid JSON: {e.msg} (line {e.lineno})") from None
    try:
        return TrainerConfig.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid config: {problems}") from None


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    prefix = f"[rank {rank}] " if "WORLD_SIZE" in os.environ and os.environ.get("WORLD_SIZE") != "1" else ""
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s %(levelname)s {prefix}%(message)s",
        stream=sys.stderr,
        force=True,  # again once this process knows its rank
    )
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)




def evenly_spaced_steps(total: int, count: int) -> list[int]:
    """``count`` optimizer steps spread evenly over ``total``, the last one at the end.

    >>> evenly_spaced_steps(10, 3)
    [3, 7, 10]
    """
    if count <= 0 or total <= 0:
        return []
    return sorted({max(1, round(total * k / count)) for k in range(1, count + 1)})


# ----------------------------------------------------------------------------------------------
# The recipe


class FineTuneRecipe:
    def __init__(self, config: TrainerConfig):
        from finetune_trainer.train.distributed import env_from_os

        self.config = config
        self.hp = config.hyperparameters
        self.dpo = config.objective == "dpo"
        self.env = env_from_os()
        self.store = ObjectStore(config.storage)
        self.reporter: Any = None
        self.stop_requested = False
        self.in_training_loop = False
        self.work_dir, self.own_work_dir = self._work_dir()
        self.last_checkpoint_step: int | None = None
        self.succeeded = False
        self.peer_lost = False
        self.uploaded_model: Any = None
        """The output model's manifest when an earlier attempt of this job already uploaded it."""

    # -- failures ---------------------------------------------------------------------------------
    @staticmethod
    def report_early_failure(config: TrainerConfig, reason: str, message: str, exit_code: int) -> None:
        """progress.json (phase failed), the event and the termination message, before any worker started."""
        from finetune_trainer.progress import ProgressReporter

        reporter = ProgressReporter(ObjectStore(config.storage), config.output_uri, metrics_port=None)
        reporter.event(f"Job failed: {message}", reason=reason, warning=True)
        reporter.phase("failed", reason=reason, message=message, exit_code=exit_code)
        write_termination_message(reason=reason, message=message)

    def run(self) -> int:
        """The whole job; returns the process exit code."""
        import torch

        from finetune_trainer.data.chat import ChatTemplateError
        from finetune_trainer.data.formats import DatasetError
        from finetune_trainer.train.errors import Preempted, TrainerFailure

        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM,)}
        try:
            self.setup()
            if self.uploaded_model is not None:
                self.finish_uploaded()
            else:
                self.train()
                self.upload()
            self.succeeded = True
            return int(ExitCode.OK)
        except Preempted:
            return self._preempted()
        except DatasetError as e:
            return self._fail("InvalidDataset", str(e), ExitCode.BAD_INPUT)
        except ChatTemplateError as e:
            return self._fail("ImpossibleConfig", str(e), ExitCode.BAD_INPUT)
        except TrainerFailure as f:
            return self._fail(f.reason, f.message, f.exit_code)
        except torch.OutOfMemoryError:
            return self._fail(
                "OutOfMemory",
                "the GPU ran out of memory: lower batchSize or maxSeqLength, enable gradientCheckpointing, or use qlora",
                ExitCode.RETRYABLE,
            )
        except StorageError as e:
            return self._fail("StorageError", str(e), ExitCode.RETRYABLE)
        except Exception as e:
            from finetune_trainer.train import distributed as dist_

            if self.env.distributed and dist_.is_collective_failure(e):
                self.peer_lost = True  # no orderly teardown of the group: its peer is gone
                seconds = int(dist_.collective_timeout().total_seconds())
                where = f"checkpoint step {self.last_checkpoint_step}" if self.last_checkpoint_step else "the start"
                return self._fail(
                    "CollectiveTimeout",
                    f"another process of this job stopped answering within {seconds} s ({type(e).__name__}: {str(e)[:200]}); "
                    f"a lost or replaced pod cannot rejoin a running job, so every pod restarts and resumes from {where}",
                    ExitCode.RETRYABLE,
                )
            log.exception("training failed")  # a bug: keep the traceback
            return self._fail("InternalError", f"{type(e).__name__}: {e}", ExitCode.RETRYABLE)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.cleanup()

    def _fail(self, reason: str, message: str, exit_code: ExitCode) -> int:
        log.error("%s: %s", reason, message)
        if self.reporter is not None:
            self.reporter.event(f"Job failed: {message}", reason=reason, warning=True)
            self.reporter.phase("failed", reason=reason, message=message, exit_code=int(exit_code))
        elif self.env.is_main:
            self.report_early_failure(self.config, reason, message, int(exit_code))
            return int(exit_code)
        if self.env.local_rank == 0:
            write_termination_message(reason=reason, message=message)
        return int(exit_code)

    def _preempted(self) -> int:
        step = self.reporter.progress.step if self.reporter else 0
        where = f"checkpoint step {self.last_checkpoint_step}" if self.last_checkpoint_step else "the start"
        message = f"preempted at step {step}; the next attempt resumes from {where}"
        log.warning("%s", message)
        if self.reporter is not None:
            self.reporter.event(f"Job preempted at step {step}", reason="Preempted", warning=True)
            self.reporter.update(message=message, exit_code=int(ExitCode.PREEMPTED))
            self.reporter.write()
        if self.env.local_rank == 0:
            write_termination_message(reason="Preempted", message=message)
        return int(ExitCode.PREEMPTED)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        from finetune_trainer.train.errors import Preempted

        self.stop_requested = True
        if not self.in_training_loop:
            raise Preempted()

    # -- setup ------------------------------------------------------------------------------------
    def _work_dir(self) -> tuple[Path, bool]:
        """A node-local scratch folder, the same for every process of the job on this node."""
        if os.environ.get(WORK_DIR_ENV):
            return Path(os.environ[WORK_DIR_ENV]), False
        import hashlib

        key = hashlib.sha256(self.config.output_uri.encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"finetune-{key}", True

    def setup(self) -> None:
        import torch

        from finetune_trainer.progress import ProgressReporter
        from finetune_trainer.train import checkpointing as ckpt
        from finetune_trainer.train import distributed as dist_
        from finetune_trainer.train.methods import plan_device

        config, hp, env = self.config, self.hp, self.env
        self.plan = plan_device(config, env.local_rank)  # bad-input checks first, before any download
        self.device = self.plan.device
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        dist_.init_process_group(env, self.device)
        self.reporter = ProgressReporter(
            self.store,
            config.output_uri,
            interval_seconds=config.progress_interval_seconds,
            metrics_port=config.metrics_port,
            enabled=env.is_main,
            total_epochs=hp.epochs,
        )
        if env.is_main:
            self.reporter.resume_from(self.store.read_json(join_uri(config.output_uri, "progress.json")))
            self.reporter.update(reason=None, message=None, exit_code=None)
        self.reporter.start()
        # An earlier attempt trained and uploaded the model (and died after, e.g. merging): nothing to train again.
        uploaded = self.store.read_manifest(join_uri(config.output_uri, MODEL_DIR)) if env.is_main else None
        self.uploaded_model = dist_.all_gather_objects(uploaded)[0]
        if self.uploaded_model is not None:
            return
        self.reporter.event("Fine-tuning job started", reason="JobStarted")
        self.reporter.phase("downloading")
        if config.merge and config.method == "full":
            self.reporter.event("merge is ignored for full fine-tuning: the output is already a full model", warning=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)

        # Resume: the newest complete checkpoint of this same job wins over fromCheckpoint.
        self.resume_folder: Path | None = None
        self.init_weights_folder: Path | None = None
        checkpoints = ckpt.complete_checkpoints(self.store, config.output_uri) if env.is_main else []
        self.reporter.keep_checkpoints(checkpoints)  # what the store holds is the truth, not the last progress.json
        newest = dist_.all_gather_objects(checkpoints[-1] if checkpoints else None)[0]
        if newest is not None:
            step, uri = newest
            self.resume_folder = self._fetch(uri, f"resume-step-{step}")
            self.last_checkpoint_step = step
            self.reporter.event(f"Resuming from checkpoint at step {step}", reason="Resuming")
        elif config.from_checkpoint:
            self.reporter.event(f"Continuing from {config.from_checkpoint}", reason="FromCheckpoint")
            self.init_weights_folder = ckpt.weights_folder(self._fetch(config.from_checkpoint, "from-checkpoint"))
            ckpt.check_continuation(self.init_weights_folder, config.method)
        if self.resume_folder is not None:
            self.init_weights_folder = ckpt.weights_folder(self.resume_folder)

        self.reporter.event("Downloading base model", reason="DownloadingBaseModel")
        self.base_folder = self._fetch(config.base_model, "base-model", token_file=config.base_model_token_file)

        self._setup_data()
        self._setup_model()
        if self.dpo:
            self._setup_reference()
        self._setup_optimizer()
        if self.resume_folder is not None:
            self._load_training_state(self.resume_folder)
        dist_.training()  # set up: from here a process that stops answering fails the others soon

    def _fetch(self, uri: str, name: str, token_file: str | None = None) -> Path:
        """A model/checkpoint folder, downloaded once per node (local rank 0) when remote."""
        from finetune_trainer.train import distributed as dist_
        from finetune_trainer.train.methods import fetch_model_folder

        dest = self.work_dir / name
        remote = is_s3(uri) or uri.startswith("hf://")
        if not remote:
            return fetch_model_folder(uri, self.store, dest, token_file)
        result: Path | None = None
        error: Exception | None = None
        if self.env.local_rank == 0:
            if dest.exists():
                shutil.rmtree(dest)
            try:
                result = fetch_model_folder(uri, self.store, dest, token_file)
            except Exception as e:  # re-raised below, after the other processes were told
                error = e
        failed = dist_.any_process(error is not None, self.device)
        if error is not None:
            raise error
        if failed:
            from finetune_trainer.train.errors import TrainerFailure

            raise TrainerFailure("StorageError", f"another process could not download {uri}")
        return result or dest  # the other processes of the node use local rank 0's download

    def _fetch_data_file(self, uri: str, index: int, kind: str) -> Path:
        if not is_s3(uri):
            path = Path(uri[len("file://") :] if uri.startswith("file://") else uri)
            if not path.is_file():
                from finetune_trainer.train.errors import bad_input

                raise bad_input("InvalidDataset", f"{uri}: no such file")
            return path
        dest = self.work_dir / "data" / kind / f"{index}-{Path(uri).name}"
        if not dest.exists():
            tmp = dest.with_name(dest.name + f".part{self.env.rank}")
            try:
                self.store.download_file(uri, tmp)
            except StorageError as e:
                if "NoSuch" in str(e):
                    from finetune_trainer.train.errors import bad_input

                    raise bad_input("InvalidDataset", f"{uri}: no such object") from None
                raise
            os.replace(tmp, dest)
        return dest

    def _setup_data(self) -> None:
        from finetune_trainer.data.loader import ExampleTokenizer, load_examples, split_validation
        from finetune_trainer.train.errors import bad_input
        from finetune_trainer.train.methods import load_tokenizer

        config, hp, env = self.config, self.hp, self.env
        self.tokenizer = load_tokenizer(self.base_folder)
        if self.dpo:
            from finetune_trainer.data.preference import PairTokenizer, load_pairs
            from finetune_trainer.train.attention import PACKED_SDPA
            from finetune_trainer.train.methods import attention_implementation

            # A pair's conversation runs once for both answers where the attention knows branches (CPU).
            share = attention_implementation(self.plan) == PACKED_SDPA
            tokenize = PairTokenizer(self.tokenizer, hp.max_seq_length, config.chat_template, share_prompt=share)
            load, unit = load_pairs, "preference pairs"
        else:
            tokenize = ExampleTokenizer(self.tokenizer, hp.train_on_inputs, hp.max_seq_length, config.chat_template)
            load, unit = load_examples, "examples"
        train_files = [(self._fetch_data_file(u, i, "train"), u) for i, u in enumerate(config.train_data)]
        train, stats = load(train_files, tokenize)
        val: list = []
        if config.validation_data:
            val_files = [(self._fetch_data_file(u, i, "validation"), u) for i, u in enumerate(config.validation_data)]
            val, _val_stats = load(val_files, tokenize)
        elif config.validation_split > 0:
            train, val = split_validation(train, config.validation_split, hp.seed)
        if not train:
            raise bad_input(
                "InvalidDataset",
                f"no training example has a token to train on ({stats.dropped} dropped); check trainOnInputs and maxSeqLength",
            )
        self.data_stats = stats
        self.reporter.event(
            f"Loaded {len(train)} training and {len(val)} validation {unit} ({stats.tokens} tokens)", reason="DataLoaded"
        )
        if stats.truncated:
            self.reporter.event(
                f"{stats.truncated} example(s) longer than maxSeqLength ({hp.max_seq_length} tokens) were truncated",
                reason="ExamplesTruncated",
                warning=True,
            )
        if stats.dropped:
            self.reporter.event(
                f"{stats.dropped} {unit if self.dpo else 'example(s)'} had no token to train on after truncation and were dropped",
                reason="ExamplesDropped",
                warning=True,
            )
        if hp.n_evals and not val:
            self.reporter.event("nEvals is set but there is no validation data: no validation loss", warning=True)
        self.train_examples, self.val_examples = train, val
        self.pad_token_id = int(self.tokenizer.pad_token_id)
        self._batch_plan_args = dict(
            max_seq_length=hp.max_seq_length,
            packing=hp.packing,
            seed=hp.seed,
            pad_token_id=self.pad_token_id,
            world_size=env.world_size,
            rank=env.rank,
        )

    def _setup_model(self) -> None:
        import torch

        from finetune_trainer.data.loader import BatchPlan
        from finetune_trainer.data.preference import PairBatchPlan
        from finetune_trainer.train.dpo import SequenceLogProbs
        from finetune_trainer.train.loss import CausalLMLoss
        from finetune_trainer.train.methods import apply_lora, auto_batch_size, count_parameters, load_causal_lm

        config, hp, env = self.config, self.hp, self.env
        torch.manual_seed(hp.seed)
        random.seed(hp.seed)
        self.fsdp = config.method == "full" and env.distributed
        if self.fsdp:
            # Built on the meta device, sharded, then filled from rank 0's read of the checkpoint: no process
            # ever holds the whole model (train/sharded.py).
            from finetune_trainer.train.sharded import build_sharded_model

            self.lm, self.module = build_sharded_model(self.init_weights_folder or self.base_folder, config, self.plan, env.rank)
        else:
            if config.method == "full":
                self.lm = load_causal_lm(self.init_weights_folder or self.base_folder, config, self.plan)
            else:
                base = load_causal_lm(self.base_folder, config, self.plan)
                self.lm = apply_lora(base, config, self.init_weights_folder)
                if config.method == "lora":
                    self.lm.to(self.device)
                if self.device.type == "cpu":
                    from finetune_trainer.train.dropout import use_fast_lora_dropout

                    use_fast_lora_dropout(self.lm)
            if hp.gradient_checkpointing:
                self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.module = SequenceLogProbs(self.lm) if self.dpo else CausalLMLoss(self.lm)
        trainable, total = count_parameters(self.lm)
        log.info("model: %s parameters, %s trainable (%s)", f"{total:,}", f"{trainable:,}", config.method)
        if self.fsdp:
            self.model = self.module
        elif env.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        else:
            self.model = self.module
        self.batch_size = hp.batch_size if hp.batch_size != "auto" else auto_batch_size(self._causal_lm(), config, self.plan)
        if self.dpo and hp.batch_size == "auto":
            self.batch_size = max(1, self.batch_size // 2)  # a row of pairs holds up to 2 x maxSeqLength tokens
        plan_class = PairBatchPlan if self.dpo else BatchPlan
        self.train_plan = plan_class(self.train_examples, self.batch_size, **self._batch_plan_args)
        self.val_plan = (
            plan_class(self.val_examples, self.batch_size, shuffle=False, **self._batch_plan_args) if self.val_examples else None
        )
        self.batches_per_epoch = self.train_plan.batches_per_epoch()
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / hp.gradient_accumulation_steps)
        self.total_steps = self.steps_per_epoch * hp.epochs
        if hp.max_steps:
            self.total_steps = min(self.total_steps, hp.max_steps)
        torch.manual_seed(hp.seed + env.rank)  # dropout masks differ across processes, as they should

    def _causal_lm(self) -> Any:
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def _setup_reference(self) -> None:
        """DPO's reference log-probabilities: from the checkpoint a resumed run continues (the model has moved
        on since), else computed now, from the model as the job starts (``train/dpo.py``)."""
        import torch

        from finetune_trainer.train.errors import TrainerFailure

        if self.resume_folder is not None:
            from finetune_trainer.train import checkpointing as ckpt

            self.reference = torch.load(self.resume_folder / ckpt.REFERENCE_FILE, weights_only=True)
            expected = {"train": len(self.train_examples), "validation": len(self.val_examples)}
            if {k: len(v) for k, v in self.reference.items()} != expected:
                raise TrainerFailure("ImpossibleConfig", "the checkpoint's reference log-probabilities are of other data than this job's")
            return
        self.reference = {"train": self._reference_log_probs(self.train_plan), "validation": self._reference_log_probs(self.val_plan)}
        pairs = len(self.train_examples) + len(self.val_examples)
        self.reporter.event(f"Reference log-probabilities of {pairs} preference pairs computed (the model as the job starts)", reason="ReferenceComputed")

    def _reference_log_probs(self, plan: Any) -> Any:
        """``[pairs, 2]`` log-probabilities (preferred, non-preferred) of every pair of ``plan`` under the model as
        it is, without dropout, shared by every process (each computes a share; FSDP: the same number of forwards)."""
        import torch

        from finetune_trainer.train import distributed as dist_

        if plan is None:
            return torch.zeros(0, 2, dtype=torch.float32)
        sums = torch.zeros(len(plan.examples), 2, dtype=torch.float64, device=self.device)
        counts = torch.zeros(len(plan.examples), 1, dtype=torch.float64, device=self.device)
        batches = plan.global_batches(0)
        rounds = math.ceil(len(batches) / self.env.world_size)
        self.model.eval()
        with torch.no_grad(), self._autocast():
            for r in range(rounds):
                index = r * self.env.world_size + self.env.rank
                batch = plan.collate(batches[index if index < len(batches) else 0]).to(self.device)
                log_probs = self.model(batch.input_ids, batch.position_ids, batch.targets, batch.sequence_ids, 2 * batch.num_pairs)
                if index < len(batches):
                    pairs = torch.tensor(batch.pairs, device=self.device)
                    sums.index_add_(0, pairs, log_probs.double().view(-1, 2))
                    counts.index_add_(0, pairs, torch.ones(len(batch.pairs), 1, dtype=torch.float64, device=self.device))
        self.model.train()
        dist_.all_reduce_tensor(sums)
        dist_.all_reduce_tensor(counts)
        return (sums / counts.clamp(min=1)).float().cpu()

    def _setup_optimizer(self) -> None:
        import torch
        from transformers import get_scheduler

        from finetune_trainer.train.methods import grad_scaler

        hp = self.hp
        params = [p for p in self.module.parameters() if p.requires_grad]
        lr = hp.effective_learning_rate(self.config.method)
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=hp.weight_decay, fused=fused or None)
        warmup = math.ceil(self.total_steps * hp.warmup_ratio)
        name = {"constant": "constant_with_warmup"}.get(hp.lr_scheduler, hp.lr_scheduler)
        self.scheduler = get_scheduler(name, self.optimizer, num_warmup_steps=warmup, num_training_steps=self.total_steps)
        self.scaler = grad_scaler(self.plan.precision, self.fsdp, self.device)
        self.step = 0
        self.start_epoch = 0
        self.start_group = 0
        self.trained_tokens = 0

    def _load_training_state(self, folder: Path) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        from finetune_trainer.train import checkpointing as ckpt

        state = ckpt.TrainerState.load(folder)
        optim_state = ckpt.load_state_file(folder / ckpt.OPTIMIZER_FILE)
        set_optimizer_state_dict(
            self.module, self.optimizer, optim_state, options=StateDictOptions(full_state_dict=True)
        )
        self.scheduler.load_state_dict(ckpt.load_state_file(folder / ckpt.SCHEDULER_FILE))
        rng = ckpt.load_state_file(folder / ckpt.RNG_FILE)
        if len(rng) == self.env.world_size:
            ckpt.restore_rng(rng[self.env.rank])
        self.step = state.step
        self.trained_tokens = state.trained_tokens
        same_plan = (
            state.batches_per_epoch == self.batches_per_epoch
            and state.gradient_accumulation_steps == self.hp.gradient_accumulation_steps
            and state.world_size == self.env.world_size
        )
        if same_plan:
            self.start_epoch = state.epoch
            self.start_group = state.batch_in_epoch // self.hp.gradient_accumulation_steps
        else:
            self.reporter.event(
                "the batch layout changed since the checkpoint (batch size, processes or accumulation): "
                "continuing from its step with the new layout",
                warning=True,
            )
            self.start_epoch = self.step // self.steps_per_epoch
            self.start_group = self.step % self.steps_per_epoch

    # -- training ---------------------------------------------------------------------------------
    def train(self) -> None:
        from finetune_trainer.progress import Throughput
        from finetune_trainer.train import distributed as dist_
        from finetune_trainer.train.errors import Preempted

        hp, env, reporter = self.hp, self.env, self.reporter
        accumulation = hp.gradient_accumulation_steps
        checkpoint_steps = set(evenly_spaced_steps(self.total_steps, hp.n_checkpoints))
        eval_steps = set(evenly_spaced_steps(self.total_steps, hp.n_evals)) if self.val_plan else set()
        autocast = self._autocast()
        throughput = Throughput()
        padding = real = 0
        step_started = time.monotonic()
        step_times: list[float] = []

        reporter.phase("training", step=self.step, total_steps=self.total_steps, epoch=self.step / self.steps_per_epoch, trained_tokens=self.trained_tokens)
        reporter.event("Training started", reason="TrainingStarted")
        log.info("training from step %d of %d (%d per epoch), batch size %d, %s, %d process(es)", self.step, self.total_steps,
                 self.steps_per_epoch, self.batch_size, "packed" if hp.packing else "length-grouped", env.world_size)  # fmt: skip
        reporter.start_bar(self.total_steps, self.step)
        self.in_training_loop = True
        if self.stop_requested:
            raise Preempted()
        self.model.train()
        throughput.add(0)
        for epoch in range(self.start_epoch, hp.epochs):
            batches = self.train_plan.local_batches(epoch)
            groups = [batches[i : i + accumulation] for i in range(0, len(batches), accumulation)]
            first = self.start_group if epoch == self.start_epoch else 0
            for group_index in range(first, len(groups)):
                if self.step >= self.total_steps:
                    break
                collated = [self.train_plan.collate(b) for b in groups[group_index]]
                local_units = sum(b.loss_units for b in collated)  # what the loss is a mean over: label tokens, or pairs
                local_tokens = sum(b.num_tokens for b in collated)
                local_padding = sum(b.num_padding for b in collated)
                global_units, global_tokens, global_padding = dist_.all_reduce_sum(
                    [local_units, local_tokens, local_padding], self.device
                )
                if self.dpo:
                    sums = self._preference_step(collated, global_units, autocast)
                else:
                    sums = [self._optimizer_step(collated, global_units, autocast)]
                self.step += 1
                totals = dist_.all_reduce_sum(sums, self.device)
                train_loss = totals[0] / global_units
                self.trained_tokens += int(global_tokens)
                real += int(global_tokens)
                padding += int(global_padding)
                throughput.add(int(global_tokens))
                now = time.monotonic()
                step_times.append(now - step_started)
                step_started = now
                recent = step_times[-20:]
                reporter.update(
                    step=self.step,
                    epoch=round(epoch + (group_index + 1) / len(groups), 4),
                    train_loss=round(train_loss, 6),
                    tokens_per_second=_round(throughput.rate()),
                    trained_tokens=self.trained_tokens,
                    padding_fraction=round(padding / max(1, padding + real), 6),
                    eta_seconds=round(sum(recent) / len(recent) * (self.total_steps - self.step), 1),
                    **({"reward_accuracy": round(totals[1] / global_units, 6), "reward_margin": round(totals[2] / global_units, 6)} if self.dpo else {}),
                )
                self._after_step(train_loss, epoch, group_index, len(groups), eval_steps, checkpoint_steps)
                step_started = time.monotonic()
            if self.step >= self.total_steps:
                break
        self.in_training_loop = False
        self._check_replicas_agree()
        self.padding_fraction = padding / max(1, padding + real)
        reporter.event(
            f"Training completed at step {self.step}: {self.trained_tokens} tokens trained, "
            f"padding {self.padding_fraction:.1%} of tokens processed",
            reason="TrainingCompleted",
        )

    def _gradient_sync(self, last: bool) -> Any:
        """The context a micro-batch's backward runs in: DDP and FSDP reduce gradients across processes on the
        last micro-batch of an accumulation group only."""
        if self.fsdp:
            self.model.set_requires_gradient_sync(last)
        return contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()

    def _optimizer_step(self, collated: list[Any], global_labels: int, autocast: Any) -> float:
        """Forward and backward over one accumulation group, then one optimizer step: the gradient is of the
        mean loss over every label token of the step on every process. Returns this process's summed loss."""
        import torch

        loss_sum = torch.zeros((), dtype=torch.float64)
        for i, batch in enumerate(collated):
            batch = batch.to(self.device)
            with self._gradient_sync(last=i == len(collated) - 1):
                with autocast:
                    token_loss = self.model(batch.input_ids, batch.position_ids, batch.targets)
                # DDP/FSDP average over processes, hence the world size.
                scaled = token_loss * (self.env.world_size / global_labels)
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss_sum += token_loss.detach().double().cpu()
        self._apply_gradients()
        return float(loss_sum)

    def _preference_step(self, collated: list[Any], global_pairs: int, autocast: Any) -> list[float]:
        """Forward and backward over one accumulation group of preference pairs, then one optimizer step: the
        gradient is of the mean DPO loss over every pair of the step on every process. Returns this process's
        sums of the loss, of pairs ranked right (preferred reward above the other) and of reward margins."""
        import torch

        from finetune_trainer.train.dpo import preference_loss

        sums = torch.zeros(3, dtype=torch.float64)
        for i, batch in enumerate(collated):
            reference = self.reference["train"][batch.pairs].flatten().to(self.device)
            batch = batch.to(self.device)
            with self._gradient_sync(last=i == len(collated) - 1):
                with autocast:
                    policy = self.model(batch.input_ids, batch.position_ids, batch.targets, batch.sequence_ids, 2 * batch.num_pairs)
                losses, preferred, rejected = preference_loss(policy, reference, batch.answer_tokens, self.config.dpo)
                scaled = losses.sum() * (self.env.world_size / global_pairs)  # DDP/FSDP average over processes
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            margins = (preferred - rejected).double()
            sums += torch.stack([losses.detach().double().sum(), (margins > 0).double().sum(), margins.sum()]).cpu()
        self._apply_gradients()
        return sums.tolist()

    def _apply_gradients(self) -> None:
        """Unscale (fp16), clip, step the optimizer and the schedule, clear the gradients."""
        import torch

        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.hp.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.module.parameters() if p.requires_grad], self.hp.max_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _after_step(self, train_loss: float, epoch: int, group_index: int, groups: int, eval_steps: set[int], checkpoint_steps: set[int]) -> None:
        """What follows a step: stop on a diverged loss, hold (tests), evaluate, checkpoint, or stop when asked."""
        from finetune_trainer.train import distributed as dist_
        from finetune_trainer.train.errors import Preempted, TrainerFailure

        if not math.isfinite(train_loss):
            raise TrainerFailure("TrainingDiverged", f"the training loss is {train_loss} at step {self.step}; lower learningRate")
        if self.step == self.hold_at_step:
            self._hold()
        if group_index == groups - 1:
            self.reporter.event(f"Epoch {epoch + 1} completed at step {self.step}", reason="EpochCompleted")
        if self.step in eval_steps:
            self.evaluate()
        if dist_.any_process(self.stop_requested, self.device):
            if self.config.method != "full":  # an adapter checkpoint is cheap; a full one may not fit the grace period
                self.save_checkpoint(epoch, group_index + 1)
            raise Preempted()
        if self.step in checkpoint_steps:
            self.save_checkpoint(epoch, group_index + 1)

    @property
    def hold_at_step(self) -> int | None:
        value = os.environ.get(HOLD_AT_STEP_ENV, "").strip()
        return int(value) if value.isdigit() else None

    def _hold(self) -> None:
        """Write the progress of this step and wait for SIGTERM (see ``HOLD_AT_STEP_ENV``)."""
        self.reporter.event(f"Holding at step {self.step} until stopped ({HOLD_AT_STEP_ENV})", reason="Holding")
        self.reporter.write()
        while not self.stop_requested:
            time.sleep(0.02)

    def _autocast(self) -> Any:
        import torch

        dtype = self.plan.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def evaluate(self) -> float | None:
        """Mean validation loss over every label token of the validation data, on all processes."""
        import torch

        from finetune_trainer.train import distributed as dist_

        if self.val_plan is None:
            return None
        if self.dpo:
            return self._evaluate_preferences()
        self.reporter.phase("evaluating")
        self.model.eval()
        batches = self.val_plan.global_batches(0)[: math.ceil(len(self.val_plan.rows) / self.batch_size)]
        rounds = math.ceil(len(batches) / self.env.world_size)
        loss_sum = labels = 0.0
        with torch.no_grad(), self._autocast():
            for r in range(rounds):
                index = r * self.env.world_size + self.env.rank
                real = index < len(batches)  # every process runs the same number of forwards (FSDP gathers)
                batch = self.val_plan.collate(batches[index if real else 0]).to(self.device)
                loss = self.model(batch.input_ids, batch.position_ids, batch.targets)
                if real:
                    loss_sum += float(loss)
                    labels += batch.num_label_tokens
        loss_sum, labels = dist_.all_reduce_sum([loss_sum, labels], self.device)
        self.model.train()
        eval_loss = loss_sum / max(1.0, labels)
        self.reporter.update(eval_loss=round(eval_loss, 6))
        self.reporter.event(f"Validation loss {eval_loss:.3f} at step {self.step}", reason="Evaluated")
        self.reporter.phase("training")
        return eval_loss

    def _evaluate_preferences(self) -> float:
        """DPO loss, reward accuracy and reward margin over every validation pair, on all processes."""
        import torch

        from finetune_trainer.train import distributed as dist_
        from finetune_trainer.train.dpo import preference_loss

        self.reporter.phase("evaluating")
        self.model.eval()
        batches = self.val_plan.global_batches(0)[: math.ceil(len(self.val_plan.rows) / self.batch_size)]
        rounds = math.ceil(len(batches) / self.env.world_size)
        sums = [0.0, 0.0, 0.0, 0.0]  # loss, ranked right, margin, pairs
        with torch.no_grad(), self._autocast():
            for r in range(rounds):
                index = r * self.env.world_size + self.env.rank
                real = index < len(batches)  # every process runs the same number of forwards (FSDP gathers)
                batch = self.val_plan.collate(batches[index if real else 0])
                reference = self.reference["validation"][batch.pairs].flatten().to(self.device)
                batch = batch.to(self.device)
                policy = self.model(batch.input_ids, batch.position_ids, batch.targets, batch.sequence_ids, 2 * batch.num_pairs)
                losses, preferred, rejected = preference_loss(policy.float(), reference, batch.answer_tokens, self.config.dpo)
                if real:
                    margins = preferred - rejected
                    sums = [a + float(b) for a, b in zip(sums, (losses.sum(), (margins > 0).sum(), margins.sum(), batch.num_pairs))]
        loss, right, margin, pairs = dist_.all_reduce_sum(sums, self.device)
        self.model.train()
        pairs = max(1.0, pairs)
        eval_loss, accuracy, mean_margin = loss / pairs, right / pairs, margin / pairs
        self.reporter.update(eval_loss=round(eval_loss, 6), eval_reward_accuracy=round(accuracy, 6), eval_reward_margin=round(mean_margin, 6))
        self.reporter.event(
            f"Validation DPO loss {eval_loss:.3f}, reward accuracy {accuracy:.3f}, reward margin {mean_margin:.3f} at step {self.step}",
            reason="Evaluated",
        )
        self.reporter.phase("training")
        return eval_loss

    def _check_replicas_agree(self) -> None:
        """With DDP every process must end with the same weights; a mismatch is a bug, not a result."""
        import torch

        from finetune_trainer.train import distributed as dist_

        if not self.env.distributed or self.fsdp:
            return
        with torch.no_grad():
            checksum = sum(float(p.detach().double().abs().sum()) for p in self.module.parameters() if p.requires_grad)
        sums = dist_.all_gather_objects(checksum)
        spread = max(sums) - min(sums)
        if spread > 1e-6 * max(1.0, abs(sums[0])):
            raise RuntimeError(f"processes disagree on the trained weights (checksums {sums})")
        self.reporter.event(f"Trainable weights agree across {len(sums)} processes (checksum {sums[0]:.6f})", reason="ReplicasInSync")

    # -- checkpoints ------------------------------------------------------------------------------
    def _full_state_dict(self) -> dict[str, Any]:
        """The model's full state dict on rank 0 (gathered from the shards with FSDP), keys as the base model's."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k.removeprefix("lm."): v for k, v in state.items()}

    def _save_weights(self, folder: Path) -> None:
        """Adapter (PEFT layout) or full model (safetensors) into ``folder``; collective under FSDP."""
        if self.config.method == "full":
            state = self._full_state_dict()
            if self.env.is_main:
                self.lm.save_pretrained(folder, state_dict=state, safe_serialization=True)
        elif self.env.is_main:
            self.lm.save_pretrained(folder, safe_serialization=True)
            _point_adapter_at(folder, self.config.base_model)

    def save_checkpoint(self, epoch: int, groups_done: int) -> None:
        from finetune_trainer.train import distributed as dist_

        with dist_.waiting_for_io():  # the others wait while rank 0 uploads
            self._save_checkpoint(epoch, groups_done)

    def _save_checkpoint(self, epoch: int, groups_done: int) -> None:
        import torch
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        from finetune_trainer.train import checkpointing as ckpt
        from finetune_trainer.train import distributed as dist_

        step = self.step
        folder = self.work_dir / "checkpoints" / f"step-{step}"
        if self.env.is_main:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        subdir = ckpt.MODEL_SUBDIR if self.config.method == "full" else ckpt.ADAPTER_SUBDIR
        self._save_weights(folder / subdir)
        optim_state = get_optimizer_state_dict(
            self.module, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        rng_states = dist_.all_gather_objects(ckpt.capture_rng())
        if self.env.is_main:
            torch.save(optim_state, folder / ckpt.OPTIMIZER_FILE)
            torch.save(self.scheduler.state_dict(), folder / ckpt.SCHEDULER_FILE)
            torch.save(rng_states, folder / ckpt.RNG_FILE)
            if self.dpo:
                torch.save(self.reference, folder / ckpt.REFERENCE_FILE)
            if groups_done * self.hp.gradient_accumulation_steps >= self.batches_per_epoch:
                epoch, groups_done = epoch + 1, 0
            ckpt.TrainerState(
                step=step,
                epoch=epoch,
                batch_in_epoch=groups_done * self.hp.gradient_accumulation_steps,
                total_steps=self.total_steps,
                batches_per_epoch=self.batches_per_epoch,
                gradient_accumulation_steps=self.hp.gradient_accumulation_steps,
                world_size=self.env.world_size,
                trained_tokens=self.trained_tokens,
                method=self.config.method,
            ).save(folder)
            uri = join_uri(self.config.output_uri, checkpoint_dir(step))
            self.store.upload_artifact(folder, uri, kind="checkpoint", base_model=self.config.base_model, step=step)
            shutil.rmtree(folder, ignore_errors=True)
            self.reporter.add_checkpoint(step, uri)
            self.reporter.event(f"Checkpoint saved at step {step}", reason="CheckpointSaved")
        self.last_checkpoint_step = step
        dist_.barrier()

    # -- output -----------------------------------------------------------------------------------
    def upload(self) -> None:
        from finetune_trainer.train import distributed as dist_

        config, reporter = self.config, self.reporter
        out = self.work_dir / "output"
        model_folder = out / MODEL_DIR
        if self.env.is_main:
            shutil.rmtree(out, ignore_errors=True)
            model_folder.mkdir(parents=True)
        with dist_.waiting_for_io():  # the others wait while rank 0 writes the model
            self._save_weights(model_folder)
            dist_.barrier()
        if not self.env.is_main:
            return
        reporter.phase("uploading")
        reporter.event("Uploading output model", reason="Uploading")
        self.tokenizer.save_pretrained(model_folder)
        lora = config.method != "full"
        model_uri = join_uri(config.output_uri, MODEL_DIR)
        metadata = dict(
            base_model=config.base_model,
            step=self.step,
            method=config.method,
            objective=config.objective,
            output_model_name=config.output_model_name,
            world_size=self.env.world_size,
            train_loss=self.reporter.progress.train_loss,
            eval_loss=self.reporter.progress.eval_loss,
        )
        self.store.upload_artifact(model_folder, model_uri, kind="adapter" if lora else "model", **metadata)
        merged_uri = None
        if lora and config.merge:
            merged_folder = out / MERGED_DIR
            self._write_merged_model(self.base_folder, model_folder, merged_folder)
            merged_uri = join_uri(config.output_uri, MERGED_DIR)
            self.store.upload_artifact(merged_folder, merged_uri, kind="merged-model", **metadata)
        reporter.event("Model upload complete", reason="UploadComplete")
        reporter.event("Fine-tuning job completed", reason="JobCompleted")
        reporter.phase(
            "done",
            model_uri=model_uri,
            adapter_uri=model_uri if lora else None,
            merged_model_uri=merged_uri,
            padding_fraction=round(self.padding_fraction, 6),
            eta_seconds=0.0,
        )

    def finish_uploaded(self) -> None:
        """A retry after the model was uploaded: merge if that is all that is missing, then report done."""
        from finetune_trainer.train.methods import fetch_model_folder

        if not self.env.is_main:
            return
        config, reporter, manifest = self.config, self.reporter, self.uploaded_model
        model_uri = join_uri(config.output_uri, MODEL_DIR)
        lora = manifest.kind == "adapter"
        merged_uri = join_uri(config.output_uri, MERGED_DIR) if lora and config.merge else None
        if merged_uri is not None and self.store.read_manifest(merged_uri) is None:
            reporter.event("The adapter was uploaded by an earlier attempt: merging it, without training again", reason="AlreadyUploaded")
            reporter.phase("uploading")
            base = fetch_model_folder(config.base_model, self.store, self.work_dir / "base-model", config.base_model_token_file)
            adapter = fetch_model_folder(model_uri, self.store, self.work_dir / "uploaded-adapter")
            merged_folder = self.work_dir / "output" / MERGED_DIR
            shutil.rmtree(merged_folder, ignore_errors=True)
            self._write_merged_model(base, adapter, merged_folder)
            metadata = {"base_model": manifest.base_model, "step": manifest.step, **manifest.metadata}
            self.store.upload_artifact(merged_folder, merged_uri, kind="merged-model", **metadata)
            reporter.event("Model upload complete", reason="UploadComplete")
        else:
            reporter.event("The model was uploaded by an earlier attempt: nothing to redo", reason="AlreadyUploaded")
        reporter.event("Fine-tuning job completed", reason="JobCompleted")
        reporter.phase("done", model_uri=model_uri, adapter_uri=model_uri if lora else None, merged_model_uri=merged_uri, eta_seconds=0.0)

    def _write_merged_model(self, base_folder: Path, adapter_folder: Path, merged_folder: Path) -> None:
        """The adapter merged into the base model's weights, file by file (``train/merge.py``): no copy of
        the whole model in memory, in fp32 or otherwise. For QLoRA too: the base files are unquantized."""
        from finetune_trainer.train.merge import MergeError, merge_adapter, weight_files
        from finetune_trainer.train.methods import load_tokenizer

        try:
            weight_files(base_folder)
        except MergeError:
            self._merge_in_memory(base_folder, adapter_folder, merged_folder)
        else:
            try:
                merge_adapter(base_folder, adapter_folder, merged_folder)
            except MergeError as e:
                from finetune_trainer.train.errors import bad_input

                raise bad_input("ImpossibleConfig", f"output.merge: {e}") from None
        load_tokenizer(adapter_folder).save_pretrained(merged_folder)

    @staticmethod
    def _merge_in_memory(base_folder: Path, adapter_folder: Path, merged_folder: Path) -> None:
        """A base model without safetensors files (``.bin`` only): loaded whole, in its own dtype, not fp32."""
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(base_folder, dtype="auto")
        PeftModel.from_pretrained(base, adapter_folder).merge_and_unload().save_pretrained(merged_folder, safe_serialization=True)

    def cleanup(self) -> None:
        from finetune_trainer.train import distributed as dist_

        if self.reporter is not None:
            self.reporter.close()
        if not self.peer_lost:
            dist_.destroy_process_group(together=self.succeeded)
        if self.own_work_dir and self.env.local_rank == 0:
            # Staging folders go always; downloads (base model, data, checkpoint) stay for a retry, until done.
            for sub in ("output", "checkpoints") if not self.succeeded else ("",):
                shutil.rmtree(self.work_dir / sub, ignore_errors=True)


def _point_adapter_at(folder: Path, base_model: str) -> None:
    """Set ``base_model_name_or_path`` to the base model's URI (PEFT writes the local download folder)."""
    path = folder / "adapter_config.json"
    data = json.loads(path.read_text())
    data["base_model_name_or_path"] = base_model
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
