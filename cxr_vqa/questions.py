"""A person's question on its way into a prompt: cleaned, and checked against the model's limits in tokens. Pure
functions: `VQAModel.clean_question` and `VQAModel.conversation` call them with what the model's processor says.

Decisions:
- Control characters are removed and whitespace is collapsed, with a note to the user: they carry no meaning in a
  question and some (NUL, ESC, bidi overrides) can corrupt or disguise what is stored in the votes database.
- The tokenizer's special tokens (`<image>`, `</s>`, ...) are removed too: a typed `<image>` would ask the
  processor for a second image, and a typed `</s>` would end the user's turn inside the prompt.
- Questions in other scripts are allowed, with a note: the model was fine-tuned on English questions only, so
  such answers are less reliable, but refusing them would be a stronger claim than we can back.
- Length is explained in tokens, the unit of the model's limits: a question may use at most MAX_QUESTION_TOKENS,
  and the whole conversation (image tokens, every turn, the answer to come) must fit the context window.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from cxr_vqa.errors import UserError

MAX_QUESTION_CHARS = 100_000  # checked before tokenizing, so a pasted book costs nothing
MAX_QUESTION_TOKENS = 256  # a question about one film is a sentence or two; the rest of the context is for turns
# Bidirectional overrides and isolates: category Cf, not Cc, but they reorder how text is displayed.
_BIDI_CONTROLS = {chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]}
_WHITESPACE_CONTROLS = "\t\n\r\x0b\x0c"


@dataclass(frozen=True)
class TokenBudget:
    """The model's limits: its context window and the tokens one image expands to."""

    context: int
    image_tokens: int

    def check(self, question_tokens: int, prompt_tokens: int, max_new_tokens: int) -> None:
        """`prompt_tokens` counts the rendered prompt with `<image>` as one token, as the tokenizer does."""
        limits = (
            f"the model reads {self.context:,} tokens in all: {self.image_tokens} for the image, the conversation, "
            f"and up to {max_new_tokens} for the answer"
        )
        if question_tokens > MAX_QUESTION_TOKENS:
            raise UserError(
                f"question too long: {question_tokens:,} tokens, over the {MAX_QUESTION_TOKENS}-token limit for one "
                f"question ({limits}); shorten it"
            )
        total = prompt_tokens - 1 + self.image_tokens + max_new_tokens
        if total > self.context:
            raise UserError(
                f"conversation too long: {total:,} tokens ({limits}); press Clear to start a new conversation "
                "or lower max new tokens"
            )


def clean_question(text: str | None, special_tokens: Sequence[str] = ()) -> tuple[str, list[str]]:
    """Return the question as it will be asked and notes for the user about what was changed or is risky."""
    text = text or ""
    if len(text) > MAX_QUESTION_CHARS:
        raise UserError(
            f"question too long: {len(text):,} characters; ask one short question "
            f"(at most {MAX_QUESTION_TOKENS} tokens, a sentence or two)"
        )
    notes = []
    kept, removed = [], 0
    for c in text:
        if c in _WHITESPACE_CONTROLS:  # the template puts the question on one line after the image
            kept.append(" ")
        elif _is_control(c):
            removed += 1
        else:
            kept.append(c)
    text = "".join(kept)
    if removed:
        notes.append(f"removed {removed} control character(s) from the question")
    for token in special_tokens:
        if token and token in text:
            text = text.replace(token, " ")
            notes.append(f"removed {token!r} from the question: it is a special token of the model")
    text = " ".join(text.split())
    if not text:
        raise UserError("empty question: type a question about the film, or pick a suggested one")
    if _has_non_latin_letters(text):
        notes.append(
            "the model was fine-tuned on English questions: answers to questions in other languages or scripts "
            "are less reliable"
        )
    return text, notes


def _is_control(c: str) -> bool:
    return unicodedata.category(c) == "Cc" or c in _BIDI_CONTROLS


def _has_non_latin_letters(text: str) -> bool:
    return any(c.isalpha() and not unicodedata.name(c, "").startswith("LATIN") for c in text)
