"""GSM8K: a worked solution generated greedily through the serving engine, scored by exact match of the final number."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from planck.schemas.chat_template import encode_text, render_prompt
from planck.schemas.rows import Message, gsm8k_final_number
from planck.schemas.tokenizer import ENDOFTEXT_ID

# Numbers as written in text: an optional minus, digits with thousands commas, an optional
# decimal part. A sentence's closing period is not a decimal point (it needs a digit after it).
NUMBER = re.compile(r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")
# A base model continues with the next made-up question unless told where its answer ends.
BASE_STOP = ("\nQuestion:",)


def normalize_number(text: str) -> str | None:
    """A number as a canonical string: no thousands commas, no trailing decimal zeros ('1,000.50' -> '1000.5')."""
    s = text.replace(",", "").strip()
    if not s or not NUMBER.fullmatch(s):
        return None
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    negative = s.startswith("-")
    s = s.lstrip("-")
    s = s.lstrip("0") or "0"  # '007' -> '7', '0' stays
    if s.startswith("."):
        s = "0" + s
    return "-" + s if negative and s != "0" else s


def final_number(text: str) -> str | None:
    """The model's final answer: the first number after the last '####' (how GSM8K answers end), else the last number in the text."""
    if "####" in text:
        after = NUMBER.findall(text.rsplit("####", 1)[1])
        if after:
            return normalize_number(after[0])
    found = NUMBER.findall(text)
    # A bare '-' or ',' run can't match, but '1,' can: normalize drops the comma.
    return normalize_number(found[-1]) if found else None


def reference_number(answer: str) -> str | None:
    """The reference answer's '#### N' number, normalized the same way."""
    n = gsm8k_final_number(answer)
    return normalize_number(n) if n is not None else None


def prompt_ids(question: str, chat: bool) -> list[int]:
    """A chat model gets the question as a user turn; a base model the plain 'Question: ...\\nAnswer:' completion."""
    if chat:
        return render_prompt([Message("user", question)])
    return [ENDOFTEXT_ID, *encode_text(f"Question: {question.strip()}\nAnswer:")]


@dataclass
class Scored:
    """Per-row predictions and the exact-match accuracy."""

    references: list[str | None]
    predictions: list[str | None]

    @property
    def correct(self) -> int:
        return sum(p is not None and p == r for p, r in zip(self.predictions, self.references))

    @property
    def accuracy(self) -> float | None:
        return self.correct / len(self.references) if self.references else None


def score(answers: Sequence[str], texts: Sequence[str]) -> Scored:
    """Exact match of each generated text's final number against its reference answer's '#### N'."""
    return Scored([reference_number(a) for a in answers], [final_number(t) for t in texts])
