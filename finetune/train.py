"""QLoRA SFT wiring: dataset contract checks, the 4-bit base from the model core, LoRA, TRL's SFTTrainer with the
project's answer-only collator, and the outputs (adapter, processor with the project template, model card).

Everything that can be wrong with the inputs (dataset, splits, device options, checkpoint to resume) is checked
before any model is loaded, so a mistake costs seconds, not a 7B load. The command line is `finetune/__main__.py`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from datasets import Dataset
from trl import SFTTrainer

from cxr_vqa.contract import check_split, open_splits
from cxr_vqa.errors import UserError
from cxr_vqa.files import share
from cxr_vqa.model import load_base_model, load_processor
from cxr_vqa.sources import Source, resolve
from finetune.collator import IGNORE_INDEX, AnswerOnlyCollator
from finetune.config import ScriptArguments, TrainConfig, check_device, resolve_checkpoint
from finetune.examples import FindingsAlone, RowsCollator
from finetune.film_cache import FilmCacheCollator, answer_loss, average_gradients, check_frozen_tower, feature_bytes
from finetune.model_card import write_model_card
from finetune.progress import ProgressFile

logger = logging.getLogger(__name__)


def load_splits(script_args: ScriptArguments, train_args: TrainConfig):
    """(train, eval or None, stats) from the dataprep DatasetDict, after checking the contract on each used split."""
    splits = open_splits(script_args.dataset)
    train_ds = check_split(splits, script_args.dataset, script_args.train_split, "train")
    eval_ds = None
    if train_args.eval_strategy != "no":
        if not script_args.eval_split:
            raise UserError("eval_strategy is set but eval_split is empty: name a split or set eval_strategy: no")
        eval_ds = check_split(splits, script_args.dataset, script_args.eval_split, "eval")
    stats = dataset_stats(splits)
    try:  # dataprep's stats.json says whether the release was a synthetic one
        stats["synthetic"] = bool(json.loads((Path(script_args.dataset) / "stats.json").read_text())["synthetic"])
    except (OSError, ValueError, KeyError):
        stats["synthetic"] = False
    return train_ds, eval_ds, stats


def dataset_stats(data) -> dict:
    """Rows and QA pairs per split, and rows per source, read from the Arrow columns without decoding images."""
    import pyarrow.compute as pc

    stats: dict = {"rows": {}, "qa_pairs": {}, "sources": {}}
    for name, split in data.items():
        stats["rows"][name] = len(split)
        if "qa" in split.column_names:  # unused splits are not checked, so a column may be missing there
            stats["qa_pairs"][name] = int(pc.sum(pc.list_value_length(split.data.column("qa"))).as_py() or 0)
        if "source" in split.column_names:
            for item in pc.value_counts(split.data.column("source")).to_pylist():
                stats["sources"][item["values"]] = stats["sources"].get(item["values"], 0) + item["counts"]
    return stats


def build_model(script_args: ScriptArguments, train_args: TrainConfig, base: Source | None = None):
    """The base model (4-bit through the model core) ready for k-bit training, and its processor; `base` is the
    checked source of script_args.model_name_or_path, when the caller has it already."""
    from peft import prepare_model_for_kbit_training

    cuda = torch.cuda.is_available() and not train_args.use_cpu
    # Under DDP each process holds its own copy on its own GPU: train_args.device is cuda:<local rank>.
    device = str(train_args.device) if cuda else "cpu"
    base = base or resolve(script_args.model_name_or_path)
    processor = load_processor(base)
    model = load_base_model(base, load_in_4bit=script_args.load_in_4bit, device=device)
    if script_args.attn_implementation:
        model.set_attn_implementation(script_args.attn_implementation)
    if script_args.load_in_4bit:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=train_args.activation_checkpointing,
            gradient_checkpointing_kwargs=train_args.activation_checkpointing_kwargs,
        )
        if device == "cpu":
            _keep_cpu_4bit_layout(model)
    model.config.use_cache = False  # the KV cache is useless in training and clashes with checkpointing
    return model, processor


def _keep_cpu_4bit_layout(model) -> None:
    """bitsandbytes on CPU repacks 4-bit weights into an inference layout on the first no-grad eval forward and
    unpacks them when a checkpoint is saved; that round trip re-quantizes the absmax and nudges the frozen base
    weights. Training keeps one layout so the base stays bit-identical."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def lora_config(script_args: ScriptArguments):
    from peft import LoraConfig

    return LoraConfig(
        r=script_args.lora_r,
        lora_alpha=script_args.lora_alpha,
        lora_dropout=script_args.lora_dropout,
        target_modules=script_args.lora_target_modules,
        modules_to_save=script_args.lora_modules_to_save,
        task_type="CAUSAL_LM",
    )


