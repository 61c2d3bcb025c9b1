"""The three measured parts of `bench/gpu.py`, each on a model loaded the way its users load it: the app's and the
evaluation's `VQAModel` (`cxr_vqa.model.load_model`), the trainer's model (`finetune.train.build_model` + its LoRA).
Timings synchronise the GPU; on CPU (the `--smoke` run) the same code runs on the tiny checkpoint.
"""

from __future__ import annotations

import contextlib
import gc
import io
import itertools
import resource
import statistics
import time
from functools import partial
from pathlib import Path

import torch

GIB = 1024**3
ROOT = Path(__file__).resolve().parents[1]
FILM = ROOT / "assets" / "examples" / "cardiomegaly.png"
CONFIG_7B = ROOT / "finetune" / "configs" / "llava-1.5-7b-qlora.yaml"
MEMORY_LIMIT_GIB = 22  # what a 24 GB card (22.4 GiB) leaves a training process
# A study's QA turns as dataprep writes them: (question, answer, label of a closed question; None for the open one).
# With the film's 576 image tokens the 5 turns are 729 tokens in the 7B model's tokenizer; training rows repeat them
# up to --seq-len (750) and are cut there.
QA = [
    ("Is there cardiomegaly?", "Yes, the cardiac silhouette is enlarged.", "yes"),
    ("Is there a pleural effusion?", "No, the costophrenic angles are sharp.", "no"),
    ("Is there a pneumothorax?", "No.", "no"),
    ("Are support devices present?", "Yes, an endotracheal tube and a right jugular venous catheter.", "yes"),
    ("What abnormalities are seen?", "An enlarged heart, mild vascular congestion, no focal consolidation.", None),
]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(run) -> float:
    sync()
    start = time.perf_counter()
    run()
    sync()
    return time.perf_counter() - start


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_peak() -> None:
    free_memory()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    """GPU: the most memory the allocator held since `reset_peak` (what a card must have, less the CUDA context). CPU:
    the process's peak resident memory so far, which only shows that the plumbing works."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_reserved() / GIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def empty_model(model_dir: str | Path):
    """The checkpoint's architecture on the meta device: every name and shape, no memory."""
    from transformers import AutoConfig, LlavaForConditionalGeneration

    with torch.device("meta"):
        return LlavaForConditionalGeneration(AutoConfig.from_pretrained(model_dir))


def config_7b(model_dir: str | Path, *flags: str):
    """(ScriptArguments, TrainConfig) of the shipped 7B QLoRA config pointed at `model_dir`, parsed as `python -m
    finetune` parses it."""
    from finetune.config import parse_config

    paths = ["--model_name_or_path", str(model_dir), "--output_dir", str(Path(model_dir) / "run")]
    return parse_config(["--config", str(CONFIG_7B), *paths, *flags])


def random_adapter(model_dir: str | Path, out: Path) -> Path:
    """A LoRA adapter of the 7B config (r=64 on the language model's projections) with random weights, written from the
    meta-device architecture's names and shapes: no extra load of the base."""
    from peft import get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file

    from finetune.train import lora_config

    script_args, _ = config_7b(model_dir)
    with torch.device("meta"):
        peft_model = get_peft_model(empty_model(model_dir), lora_config(script_args))
    generator = torch.Generator().manual_seed(0)
    weights = {
        name: torch.randn(tensor.shape, generator=generator, dtype=torch.bfloat16) * 0.01
        for name, tensor in get_peft_model_state_dict(peft_model).items()
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, out / "adapter_model.safetensors")
    config = peft_model.peft_config["default"]
    config.base_model_name_or_path = str(model_dir)
    config.save_pretrained(out)
    return out


@contextlib.contextmanager
def forced_length(vqa, n: int):
    """Every generate call inside decodes exactly `n` tokens a row, checked on each call's output: random weights may
    emit EOS anywhere, and the work per call must not vary."""
    model, eos = vqa.model, vqa.processor.tokenizer.eos_token_id
    generate = model.generate

    def checked(**kwargs):
        out = generate(**kwargs)
        new = out.sequences[:, kwargs["input_ids"].shape[1] :]
        if new.shape[1] != n or bool((new == eos).any()):
            raise RuntimeError(f"asked for {n} new tokens a row, got {new.shape[1]} or an EOS before them")
        return out

    model.generation_config.min_new_tokens, model.generate = n, checked
    try:
        yield
    finally:
        model.generation_config.min_new_tokens = None
        del model.generate


