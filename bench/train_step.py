"""Multi-turn rows (one image, a study's 5 QA pairs) vs one-QA rows (the image repeated for every pair), over the
same QA pairs: tokens per QA pair and collate time through the project's collator. CPU, offline.

    python bench/train_step.py                  # 32 studies x 5 QA, batches of 4, the tiny checkpoint's processor
    python bench/train_step.py --step           # also time forward+backward per QA pair on the tiny model
    python bench/train_step.py --model runs/llava-1.5-7b-hf --studies 64    # a real processor saved locally

The 576 image tokens dominate a row, so paying for them once per study instead of once per question is where the
saving comes from. Token counts use the given processor's tokenizer (the tiny one by default: its BPE splits the
text a little differently from Llama's, the image tokens are identical). Last line:
`RESULT tokens_per_qa_ratio=<multi-turn tokens per QA / one-QA tokens per QA>` (goal <= 0.35).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from PIL import Image, ImageDraw

from cxr_vqa.model import load_processor
from cxr_vqa.template import conversation_from_qa
from finetune.collator import AnswerOnlyCollator

# A study's QA pairs, in the shape dataprep writes (closed questions answered Yes/No, one open question).
QA_BANK = [
    ("Is there cardiomegaly?", "Yes, the cardiac silhouette is enlarged."),
    ("Is there a pleural effusion?", "No, the costophrenic angles are sharp."),
    ("Is there a pneumothorax?", "No."),
    ("Are support devices present?", "Yes, an endotracheal tube and a central venous catheter."),
    ("Is there pulmonary edema?", "Yes, there is mild pulmonary vascular congestion."),
    ("Is there consolidation?", "No."),
    ("What abnormalities are seen?", "Left lower lobe opacity, which may reflect atelectasis or pneumonia."),
    ("Is there a fracture?", "No acute osseous abnormality."),
]


def film(seed: int) -> Image.Image:
    """A letterboxed 336 px grey film with a bright ellipse: what dataprep stores."""
    img = Image.new("RGB", (336, 336), (20 + seed % 40,) * 3)
    ImageDraw.Draw(img).ellipse([60 + seed % 30, 40, 280 - seed % 20, 310], fill=(170, 170, 170))
    return img


def studies(n: int, qa_per_study: int) -> list[tuple[Image.Image, list[tuple[str, str]]]]:
    return [(film(i), [QA_BANK[(i + k) % len(QA_BANK)] for k in range(qa_per_study)]) for i in range(n)]


def multi_turn_rows(data) -> list[dict]:
    return [{"messages": conversation_from_qa(pairs), "images": [image]} for image, pairs in data]


def one_qa_rows(data) -> list[dict]:
    return [{"messages": conversation_from_qa([pair]), "images": [image]} for image, pairs in data for pair in pairs]


def measure(collator, rows: list[dict], n_qa: int, batch_size: int, repeats: int) -> dict:
    """Collate every batch `repeats` times; count real and padded tokens once."""
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    real = padded = trained = 0
    times: list[float] = []
    for r in range(repeats):
        for batch_rows in batches:
            start = time.perf_counter()
            batch = collator(batch_rows)
            times.append(time.perf_counter() - start)
            if r == 0:
                real += int(batch["attention_mask"].sum())
                padded += batch["input_ids"].numel()
                trained += int((batch["labels"] != -100).sum())
    per_batch = statistics.median(times)
    return {
        "rows": len(rows),
        "batches": len(batches),
        "tokens_per_qa": real / n_qa,
        "padded_tokens_per_qa": padded / n_qa,
        "trained_tokens_per_qa": trained / n_qa,
        "collate_ms_per_batch": 1000 * per_batch,
        "collate_ms_per_qa": 1000 * per_batch * len(batches) / n_qa,
        "batch_list": batches,
    }


def step_ms_per_qa(model, collator, batches, n_qa: int) -> float:
    """Forward + backward of every batch (fp32, full model trainable is not needed: LoRA-free, grads on inputs)."""
    model.train()
    start = time.perf_counter()
    for batch_rows in batches:
        batch = collator(batch_rows)
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return 1000 * (time.perf_counter() - start) / n_qa


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory with a processor (default: build the tiny one)")
    parser.add_argument("--studies", type=int, default=32, help="studies (images)")
    parser.add_argument("--qa-per-study", type=int, default=5, help="QA pairs per study")
    parser.add_argument("--batch-size", type=int, default=4, help="rows per batch, the same for both layouts")
    parser.add_argument("--repeats", type=int, default=3, help="collate passes over all batches (median is kept)")
    parser.add_argument("--step", action="store_true", help="also time forward+backward per QA pair (tiny model)")
    args = parser.parse_args(argv)
    if args.studies < 1 or args.qa_per_study < 1 or args.batch_size < 1 or args.repeats < 1:
        parser.error("--studies, --qa-per-study, --batch-size and --repeats must be >= 1")

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            from finetune.tiny_model import build_tiny_llava

            model_dir = str(build_tiny_llava(Path(tmp) / "tiny"))
        collator = AnswerOnlyCollator(load_processor(model_dir))
        data = studies(args.studies, args.qa_per_study)
        n_qa = args.studies * args.qa_per_study
        results = {
            "multi-turn": measure(collator, multi_turn_rows(data), n_qa, args.batch_size, args.repeats),
            "one-QA": measure(collator, one_qa_rows(data), n_qa, args.batch_size, args.repeats),
        }
        if args.step:
            from cxr_vqa.model import load_base_model

            model = load_base_model(model_dir, load_in_4bit=False, device="cpu")
            for result in results.values():  # warm-up on one batch, then the timed pass
                step_ms_per_qa(model, collator, result["batch_list"][:1], 1)
                result["step_ms_per_qa"] = step_ms_per_qa(model, collator, result["batch_list"], n_qa)

    print(
        f"{n_qa} QA pairs from {args.studies} studies, batches of {args.batch_size} rows, torch threads "
        f"{torch.get_num_threads()}"
    )
    columns = [
        "rows",
        "batches",
        "tokens_per_qa",
        "padded_tokens_per_qa",
        "trained_tokens_per_qa",
        "collate_ms_per_batch",
        "collate_ms_per_qa",
    ] + (["step_ms_per_qa"] if args.step else [])
    print(f"{'':24}" + "".join(f"{name:>14}" for name in results))
    for column in columns:
        values = [results[name][column] for name in results]
        print(f"{column:24}" + "".join(f"{v:>14.1f}" if isinstance(v, float) else f"{v:>14}" for v in values))
    multi, single = results["multi-turn"], results["one-QA"]
    print(f"collate time per QA pair: {multi['collate_ms_per_qa'] / single['collate_ms_per_qa']:.2f}x")
    if args.step:
        print(f"forward+backward time per QA pair: {multi['step_ms_per_qa'] / single['step_ms_per_qa']:.2f}x")
    print(f"RESULT tokens_per_qa_ratio={multi['tokens_per_qa'] / single['tokens_per_qa']:.3f}")


if __name__ == "__main__":
    main()
