"""The tokenizer contract: GPT-2's byte-pair encoding plus PlanckGPT's chat tokens, and its fingerprint."""

from __future__ import annotations

import functools
import hashlib

import tiktoken

from planck.schemas.errors import PlanckError

# GPT-2's ranks; tiktoken calls them r50k_base (`get_encoding("gpt2")` is the same table
# loaded from another file format). <|endoftext|> = 50256 separates documents.
BASE_ENCODING = "r50k_base"
ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 50256

# Chat tokens follow GPT-2's 50,257 with fixed ids; changing an id changes the
# fingerprint, so old shards are refused instead of silently misread.
CHAT_TOKENS: dict[str, int] = {
    "<|system_start|>": 50257,
    "<|system_end|>": 50258,
    "<|user_start|>": 50259,
    "<|user_end|>": 50260,
    "<|assistant_start|>": 50261,
    "<|assistant_end|>": 50262,
}
VOCAB_SIZE = 50263
PAD_MULTIPLE = 64
PADDED_VOCAB_SIZE = -(-VOCAB_SIZE // PAD_MULTIPLE) * PAD_MULTIPLE  # 50304: the model's embedding rows
TOKENIZER_NAME = "gpt2+planck-chat-v1"


class TokenizerUnavailable(PlanckError, RuntimeError):
    """GPT-2's rank file could neither be downloaded nor found in tiktoken's cache."""


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """GPT-2's encoding extended with the chat tokens (cached per process)."""
    try:
        base = tiktoken.get_encoding(BASE_ENCODING)
    except Exception as exc:  # tiktoken raises requests' errors when offline
        raise TokenizerUnavailable(
            f"cannot load GPT-2's byte-pair ranks ({BASE_ENCODING}): {exc.__class__.__name__}. "
            "Without internet, copy r50k_base.tiktoken into a folder as "
            "0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4 and set TIKTOKEN_CACHE_DIR to it "
            "(`make tokenizer-cache` does this from ../shared/tokenizer)."
        ) from exc
    return tiktoken.Encoding(
        name=TOKENIZER_NAME,
        pat_str=base._pat_str,
        mergeable_ranks=base._mergeable_ranks,
        special_tokens={**base._special_tokens, **CHAT_TOKENS},
    )


@functools.lru_cache(maxsize=1)
def tokenizer_fingerprint() -> bytes:
    """8 bytes that change whenever any rank, special token or id changes."""
    enc = get_tokenizer()
    h = hashlib.sha256(TOKENIZER_NAME.encode())
    for token, rank in sorted(enc._mergeable_ranks.items(), key=lambda kv: kv[1]):
        h.update(rank.to_bytes(4, "little") + len(token).to_bytes(2, "little") + token)
    for name, idx in sorted(enc._special_tokens.items(), key=lambda kv: kv[1]):
        h.update(idx.to_bytes(4, "little") + name.encode())
    return h.digest()[:8]


@functools.lru_cache(maxsize=1)
def token_byte_lengths() -> "np.ndarray":
    """UTF-8 bytes each id stands for, over the padded vocabulary (0 for special and padding ids): bits-per-byte needs it."""
    import numpy as np

    enc = get_tokenizer()
    lengths = np.zeros(PADDED_VOCAB_SIZE, dtype=np.int32)
    for token, rank in enc._mergeable_ranks.items():
        lengths[rank] = len(token)
    return lengths
