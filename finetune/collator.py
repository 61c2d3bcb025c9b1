"""Batches of dataset rows → model inputs with answer-only labels.

Each row (the dataprep contract: `messages` in the llava-instruct-mix-vsft structure, `images` holding one image) is
rendered with the project's chat template, the same one `cxr_vqa.vqa.render` uses at inference, so the training
text is byte-for-byte the serving text. Labels are -100 everywhere except the assistant answers and the `</s>` that
ends each of them: padding, BOS, the 576 image tokens, `USER:`/`ASSISTANT:` and the questions carry no loss.

    from finetune.collator import AnswerOnlyCollator
    batch = AnswerOnlyCollator(processor)(rows)     # input_ids, attention_mask, pixel_values, labels
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image
from transformers import BatchFeature

from cxr_vqa.contract import check_row
from cxr_vqa.template import CHAT_TEMPLATE

IGNORE_INDEX = -100


@dataclass
class AnswerOnlyCollator:
    """Collate raw rows for `SFTTrainer(data_collator=...)`: render, tokenize (never truncating), pad, label."""

    processor: Any
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: list[dict]) -> BatchFeature:
        for row in rows:
            check_row(row)
        conversations = [list(row["messages"]) for row in rows]
        images = [[_rgb(row["images"][0])] for row in rows]
        encoded = self.processor.apply_chat_template(
            conversations,
            chat_template=CHAT_TEMPLATE,
            tokenize=True,
            return_dict=True,
            # Python lists first, tensors after: transformers maps answer spans to tokens with a Python loop over
            # the offsets, which is ~6x slower when it has to iterate tensors.
            return_tensors=None,
            # The answer spans come from the template's {% generation %} markers, mapped through the expansion of
            # <image> into its patch tokens, so no position is guessed from token ids.
            return_assistant_tokens_mask=True,
            processor_kwargs={
                "images": images,
                "padding": True,
                # Right padding in training: Llama counts positions from the first column in a training forward,
                # so left padding would shift every short row's positions away from what it sees at inference.
                "padding_side": "right",
                "pad_to_multiple_of": self.pad_to_multiple_of,
                "truncation": False,  # cutting an image token would desynchronize tokens and vision features
            },
        )
        batch = BatchFeature(dict(encoded), tensor_type="pt")
        image_token_id = self.processor.tokenizer.convert_tokens_to_ids(self.processor.image_token)
        trained = (
            batch.pop("assistant_masks").bool()
            & batch["attention_mask"].bool()
            & (batch["input_ids"] != image_token_id)  # an answer can never contain image tokens; belt and braces
        )
        batch["labels"] = batch["input_ids"].masked_fill(~trained, IGNORE_INDEX)
        return batch


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")
