"""The project's LLaVA-1.5 chat template and conversation builders: pure data, no model.

A conversation renders as ``USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>`` and a prompt
for inference ends in ``ASSISTANT:``, so the inference prompt is a byte-for-byte prefix of the training text.
Differences from the Hub template of llava-hf/llava-1.5-7b-hf, on purpose:
- ``</s>`` after every answer: a model that never sees EOS in training never learns to stop;
- answers sit inside ``{% generation %}`` markers, so the assistant-token mask comes from the template itself;
- no trailing space after answers (the Hub template adds one, which then becomes part of the next turn).

Messages use the ``llava-instruct-mix-vsft`` structure of the dataset contract: ``{"role", "content": [part]}``
with parts ``{"type": "image"|"text", "text": str|None, "index": int|None}``. Plain-string content is accepted.
"""

from __future__ import annotations

# Texts that are control tokens to LLaVA-1.5's tokenizer or markers of this template: inside a question or answer
# they would ask for a second image or end a turn early, so data and typed questions must not carry them.
CONTROL_TEXTS = ("<image>", "<s>", "</s>", "<pad>", "<unk>")

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set texts = [message['content']] -%}{%- set n_images = 0 -%}"
    "{%- else -%}"
    "{%- set texts = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | list -%}"
    "{%- set n_images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ texts | join(' ') + ' ' }}"
    "{%- elif message['role'] == 'user' -%}"
    "USER: {% for _ in range(n_images) %}<image>\n{% endfor %}{{ texts | join(' ') + ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "ASSISTANT:{% generation %} {{ texts | join(' ') }}</s>{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}ASSISTANT:{%- endif -%}"
)


def text_part(text: str) -> dict:
    return {"type": "text", "text": text, "index": None}


def image_part(index: int = 0) -> dict:
    return {"type": "image", "text": None, "index": index}


def user_turn(question: str, *, with_image: bool = False) -> dict:
    """A user turn; the first turn of a conversation carries the image."""
    parts = [image_part(0)] if with_image else []
    return {"role": "user", "content": parts + [text_part(question)]}


def assistant_turn(answer: str) -> dict:
    return {"role": "assistant", "content": [text_part(answer)]}


def add_question(history: list[dict] | None, question: str) -> list[dict]:
    """Return a new conversation: `history` (alternating user/assistant turns) plus a user question.

    The image goes in the first user turn only, as in the dataset's multi-turn rows.
    """
    history = list(history or [])
    if history and history[-1]["role"] != "assistant":
        raise ValueError("a new question must follow an answer")
    return history + [user_turn(question, with_image=not history)]


def conversation_from_qa(pairs: list[tuple[str, str]]) -> list[dict]:
    """Multi-turn messages from (question, answer) pairs: the image once, in the first turn."""
    messages: list[dict] = []
    for i, (question, answer) in enumerate(pairs):
        messages += [user_turn(question, with_image=i == 0), assistant_turn(answer)]
    return messages
