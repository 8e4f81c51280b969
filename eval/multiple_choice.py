"""Multiple choice (ARC-Easy, ARC-Challenge, MMLU): which answer letter the model weighs most right after the prompt.

One forward pass per batch, no generation: the prompt is padded on the right to a bucket length
(the model is causal, so padding after the last real token cannot change its logits), the
logits at each row's last real position are restricted to the letters of that row's choices,
and the prediction is the argmax among them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from planck.schemas import rows
from planck.schemas.chat_template import encode_text, multiple_choice_prompt, render_prompt
from planck.schemas.rows import LETTERS, Message, MultipleChoice
from planck.schemas.tokenizer import ENDOFTEXT_ID
from planck.serve.engine import bucket_length, prompt_buckets

# A base model has no chat turn to answer in: the question, then this cue, and the letter follows.
BASE_CUE = "\n\nAnswer:"
PARSERS = {"arc": rows.arc, "mmlu": rows.mmlu}


def letter_ids(chat: bool) -> np.ndarray:
    """Ids of the letters A..J as the answer's first token.

    A chat model's SFT answers are the bare letter right after <|assistant_start|> ("A"); a base
    model continues "Answer:" with a space-led word (" A").
    """
    ids = []
    for letter in LETTERS:
        toks = encode_text(letter if chat else " " + letter)
        if len(toks) != 1:
            raise AssertionError(f"answer letter {letter!r} is {len(toks)} tokens")
        ids.append(toks[0])
    return np.asarray(ids, dtype=np.int32)


def prompt_ids(mc: MultipleChoice, chat: bool) -> list[int]:
    """The prompt of one question: a user turn for chat models, plain text ending in 'Answer:' for base models."""
    text = multiple_choice_prompt(mc)
    if chat:
        return render_prompt([Message("user", text)])
    return [ENDOFTEXT_ID, *encode_text(text + BASE_CUE)]


# The graphdef is static: every scorer of the same model (each task makes one) shares the compilations.
@partial(jax.jit, static_argnums=0)
def _letter_logits(graphdef, params, tokens_BxT, last_B, letters_L):
    model = nnx.merge(graphdef, params)
    logits_BxTxV = model(tokens_BxT)
    at_BxV = logits_BxTxV[jnp.arange(tokens_BxT.shape[0]), last_B]
    return at_BxV[:, letters_L]


class LetterScorer:
    """Compiled scoring of padded prompt batches: one compilation per (batch size, bucket length)."""

    def __init__(self, loaded, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._graphdef, self._params = nnx.split(loaded.model)
        self.context = loaded.config.seq_len
        self.buckets = prompt_buckets(self.context)
        self.batch_size = batch_size

    def bucket(self, n: int) -> int:
        """The padded length of a prompt of n tokens."""
        return bucket_length(n, self.buckets)

    def __call__(self, prompts: Sequence[Sequence[int]], letters: np.ndarray, progress=None) -> np.ndarray:
        """Logits (N, len(letters)) of the letters after each prompt (each at most the context long)."""
        out = np.zeros((len(prompts), len(letters)), dtype=np.float32)
        by_bucket: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            if not 1 <= len(p) <= self.context:
                raise ValueError(f"prompt {i} is {len(p)} tokens; expected 1 to {self.context}")
            by_bucket.setdefault(self.bucket(len(p)), []).append(i)
        B = self.batch_size
        for size in sorted(by_bucket):
            rows_ = by_bucket[size]
            for start in range(0, len(rows_), B):
                chunk = rows_[start : start + B]
                # Always B rows: a short last batch is padded with dummy rows, so no new shape compiles.
                tokens = np.full((B, size), ENDOFTEXT_ID, dtype=np.int32)
                last = np.zeros(B, dtype=np.int32)
                for r, i in enumerate(chunk):
                    tokens[r, : len(prompts[i])] = prompts[i]
                    last[r] = len(prompts[i]) - 1
                got = np.asarray(_letter_logits(self._graphdef, self._params, tokens, last, letters))
                out[chunk] = got[: len(chunk)]
                if progress is not None:
                    progress.update(len(chunk))
        return out


def letter_logits(loaded, prompts: Sequence[Sequence[int]], letters: np.ndarray, batch_size: int, progress=None) -> np.ndarray:
    """Logits (N, len(letters)) of the answer letters at the end of each prompt (tests replace this to steer answers)."""
    return LetterScorer(loaded, batch_size)(prompts, letters, progress)


@dataclass
class Scored:
    """Predictions of the scored rows and what they add up to."""

    predictions: list[int]  # index of the chosen letter, per scored row
    answers: list[int]
    n_choices: list[int]

    @property
    def correct(self) -> int:
        return sum(p == a for p, a in zip(self.predictions, self.answers))

    @property
    def accuracy(self) -> float | None:
        return self.correct / len(self.answers) if self.answers else None

    @property
    def baseline(self) -> float | None:
        """What guessing at random scores on these rows: the mean of 1 / number of choices."""
        return float(np.mean([1.0 / k for k in self.n_choices])) if self.n_choices else None


def score(items: Sequence[MultipleChoice], logits_NxL: np.ndarray) -> Scored:
    """The argmax among each row's own letters (a 3-choice row can never be answered 'D')."""
    logits = np.asarray(logits_NxL, dtype=np.float32)
    preds = []
    for mc, row in zip(items, logits):
        preds.append(int(np.argmax(row[: len(mc.choices)])))
    return Scored(preds, [mc.answer for mc in items], [len(mc.choices) for mc in items])


def evaluate(items: Sequence[MultipleChoice], loaded, batch_size: int, progress=None) -> tuple[Scored, list[int], int]:
    """Score the rows that fit the context: (scored, indices of the scored rows, rows too long to score)."""
    chat = loaded.is_chat
    prompts = [prompt_ids(mc, chat) for mc in items]
    # Cutting the start of a prompt would cut the question; rows longer than the context are counted, not scored.
    kept = [i for i, p in enumerate(prompts) if len(p) <= loaded.config.seq_len]
    if progress is not None and len(kept) < len(items):
        progress.total = len(kept)
        progress.refresh()
    logits = letter_logits(loaded, [prompts[i] for i in kept], letter_ids(chat), batch_size, progress)
    return score([items[i] for i in kept], logits), kept, len(items) - len(kept)
