"""The tokenizer contract: GPT-2's byte-pair encoding plus PlanckGPT's chat tokens, and its fingerprint."""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from pathlib import Path

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


# tiktoken's file for r50k_base: its sha256 (tiktoken checks the same), and the name tiktoken's
# cache gives it (the sha1 of its download URL).
BPE_FILE_NAME = "r50k_base.tiktoken"
BPE_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
BPE_CACHE_KEY = "0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4"
BPE_FILE_ENV = "PLANCK_BPE_FILE"


def bpe_file_candidates() -> list[Path]:
    """Where a copy of GPT-2's rank file is looked for before tiktoken downloads it, first match wins."""
    found = [Path(os.environ[BPE_FILE_ENV])] if os.environ.get(BPE_FILE_ENV) else []
    cache = os.environ.get("TIKTOKEN_CACHE_DIR")
    if cache:
        found.append(Path(cache) / BPE_CACHE_KEY)
    # The checkout this code runs from (editable install) and the working directory: the
    # Makefile's cache, and the offline copy in ../shared/tokenizer beside the checkout.
    for root in dict.fromkeys([Path(__file__).resolve().parents[1], Path.cwd()]):
        found += [root / ".cache" / "tiktoken" / BPE_CACHE_KEY, root.parent / "shared" / "tokenizer" / BPE_FILE_NAME]
    return found


def _local_ranks() -> dict[bytes, int] | None:
    """GPT-2's ranks from the first local copy whose sha256 is right; None when there is none."""
    named = os.environ.get(BPE_FILE_ENV)
    for path in bpe_file_candidates():
        try:
            data = path.read_bytes()
        except OSError:
            if named and path == Path(named):
                raise TokenizerUnavailable(f"{path} ({BPE_FILE_ENV}): cannot be read") from None
            continue
        if hashlib.sha256(data).hexdigest() != BPE_SHA256:
            if named and path == Path(named):
                raise TokenizerUnavailable(f"{path} ({BPE_FILE_ENV}): not GPT-2's {BPE_FILE_NAME} (its sha256 differs)")
            continue  # a stale or partial copy elsewhere: keep looking
        # tiktoken's format: one "base64(token) rank" pair per line.
        return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines() if line)}
    return None


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """GPT-2's encoding extended with the chat tokens (cached per process)."""
    ranks = _local_ranks()
    if ranks is None:
        try:
            base = tiktoken.get_encoding(BASE_ENCODING)
        except Exception as exc:  # tiktoken raises requests' errors when offline
            looked = ", ".join(str(p) for p in bpe_file_candidates())
            raise TokenizerUnavailable(
                f"cannot load GPT-2's byte-pair ranks ({BASE_ENCODING}): the download failed "
                f"({exc.__class__.__name__}) and no local copy was found (looked in: {looked}). "
                f"Without internet, get {BPE_FILE_NAME} (sha256 {BPE_SHA256[:12]}...) and set "
                f"{BPE_FILE_ENV}=/path/to/{BPE_FILE_NAME}."
            ) from None
        ranks, pat_str, specials = base._mergeable_ranks, base._pat_str, base._special_tokens
    else:
        from tiktoken_ext.openai_public import r50k_pat_str  # the pattern tiktoken pairs with these ranks

        pat_str, specials = r50k_pat_str, {ENDOFTEXT: ENDOFTEXT_ID}
    return tiktoken.Encoding(
        name=TOKENIZER_NAME,
        pat_str=pat_str,
        mergeable_ranks=ranks,
        special_tokens={**specials, **CHAT_TOKENS},
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
