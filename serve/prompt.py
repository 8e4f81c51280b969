"""Prompts as token ids: chat conversations fitted into the context window, and plain text for base models.

Fitting is linear in the conversation's length: each message is tokenized at most once, newest
first, and tokenizing stops as soon as the kept part no longer fits (older messages are never
tokenized). Texts too long to fit whatever they hold are refused before any tokenizing, by their
UTF-8 size: no token of the tokenizer is longer than MAX_TOKEN_BYTES bytes.
"""

from __future__ import annotations

from typing import Sequence

from planck.schemas.chat_template import encode_text
from planck.schemas.rows import Message
from planck.schemas.tokenizer import CHAT_TOKENS, ENDOFTEXT_ID

ROLES = ("system", "user", "assistant")

# When older turns must be dropped, a quarter of the context (256 of 1024 tokens) is kept free
# for the reply, or max_tokens if that is less.
REPLY_FRACTION = 4

# The longest ordinary token of GPT-2's BPE is 128 bytes: a text of n UTF-8 bytes is at least
# n / 128 tokens, so one over 128 x context bytes cannot fit and is refused without tokenizing.
MAX_TOKEN_BYTES = 128

_START = {r: CHAT_TOKENS[f"<|{r}_start|>"] for r in ROLES}
_END = {r: CHAT_TOKENS[f"<|{r}_end|>"] for r in ROLES}
_ASSISTANT_START = CHAT_TOKENS["<|assistant_start|>"]


class PromptError(ValueError):
    """A prompt the model cannot take; the message says why, for the user."""


def check_messages(messages: Sequence[Message]) -> None:
    """Refuse conversations the chat template cannot express: empty, unknown roles, misplaced system turns."""
    if not messages:
        raise PromptError("messages is empty: send at least one user message")
    seen_other = False
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise PromptError(f"messages[{i}].role {m.role!r}: expected one of {', '.join(ROLES)}")
        if m.role == "system" and seen_other:
            raise PromptError(f"messages[{i}]: a system message may only open the conversation")
        seen_other = seen_other or m.role != "system"
    if messages[-1].role != "user":
        raise PromptError("the last message must be the user's: the model answers it")


def _too_long(what: str, n_bytes: int, context: int) -> PromptError:
    return PromptError(f"{what} is {n_bytes} bytes, at least {-(-n_bytes // MAX_TOKEN_BYTES)} tokens; "
                       f"the model's context holds {context}, including the reply")


def _turn(m: Message) -> list[int]:
    return [_START[m.role], *encode_text(m.content), _END[m.role]]


def chat_prompt(messages: Sequence[Message], context: int, max_tokens: int) -> tuple[list[int], int]:
    """Ids of the conversation ending in <|assistant_start|>, and how many old messages were dropped to fit.

    Older turns go first, from the front; the system prompt and the current question always stay,
    and a kept history opens with a user turn. The prompt is fitted to leave room for
    min(max_tokens, context / 4) reply tokens; if even the system prompt and the question leave no
    room for one token, PromptError. The ids equal render_prompt() of the kept messages.
    """
    check_messages(messages)
    n_system = 0
    while messages[n_system].role == "system":
        n_system += 1
    system, history, question = messages[:n_system], messages[n_system:-1], messages[-1]
    fixed_bytes = sum(len(m.content.encode("utf-8")) for m in (*system, question))
    if fixed_bytes > MAX_TOKEN_BYTES * context:
        raise _too_long("the system prompt and the last message", fixed_bytes, context)
    fixed = [ENDOFTEXT_ID]
    for m in system:
        fixed += _turn(m)
    last = [*_turn(question), _ASSISTANT_START]
    budget = context - max(1, min(max_tokens, context // REPLY_FRACTION))
    # Newest first: the longest suffix of the history that fits, tokenizing nothing older.
    room = budget - len(fixed) - len(last)
    turns: list[list[int]] = []  # tokenized history, newest first
    used = 0
    for m in reversed(history):
        if used > room:
            break
        if len(m.content.encode("utf-8")) > MAX_TOKEN_BYTES * (room - used + 2):  # surely over the rest of the room
            used = room + 1
            break
        turns.append(_turn(m))
        used += len(turns[-1])
    # Keep = the old rule: drop the oldest message one at a time, then any that would open the kept
    # history without being a user turn, until it fits. With suffix sizes known, that is the first
    # admissible start whose suffix fits.
    n = len(history)
    suffix = [0] * (len(turns) + 1)  # suffix[j]: tokens of the newest j messages
    for j, t in enumerate(turns):
        suffix[j + 1] = suffix[j] + len(t)
    keep = 0
    for k in range(n - len(turns), n + 1):  # k = index of the first kept message; older ones were not tokenized
        admissible = k == n or k == 0 or history[k].role == "user"
        if admissible and suffix[n - k] <= room:
            keep = n - k
            break
    ids = list(fixed)
    for t in reversed(turns[:keep]):
        ids += t
    ids += last
    if len(ids) >= context:
        raise PromptError(
            f"the prompt is {len(ids)} tokens with only the system prompt and the last message; "
            f"the model's context holds {context}, including the reply"
        )
    return ids, n - keep


def completion_prompt(text: str, context: int) -> list[int]:
    """Ids for a base model's plain completion: <|endoftext|> (how every training document starts), then the text."""
    n_bytes = len(text.encode("utf-8"))
    if n_bytes > MAX_TOKEN_BYTES * context:
        raise _too_long("the prompt", n_bytes, context)
    ids = [ENDOFTEXT_ID, *encode_text(text)]
    if len(ids) >= context:
        raise PromptError(f"the prompt is {len(ids)} tokens; the model's context holds {context}, including the reply")
    return ids


def token_prompt(ids: Sequence[int], context: int, vocab: int) -> list[int]:
    """A prompt given as token ids: <|endoftext|> opens it unless it already does (every training document starts so)."""
    if len(ids) >= context:  # cheap before any copying
        raise PromptError(f"the prompt is {len(ids)} tokens; the model's context holds {context}, including the reply")
    for i, t in enumerate(ids):
        if not 0 <= t < vocab:
            raise PromptError(f"prompt token {i} is {t}: expected 0 to {vocab - 1}")
    full = list(ids) if ids and ids[0] == ENDOFTEXT_ID else [ENDOFTEXT_ID, *ids]
    if len(full) >= context:
        raise PromptError(f"the prompt is {len(full)} tokens; the model's context holds {context}, including the reply")
    return full
