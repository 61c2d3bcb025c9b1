"""What an answer says: the strict yes/no reading of its first word, and P(yes) from the first decoding step.

    parse_yes_no("Yes, mild cardiomegaly.")   # "yes";  parse_yes_no("Normal heart size.") -> None (strict)
    ids = YesNoIds.from_tokenizer(tokenizer)    # every piece that spells yes / no: both casings, with or without "▁"
    p_yes(first_step_logits, ids)               # per row: P(yes) / (P(yes) + P(no)) over those pieces
    p_yes_of_candidates({" Yes": -0.1, "No": -2.5, "The": -4.0})   # the same from a remote model's top_logprobs

Strict: the first whitespace-separated word, lower-cased and stripped of punctuation, must be "yes" or "no";
"normal", "nope" or an empty answer are unparseable. Lenient parsing would credit a model for answers a reader could
not act on. P(yes) is the confidence behind a closed answer: an AUROC needs a score, not only the answer.
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where P(yes) is computed: dataprep reads answers without it (seconds a process)
    import torch

YES, NO = "yes", "no"
SPACE_PIECES = ("", "▁", "Ġ")  # none, SentencePiece's word start (Llama), byte-level BPE's space (GPT-2 style)
# what may come before the first word of an endpoint's token text: its word-start marks, a space, a line break, a tab
WORD_START = "".join(SPACE_PIECES) + " \n\t"


def spellings(word: str) -> tuple[str, ...]:
    """The ways one piece spells `word`: lower, capitalised and upper case."""
    return word, word.capitalize(), word.upper()


def parse_yes_no(text: str | None) -> str | None:
    """'yes' / 'no' from the first word of an answer, or None when it is neither (strict)."""
    words = (text or "").split(maxsplit=1)
    if not words:
        return None
    first = words[0].strip(string.punctuation).lower()
    return first if first in (YES, NO) else None


@dataclass(frozen=True)
class Answer:
    text: str
    p_yes: float | None = None  # P(first token spells yes | it spells yes or no); None until decoding ends
    error: str | None = None  # a remote model that did not answer: why, in one line (text is then "")

    @property
    def is_closed(self) -> bool:
        """A yes/no answer, whose P(yes) is worth showing."""
        return parse_yes_no(self.text) is not None


@dataclass(frozen=True)
class YesNoIds:
    yes: tuple[int, ...]
    no: tuple[int, ...]

    @classmethod
    def from_tokenizer(cls, tokenizer) -> YesNoIds:
        """The ids of every single piece that spells the word: looked up by piece and by encoding, since tokenizers
        differ in how the space before an answer is written (Llama: "▁Yes" after `ASSISTANT:`)."""

        def ids(word: str) -> tuple[int, ...]:
            found = set()
            for spelling in spellings(word):
                for space in SPACE_PIECES:
                    found.add(tokenizer.convert_tokens_to_ids(space + spelling))
                for text in (spelling, " " + spelling):
                    pieces = tokenizer(text, add_special_tokens=False)["input_ids"]
                    if len(pieces) == 1:
                        found.add(pieces[0])
            found.discard(tokenizer.unk_token_id)
            found.discard(None)
            return tuple(sorted(found))

        yes, no = ids(YES), ids(NO)
        if not yes or not no:
            raise ValueError("the tokenizer has no single piece for yes or for no: P(yes) cannot be read")
        return cls(yes, no)


def p_yes(logits: torch.Tensor, ids: YesNoIds) -> list[float]:
    """Per row of `logits` (batch x vocabulary, the first generated step): P(yes) normalised over yes and no."""
    import torch

    probs = torch.softmax(logits.float(), dim=-1)
    yes, no = probs[:, list(ids.yes)].sum(-1), probs[:, list(ids.no)].sum(-1)
    return (yes / (yes + no).clamp_min(1e-30)).tolist()


def p_yes_of_candidates(candidates: Mapping[str, float]) -> float | None:
    """P(yes) from the log-probabilities of one step's candidate token texts (an OpenAI-compatible endpoint's
    `top_logprobs` of the first answer token): the yes spellings against the no spellings, with or without a leading
    space or word-start mark, as `p_yes` does over token ids. None when neither word is among the candidates."""
    mass = {YES: 0.0, NO: 0.0}
    for token, logprob in candidates.items():
        word = token.lstrip(WORD_START)
        for target in mass:
            if word in spellings(target):
                mass[target] += math.exp(logprob)
    total = mass[YES] + mass[NO]
    return mass[YES] / total if total > 0 else None