def check_lora_targets(script_args: ScriptArguments, config) -> None:
    """LoRA targets and fully trained modules must exist, and the app must be able to serve them: checked on an empty
    (meta-device) copy of the architecture, so no weights are read. The app answers base and fine-tuned rows from one
    PEFT mixed-adapter batch, which supports fully trained modules only when they are Linear/Embedding/Conv layers.
    `config`: the base model's, as `cxr_vqa.model.resolve` read it."""
    from peft.tuners.tuners_utils import check_target_module_exists
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        modules = dict(LlavaForConditionalGeneration(config).named_modules())
    if not any(check_target_module_exists(lora_config(script_args), name) for name in modules):
        raise UserError(
            f"lora_target_modules {script_args.lora_target_modules!r} matches no module of "
            f"{script_args.model_name_or_path} (e.g. model.language_model.layers.0.self_attn.q_proj)"
        )
    servable = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    for wanted in script_args.lora_modules_to_save or []:
        found = {n: m for n, m in modules.items() if n == wanted or n.endswith("." + wanted)}
        if not found:
            raise UserError(f"lora_modules_to_save: no module named {wanted!r} in {script_args.model_name_or_path}")
        for module in found.values():
            if not isinstance(module, servable):
                layers = [f"{wanted}.{n}" for n, m in module.named_modules() if isinstance(m, servable)]
                raise UserError(
                    f"lora_modules_to_save: {wanted} is a {type(module).__name__}, which the app's side-by-side "
                    f"batches cannot serve: list its layers instead ({', '.join(layers) or 'none'})"
                )


class AnswerTokenSFTTrainer(SFTTrainer):
    """TRL's trainer, with eval loss and token accuracy taken over every answer token of the split, the way the
    training loss is taken over every answer token of the global batch.

    Transformers' eval loss is a mean of per-batch means weighted by rows: it moves with the eval batch size, and so
    with the number of processes, and under DDP it counts the rows repeated to even out the shards. Per-row sums
    gathered with `gather_for_metrics` (which drops those repeats) make it one figure for any batching."""

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        self._answer_rows = []
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self._answer_rows:
            nll, hits, tokens = torch.cat(self._answer_rows).double().sum(0).tolist()
            output.metrics[f"{metric_key_prefix}_loss"] = nll / max(tokens, 1)
            output.metrics[f"{metric_key_prefix}_mean_token_accuracy"] = hits / max(tokens, 1)
        return output

    def floating_point_ops(self, inputs) -> int:
        """Transformers' estimate (6 x tokens x non-embedding parameters) for `total_flos`, with the parameters
        counted once: transformers walks every tensor of the model at every step (1.7 ms a step on the demo's tiny
        model, whose adapter steps take about 140), and the count does not change during training."""
        if not hasattr(self, "_flop_parameters"):
            count = getattr(self.model, "num_parameters", None)
            self._flop_parameters = count(exclude_embeddings=True) if count else 0
        name = getattr(self.model, "main_input_name", "input_ids")
        return 6 * inputs[name].numel() * self._flop_parameters if name in inputs else 0

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if "film_features" in inputs and self.accelerator.num_processes > 1 and self.accelerator.sync_gradients:
            average_gradients(model)  # answer_loss runs the model's parts, past DDP's forward and its hooks
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "film_features" not in inputs:  # rows collated with their films: TRL's loss
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, hits, count = answer_loss(model, inputs, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as TRL does: DDP averages the gradients of the ranks
        hits, count = (self.accelerator.gather_for_metrics(x).sum() for x in (hits, count))
        self._metrics["train"]["mean_token_accuracy"].append((hits / count.clamp(min=1)).item())
        self._total_train_tokens += self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
        self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return (loss, None) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if not prediction_loss_only:  # logits wanted for compute_metrics: TRL's path
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        labels = inputs["labels"][:, 1:]  # position i predicts token i + 1
        with torch.no_grad(), self.compute_loss_context_manager():
            logits = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False).logits[:, :-1]
        answer = labels != IGNORE_INDEX
        picked, target = logits[answer].float(), labels[answer]  # only the answer positions: no [B, L, vocab] copy
        row = answer.nonzero()[:, 0]
        per_row = torch.zeros(len(labels), 3, device=picked.device)
        per_row[:, 0].index_add_(0, row, torch.nn.functional.cross_entropy(picked, target, reduction="none"))
        per_row[:, 1].index_add_(0, row, (picked.argmax(-1) == target).float())
        per_row[:, 2] = answer.sum(-1)
        self._answer_rows.append(self.accelerator.gather_for_metrics(per_row))
        loss = per_row[:, 0].sum() / per_row[:, 2].sum().clamp(min=1)  # this batch's; the loop's mean is replaced
        return loss.detach(), None, None


