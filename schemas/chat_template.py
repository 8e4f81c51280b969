"""The chat template: how each dataset kind becomes tokens, the role of every token, and which roles are trained on."""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Sequence

import numpy as np

from . import rows
from .rows import LETTERS, Message, MultipleChoice
from .tokenizer import CHAT_TOKENS, ENDOFTEXT_ID, get_tokenizer


class Role(IntEnum):
    """The role id stored for every token of a chat shard (one byte each)."""

    TEXT = 0  # plain pretraining text; pretrain shards store no roles, every token is TEXT
    BOS = 1  # the <|endoftext|> that opens each conversation
    SYSTEM = 2  # <|system_start|>, the system prompt, <|system_end|>
    USER = 3  # <|user_start|>, the user's words, <|user_end|>
    ASSISTANT_START = 4  # <|assistant_start|>: the prompt's cue, not the model's answer
    ASSISTANT = 5  # the assistant's words and its <|assistant_end|>


# The loss counts a target token only when its role is trained on: the assistant's words
# and its end token (so it learns to stop), never what the user typed.
TRAINED_ROLES = frozenset({Role.TEXT, Role.ASSISTANT})
TRAINED_ROLE_TABLE = np.array([r in TRAINED_ROLES for r in Role], dtype=bool)

_START = {
    "system": CHAT_TOKENS["<|system_start|>"],
    "user": CHAT_TOKENS["<|user_start|>"],
    "assistant": CHAT_TOKENS["<|assistant_start|>"],
}
_END = {
    "system": CHAT_TOKENS["<|system_end|>"],
    "user": CHAT_TOKENS["<|user_end|>"],
    "assistant": CHAT_TOKENS["<|assistant_end|>"],
}
_CONTENT_ROLE = {"system": Role.SYSTEM, "user": Role.USER, "assistant": Role.ASSISTANT}
_START_ROLE = {"system": Role.SYSTEM, "user": Role.USER, "assistant": Role.ASSISTANT_START}


def encode_text(text: str) -> list[int]:
    """Encode text as ordinary text: special-token strings typed by anyone stay plain text."""
    return get_tokenizer().encode_ordinary(text)


def render_conversation(messages: Sequence[Message]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (uint16) and role ids (uint8) of a whole conversation, opened by <|endoftext|>."""
    ids: list[int] = [ENDOFTEXT_ID]
    roles: list[int] = [Role.BOS]
    for m in messages:
        content = encode_text(m.content)
        ids.append(_START[m.role])
        roles.append(_START_ROLE[m.role])
        ids.extend(content)
        roles.extend([_CONTENT_ROLE[m.role]] * len(content))
        ids.append(_END[m.role])
        roles.append(_CONTENT_ROLE[m.role])
    return np.asarray(ids, dtype=np.uint16), np.asarray(roles, dtype=np.uint8)


def render_prompt(messages: Sequence[Message]) -> list[int]:
    """Ids of a conversation so far followed by <|assistant_start|>: what a chat model completes."""
    ids, _ = render_conversation(messages)
    return ids.tolist() + [_START["assistant"]]


def multiple_choice_prompt(mc: MultipleChoice) -> str:
    """The user turn of a multiple-choice question: the question, then a lettered list."""
    about = f" about {mc.subject.replace('_', ' ')}" if mc.subject else ""
    lines = [f"Multiple choice question{about}:", "", mc.question.strip(), ""]
    lines += [f"{LETTERS[i]}. {c.strip()}" for i, c in enumerate(mc.choices)]
    lines += ["", "Answer with the letter of the correct choice."]
    return "\n".join(lines)


def multiple_choice_conversation(mc: MultipleChoice) -> list[Message]:
    """User asks the lettered question; the assistant answers with the letter alone."""
    return [Message("user", multiple_choice_prompt(mc)), Message("assistant", LETTERS[mc.answer])]


def to_conversation(fmt: str, row: Any) -> list[Message]:
    """Validate a raw row of dataset kind `fmt` and return it as a conversation (or raise RowError)."""
    if fmt in ("conversation", "identity"):
        return rows.conversation(row)
    if fmt == "mmlu":
        return multiple_choice_conversation(rows.mmlu(row))
    if fmt == "arc":
        return multiple_choice_conversation(rows.arc(row))
    if fmt == "gsm8k":
        question, answer = rows.gsm8k(row)
        return [Message("user", question), Message("assistant", answer)]
    raise ValueError(f"unknown chat format {fmt!r}; expected one of {rows.CHAT_FORMATS}")
