"""Helpers several test files share (on sys.path through pytest's `pythonpath = ["tests"]`)."""

from __future__ import annotations

import json
import time
from pathlib import Path


def bins(folder: Path) -> dict[str, bytes]:
    """Every shard file of a folder by name, as bytes (for byte-identical comparisons)."""
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.bin"))}


def without_command(m: dict) -> dict:
    """A manifest without its recorded command line (which differs between runs that must otherwise match)."""
    m = json.loads(json.dumps(m))
    m["made_by"].pop("command")
    return m


def loss_fn(model, batch):
    """Mean cross-entropy over the masked positions (0 when none is trained on)."""
    import jax.numpy as jnp

    from planck.model.loss import token_loss_sum

    loss_sum, n_tokens = token_loss_sum(model, batch)
    return loss_sum / jnp.maximum(n_tokens, 1.0)


def check_vocab() -> None:
    """Assert the loaded tables agree with the fixed ids the tokenizer contract promises."""
    from planck.schemas.tokenizer import ENDOFTEXT_ID, VOCAB_SIZE, TokenizerUnavailable, get_tokenizer

    enc = get_tokenizer()
    if enc.n_vocab != VOCAB_SIZE or enc.eot_token != ENDOFTEXT_ID:
        raise TokenizerUnavailable(f"unexpected GPT-2 table: {enc.n_vocab} tokens, <|endoftext|>={enc.eot_token}")


def wait_idle(batcher, timeout: float = 10.0) -> bool:
    """True once no slot of the batcher is busy and nothing waits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        load = batcher.load()
        if not load["busy"] and not load["waiting"]:
            return True
        time.sleep(0.01)
    return False


def embedded_shards(folder: Path, max_tokens: str, val_tokens: str, shard_tokens: str) -> Path:
    """Pretraining shards of the embedded corpus written by `planck tokenize pretrain` into `folder` (returned)."""
    from planck.cli import main

    assert main(["tokenize", "pretrain", "--source", "embedded", "--out", str(folder), "--max-tokens", max_tokens,
                 "--val-tokens", val_tokens, "--shard-tokens", shard_tokens, "--workers", "1", "--quiet"]) == 0
    return folder
