"""Work done in the tokenizer's worker processes: validate rows and turn them into token (and role) arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

from planck.schemas.chat_template import render_conversation, to_conversation
from planck.schemas.rows import RowError, pretrain_text
from planck.schemas.tokenizer import ENDOFTEXT_ID, get_tokenizer

# A result per row: token ids (and role ids for chat) or the reason the row was skipped.
PretrainResult = np.ndarray | str
ChatResult = tuple[np.ndarray, np.ndarray] | str


def encode_pretrain_batch(batch: list[Any]) -> list[PretrainResult]:
    """<|endoftext|> + the ordinary tokens of each row's text, or a skip reason."""
    enc = get_tokenizer()
    out: list[PretrainResult] = []
    for row in batch:
        try:
            text = pretrain_text(row)
        except RowError as exc:
            out.append(exc.reason)
            continue
        # encode_to_numpy with no special tokens allowed or disallowed is encode_ordinary
        # (special-token text stays plain text) without building a Python list: ~8% faster.
        ids = enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())
        arr = np.empty(len(ids) + 1, dtype=np.uint16)
        arr[0] = ENDOFTEXT_ID
        arr[1:] = ids
        out.append(arr)
    return out


def render_chat_batch(job: tuple[str, list[Any]]) -> list[ChatResult]:
    """Each row of one chat format rendered through the chat template, or a skip reason."""
    fmt, batch = job
    out: list[ChatResult] = []
    for row in batch:
        try:
            out.append(render_conversation(to_conversation(fmt, row)))
        except RowError as exc:
            out.append(exc.reason)
    return out
