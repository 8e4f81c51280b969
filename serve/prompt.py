"""Prompts as token ids: chat conversations fitted into the context window, and plain text for base models."""

from __future__ import annotations

from typing import Sequence

from planck.schemas.chat_template import encode_text, render_prompt
from planck.schemas.rows import Message
from planck.schemas.tokenizer import ENDOFTEXT_ID

ROLES = ("system", "user", "assistant")

# When older turns must be dropped, a quarter of the context (256 of 1024 tokens) is kept free
# for the reply, or max_tokens if that is less.
REPLY_FRACTION = 4


class PromptError(ValueError):
    """A prompt the model cannot take; the message says why, for the user."""


def check_messages(messages: Sequence[Message]) -> None:
    """Refuse conversations the chat template cannot express: empty, unknown roles, misplaced system turns."""
    if not messages:
        raise PromptError("messages is empty: send at least one user message")
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise PromptError(f"messages[{i}].role {m.role!r}: expected one of {', '.join(ROLES)}")
        if m.role == "system" and any(p.role != "system" for p in messages[:i]):
            raise PromptError(f"messages[{i}]: a system message may only open the conversation")
    if messages[-1].role != "user":
        raise PromptError("the last message must be the user's: the model answers it")


def chat_prompt(messages: Sequence[Message], context: int, max_tokens: int) -> tuple[list[int], int]:
    """Ids of the conversation ending in <|assistant_start|>, and how many old messages were dropped to fit.

    Older turns go first, from the front; the system prompt and the current question always stay.
    The prompt is fitted to leave room for min(max_tokens, context / 4) reply tokens; if even the
    system prompt and the question leave no room for one token, PromptError.
    """
    check_messages(messages)
    system = [m for m in messages if m.role == "system"]
    history = list(messages[len(system):-1])
    question = messages[-1]
    budget = context - max(1, min(max_tokens, context // REPLY_FRACTION))
    dropped = 0
    while True:
        ids = render_prompt([*system, *history, question])
        if len(ids) <= budget or not history:
            break
        history.pop(0)
        dropped += 1
        while history and history[0].role != "user":  # a kept history opens with a user turn
            history.pop(0)
            dropped += 1
    if len(ids) >= context:
        raise PromptError(
            f"the prompt is {len(ids)} tokens with only the system prompt and the last message; "
            f"the model's context holds {context}, including the reply"
        )
    return ids, dropped


def completion_prompt(text: str, context: int) -> list[int]:
    """Ids for a base model's plain completion: <|endoftext|> (how every training document starts), then the text."""
    ids = [ENDOFTEXT_ID, *encode_text(text)]
    if len(ids) >= context:
        raise PromptError(f"the prompt is {len(ids)} tokens; the model's context holds {context}, including the reply")
    return ids