def check_film_cache(train_args: TrainConfig) -> None:
    """Options the film cache cannot serve fail before the model loads; on CUDA its collator runs in this process."""
    if train_args.eval_strategy != "no":
        raise UserError("cache_film_features trains only: set eval_strategy: no (evaluate with python -m evaluation)")
    if train_args.dataloader_num_workers > 0 and torch.cuda.is_available() and not train_args.use_cpu:
        # the collator runs the vision tower, on the GPU: a forked DataLoader worker cannot use CUDA ("Cannot
        # re-initialize CUDA in forked subprocess"). After the first epoch it only pads, so little is lost.
        workers = train_args.dataloader_num_workers
        logger.info("cache_film_features on CUDA: the collator runs the vision tower on the GPU, which a forked "
                    "DataLoader worker cannot: dataloader_num_workers %d -> 0", workers)  # fmt: skip
        train_args.dataloader_num_workers, train_args.dataloader_persistent_workers = 0, False
    if train_args.dataloader_num_workers > 0 and not train_args.dataloader_persistent_workers:
        raise UserError(
            "cache_film_features with dataloader workers needs dataloader_persistent_workers: true (the cache lives "
            "in the worker, and a new worker each epoch would start it over)"
        )


def build_trainer(script_args: ScriptArguments, train_args: TrainConfig, callbacks=None):
    """Check the inputs, load the model; (a ready SFTTrainer, the dataset's counts for the model card)."""
    train_ds, eval_ds, stats = load_splits(script_args, train_args)
    check_device(script_args, train_args)
    base = resolve(script_args.model_name_or_path)  # checked and its config read once, before anything loads
    check_lora_targets(script_args, base.config)
    examples = train_ds
    if script_args.findings_alone:
        examples = FindingsAlone(train_ds)
        stats["findings_alone"] = examples.split
        logger.info("findings_alone: %d of %d training rows open with a findings turn, trained as two examples each "
                    "(%d examples)", examples.split, len(train_ds), len(examples))  # fmt: skip
    if script_args.cache_film_features:  # the trainer then draws row numbers; the cache's collator reads the rows
        check_film_cache(train_args)
    # drawing example numbers: the film cache's collator, or RowsCollator, reads the examples themselves
    by_number = script_args.cache_film_features or examples is not train_ds
    train_rows = Dataset.from_dict({"row": range(len(examples))}) if by_number else None
    model, processor = build_model(script_args, train_args, base)
    # TRL's own VLM collator labels every non-padding token; ours trains the answers only.
    collate = AnswerOnlyCollator(processor, pad_to_multiple_of=train_args.pad_to_multiple_of)
    trainer = AnswerTokenSFTTrainer(
        model=model,
        args=train_args,
        data_collator=RowsCollator(examples, collate) if by_number else collate,
        train_dataset=train_rows if by_number else train_ds,
        eval_dataset=eval_ds,
        processing_class=processor,
        peft_config=lora_config(script_args),
        callbacks=[ProgressFile(), *(callbacks or [])],
    )
    # TRL casts every trainable parameter of a quantized model to bf16 (the QLoRA paper's choice). That only fits
    # bf16 training: on CPU (fp32 compute) a bf16 projector copy cannot multiply fp32 activations, and fp16 AMP needs
    # fp32 master weights. So trainable weights follow the compute dtype.
    trainable_dtype = torch.bfloat16 if train_args.bf16 else torch.float32
    for param in trainer.model.parameters():
        if param.requires_grad and param.dtype != trainable_dtype:
            param.data = param.data.to(trainable_dtype)
    if script_args.cache_film_features:
        check_frozen_tower(trainer.model)
        shuffle_seed = train_args.seed if script_args.shuffle_films else None
        trainer.data_collator = FilmCacheCollator(examples, processor, trainer.model, shuffle_seed=shuffle_seed)
        per_film = feature_bytes(trainer.model)
        logger.info("film cache: %.2f MB of RAM per film, %.2f GB once all %d training examples are seen",
                    per_film / 1e6, per_film * len(examples) / 1e9, len(examples))  # fmt: skip
    n_trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    logger.info("LoRA on %s: %.2fM trainable parameters", script_args.model_name_or_path, n_trainable / 1e6)
    return trainer, stats


def train(script_args: ScriptArguments, train_args: TrainConfig, callbacks=None):
    """Train, then write the adapter, the processor and a model card to output_dir (and the merged model if asked).
    Returns the trainer, whose `state.log_history` holds the losses."""
    checkpoint = resolve_checkpoint(train_args)
    trainer, stats = build_trainer(script_args, train_args, callbacks)
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(train_args.output_dir)  # adapter_model.safetensors + processor (with the project template)
    if trainer.is_world_process_zero():
        write_model_card(trainer, script_args, train_args, stats)
        if script_args.merge:
            from finetune.merge import merge_adapter

            merge_adapter(
                script_args.model_name_or_path, train_args.output_dir, Path(train_args.output_dir) / "merged"
            )
        share(train_args.output_dir)  # safetensors saves 0600: the app's container runs as another user
    return trainer