def compare_part(vqa, args) -> dict:
    """One mixed base/adapter generate (the app's two panes) vs two sequential single-row calls vs the base alone on
    one row (adapters off: bitsandbytes' one-row 4-bit kernel with nothing in its way)."""
    from cxr_vqa.generation import GenerationSettings
    from cxr_vqa.vqa import BASE, TUNED

    film, conversation = vqa.prepare_film(FILM).image, vqa.conversation(None, QA[0][0])

    def ask(models: list[str], n: int, base_only: bool = False) -> None:
        adapters_off = vqa.model.disable_adapter() if base_only else contextlib.nullcontext()
        settings = GenerationSettings(max_new_tokens=n)
        with forced_length(vqa, n), adapters_off:
            vqa.answer([film] * len(models), [conversation] * len(models), models, settings)

    methods = {
        "batched": lambda n: ask([BASE, TUNED], n),
        "sequential": lambda n: (ask([BASE], n), ask([TUNED], n)),
        "base_b1": lambda n: ask([BASE], n, base_only=True),
    }
    new = args.new_tokens
    for run in methods.values():
        run(4)  # warm-up: kernels, the allocator's blocks
    reset_peak()
    # and the prefill alone (1 new token) where the decode speed is wanted: decode time = full call - prefill
    keys = [("batched", 1), ("batched", new), ("sequential", new), ("base_b1", 1), ("base_b1", new)]
    times: dict[tuple[str, int], list[float]] = {key: [] for key in keys}
    for _ in range(args.repeats):  # interleaved: a slow moment hits every method, not one
        for (method, n), seconds in times.items():
            seconds.append(timed(partial(methods[method], n)))
    t = {key: statistics.median(seconds) for key, seconds in times.items()}
    peak = peak_gib()
    for (method, n), seconds in t.items():
        print(f"compare {method:<10} {n:>4} new tokens: {seconds:.3f} s (median of {args.repeats})")

    def per_row(method: str) -> float:
        return (new - 1) / (t[method, new] - t[method, 1])

    return {
        "speedup": f"{t['sequential', new] / t['batched', new]:.2f}",
        "tok_s_row_b1": f"{per_row('base_b1'):.1f}",
        "tok_s_row_b2": f"{per_row('batched'):.1f}",
        "peak_gib": f"{peak:.2f}",
    }


def eval_part(vqa, args) -> dict:
    """Questions/s of `python -m evaluation`'s answering loop (`answer_all`, the CLI's own function, with its default
    variants: every model with the film and with a blank image, 4 rows a question) at batch 8 and 32. Each answer is
    forced to `eval_tokens` (evaluate's cap, 64): an upper bound, as real closed answers stop after a few tokens."""
    from cxr_vqa.generation import GenerationSettings
    from evaluation.predictions import answer_all, variants

    kinds = variants(vqa.model_names, ablation=True)
    questions = [
        {"id": f"study{i}#0", "row": i, "study_id": f"study{i}", "patient_id": f"patient{i}", "question": question,
         "reference": answer, "kind": "closed" if label else "open", "finding": None, "label": label}
        for i, (question, answer, label) in zip(range(args.eval_questions), itertools.cycle(QA))
    ]  # fmt: skip
    settings = GenerationSettings(max_new_tokens=args.eval_tokens)

    def answer(batch: int, todo: list[dict]) -> int:  # each study's film decoded per batch, as evaluate does
        films = lambda row: vqa.prepare_film(FILM).image  # noqa: E731
        return answer_all(vqa, films, todo, {}, kinds, settings, batch, io.StringIO())

    result = {}
    for batch in (8, 32):
        with forced_length(vqa, args.eval_tokens):
            answer(batch, questions[: max(1, batch // len(kinds))])  # warm-up at this batch's shapes
            seconds = timed(partial(answer, batch, questions))
        result[f"q_s_b{batch}"] = f"{len(questions) / seconds:.2f}"
        print(f"eval batch {batch}: {len(questions)} questions x {len(kinds)} rows in {seconds:.2f} s")
    return result


def real_batch(model_dir: str | Path, batch: int, seq_len: int) -> dict:
    """`batch` copies of a training row of exactly `seq_len` tokens (CPU tensors): a study's QA turns about an
    example film through the model core's processor and the answer-only collator, repeated until long enough, cut."""
    from cxr_vqa.images import load_film
    from cxr_vqa.model import load_processor
    from cxr_vqa.template import conversation_from_qa
    from finetune.collator import AnswerOnlyCollator

    collate, film = AnswerOnlyCollator(load_processor(str(model_dir))), load_film(FILM, 336).image
    for repeats in itertools.count(1):
        turns = [(question, answer) for question, answer, _ in QA] * repeats
        row = collate([{"messages": conversation_from_qa(turns), "images": [film]}])
        if row["input_ids"].size(1) >= seq_len:
            break
    return {k: v[:, :seq_len].repeat(batch, 1) if v.dim() == 2 else v.repeat(batch, 1, 1, 1) for k, v in row.items()}


def train_part(model_dir: str | Path, args, peak_tflops: float | None) -> dict:
    """QLoRA steps of the shipped 7B config (its LoRA, optimiser, precision, gradient checkpointing and clipping) on
    the trainer's own model, one micro-batch size after another until one passes 22 GiB or fails."""
    from peft import get_peft_model
    from transformers import Trainer

    from finetune.train import build_model, lora_config

    cuda = torch.cuda.is_available()
    script_args, train_args = config_7b(model_dir, *([] if cuda else ["--optim", "adamw_torch"]))  # paged: CUDA only
    model = get_peft_model(build_model(script_args, train_args)[0], lora_config(script_args))
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # as finetune.train.build_trainer leaves them: trainable weights in the compute dtype
        p.data = p.data.to(torch.bfloat16 if train_args.bf16 else torch.float32)
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(train_args, model)
    optimizer = optimizer_cls(params, **optimizer_kwargs)
    amp = torch.bfloat16 if train_args.bf16 else torch.float16 if train_args.fp16 else None
    scaler = torch.amp.GradScaler(enabled=train_args.fp16)  # fp16 needs loss scaling; bf16 and fp32 do not
    device = next(model.parameters()).device

    def step(batch: dict) -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = model(**batch).loss
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, train_args.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    runs: dict[int, tuple[float, float]] = {}  # micro-batch -> (tokens/s, peak GiB), those that fit
    for micro in args.micro_batches:
        batch = {k: v.to(device) for k, v in real_batch(model_dir, micro, args.seq_len).items()}
        reset_peak()
        try:
            seconds = [timed(partial(step, batch)) for _ in range(args.warmup + args.steps)][args.warmup :]
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not runs:
                raise
            print(f"train micro-batch {micro}: failed, stopping ({str(err).splitlines()[0][:160]})")
            break
        step_s, peak = statistics.median(seconds), peak_gib()
        over = cuda and peak > MEMORY_LIMIT_GIB  # a CPU's resident memory says nothing about a 24 GB card
        print(f"train micro-batch {micro} x {args.seq_len} tokens: {step_s:.3f} s a step (median of {args.steps}), "
              f"{micro * args.seq_len / step_s:.0f} tokens/s, peak {peak:.2f} GiB"
              + (f", over {MEMORY_LIMIT_GIB} GiB: stopping" if over else ""))  # fmt: skip
        if over:
            break
        runs[micro] = (micro * args.seq_len / step_s, peak)
    if not runs:
        raise RuntimeError(f"micro-batch {args.micro_batches[0]} needs over {MEMORY_LIMIT_GIB} GiB")
    best = max(runs, key=lambda micro: runs[micro][0])
    tok_s, peak = runs[best]
    n_params = sum(p.numel() for p in empty_model(model_dir).parameters()) + sum(p.numel() for p in params)
    mfu = 6 * n_params * tok_s / (peak_tflops * 1e12) if peak_tflops else None
    print(f"MFU = 6 x {n_params / 1e9:.3g}B params (frozen + {sum(p.numel() for p in params) / 1e6:.1f}M trainable) x "
          + (f"{tok_s:.0f} tokens/s / {peak_tflops:g} TFLOP/s = {mfu:.3g}" if mfu else "tokens/s / peak: this "
             "device is not in bench/gpu.py's table of dense bf16 peaks; pass --peak-tflops"))  # fmt: skip
    return {
        "best_mb": best,
        "tok_s": f"{tok_s:.1f}",
        "tok_s_mb1": f"{runs[1][0]:.1f}" if 1 in runs else "none",
        "peak_gib": f"{peak:.2f}",
        "mfu": f"{mfu:.3g}" if mfu else "unknown",
    }
