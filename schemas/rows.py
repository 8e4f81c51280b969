"""Input rows: the pyarrow schema of each dataset kind, and the validation that turns a raw row into a conversation or a skip reason."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

import pyarrow as pa

# --- pyarrow schemas: the columns we read. Extra columns are allowed and ignored. ---

# Fineweb-edu's columns; only `text` is required, `id`/`url`/`score` are kept as metadata.
PRETRAIN_DOCUMENT = pa.schema(
    [
        ("text", pa.string()),
        ("id", pa.string()),
        ("dump", pa.string()),
        ("url", pa.string()),
        ("language", pa.string()),
        ("language_score", pa.float64()),
        ("token_count", pa.int64()),
        ("score", pa.float64()),
        ("int_score", pa.int64()),
    ]
)
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
# `label` (optional, KTO-style): false marks the reply as undesirable, and the row is skipped.
CONVERSATION = pa.schema([("messages", pa.list_(MESSAGE)), ("label", pa.bool_())])
MMLU = pa.schema(
    [
        ("question", pa.string()),
        ("subject", pa.string()),
        ("choices", pa.list_(pa.string())),
        ("answer", pa.int64()),
    ]
)
GSM8K = pa.schema([("question", pa.string()), ("answer", pa.string())])
ARC = pa.schema(
    [
        ("id", pa.string()),
        ("question", pa.string()),
        ("choices", pa.struct([("text", pa.list_(pa.string())), ("label", pa.list_(pa.string()))])),
        ("answerKey", pa.string()),
    ]
)
# The identity file is JSON, not a table: a list of conversations, each either a list of
# {role, content} messages or an object {"messages": [...]}.
SCHEMAS: dict[str, pa.Schema] = {
    "pretrain": PRETRAIN_DOCUMENT,
    "conversation": CONVERSATION,
    "mmlu": MMLU,
    "gsm8k": GSM8K,
    "arc": ARC,
    "identity": CONVERSATION,
}
CHAT_FORMATS = ("conversation", "mmlu", "gsm8k", "arc", "identity")
# Columns a table must have for its rows to be usable at all (any one alternative).
REQUIRED_COLUMNS: dict[str, list[tuple[str, ...]]] = {
    "pretrain": [("text",)],
    "conversation": [("messages",)],
    "identity": [("messages",)],
    "mmlu": [("question", "choices", "answer"), ("train",)],  # ("train",): the older auxiliary_train config
    "gsm8k": [("question", "answer")],
    "arc": [("question", "choices", "answerKey")],
}
ROLES = ("system", "user", "assistant")
_AN = {"arc", "identity", "mmlu"}  # formats said with a vowel sound: an ARC, an identity, an MMLU source
LETTERS = "ABCDEFGHIJ"


def missing_columns(fmt: str, columns: list[str]) -> list[str]:
    """Required columns of `fmt` that a table lacks ([] when some alternative is complete)."""
    have = set(columns)
    gaps = [[c for c in alt if c not in have] for alt in REQUIRED_COLUMNS[fmt]]
    return [] if any(not g for g in gaps) else gaps[0]


def source_kind(fmt: str) -> str:
    """'a pretrain source', 'an arc source': the format with its article, for messages."""
    return f"{'an' if fmt in _AN else 'a'} {fmt} source"


class RowError(ValueError):
    """A row that cannot be used; `reason` is a short stable code counted in the manifest."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class MultipleChoice:
    """A question with lettered choices; `answer` is the index of the right one."""

    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str = ""


def _field(row: Mapping[str, Any], name: str) -> Any:
    if not isinstance(row, Mapping):
        raise RowError("not_a_record", type(row).__name__)
    if name not in row:
        raise RowError(f"missing_column:{name}")
    if row[name] is None:
        raise RowError(f"null:{name}")
    return row[name]


def _text(row: Mapping[str, Any], name: str) -> str:
    value = _field(row, name)
    if not isinstance(value, str):
        raise RowError(f"non_string:{name}", type(value).__name__)
    if not value.strip():
        raise RowError(f"empty:{name}")
    return value


def pretrain_text(row: Mapping[str, Any]) -> str:
    """The document text of a pretraining row, or RowError."""
    return _text(row, "text")


def conversation(row: Any) -> list[Message]:
    """Validate a conversation row ({"messages": [...]} or a bare list of messages); a KTO `label` of false is refused."""
    if isinstance(row, Mapping) and row.get("label") is not None:
        label = row["label"]
        if label is False or (type(label) is int and label == 0):
            raise RowError("undesirable_label", "label false: the reply is an example of what not to say")
        if not (label is True or (type(label) is int and label == 1)):
            raise RowError("bad_label", repr(label))
    messages = row if isinstance(row, list) else _field(row, "messages")
    if not isinstance(messages, list) or not messages:
        raise RowError("empty_conversation")
    out: list[Message] = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise RowError("bad_message", f"message {i} is {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise RowError("unknown_role", repr(role))
        if not isinstance(content, str):
            raise RowError("non_string:content", f"message {i}")
        out.append(Message(role, content))
    if out[0].role == "system":
        body = out[1:]
    else:
        body = out
    if any(m.role == "system" for m in body):
        raise RowError("misplaced_system", "a system message may only open the conversation")
    if not body:
        raise RowError("empty_conversation", "only a system message")
    for i, m in enumerate(body):
        if m.role != ("user" if i % 2 == 0 else "assistant"):
            raise RowError("roles_not_alternating")
    if body[-1].role != "assistant":
        raise RowError("no_final_assistant")
    if any(not m.content.strip() for m in body):
        raise RowError("empty:content")
    return out


def mmlu(row: Mapping[str, Any]) -> MultipleChoice:
    """Validate an MMLU row; the older `auxiliary_train` config nests the fields under `train`."""
    if isinstance(row, Mapping) and "question" not in row and isinstance(row.get("train"), Mapping):
        row = row["train"]
    question = _text(row, "question")
    choices = _field(row, "choices")
    if not isinstance(choices, (list, tuple)) or not 2 <= len(choices) <= len(LETTERS):
        raise RowError("bad_choices")
    if not all(isinstance(c, str) and c.strip() for c in choices):
        raise RowError("bad_choices", "empty or non-string choice")
    answer = _field(row, "answer")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise RowError("bad_answer_index", repr(answer))
    subject = row.get("subject") or ""
    return MultipleChoice(question, tuple(choices), answer, str(subject))


def arc(row: Mapping[str, Any]) -> MultipleChoice:
    """Validate an ARC row: choices {text, label} and an answerKey among the labels."""
    question = _text(row, "question")
    choices = _field(row, "choices")
    if not isinstance(choices, Mapping):
        raise RowError("bad_choices")
    texts, labels = choices.get("text"), choices.get("label")
    if (
        not isinstance(texts, (list, tuple))
        or not isinstance(labels, (list, tuple))
        or len(texts) != len(labels)
        or not 2 <= len(texts) <= len(LETTERS)
        or not all(isinstance(t, str) and t.strip() for t in texts)
    ):
        raise RowError("bad_choices")
    key = _field(row, "answerKey")
    if key not in labels:
        raise RowError("bad_answer_index", f"answerKey {key!r} not in {list(labels)}")
    return MultipleChoice(question, tuple(texts), list(labels).index(key))


GSM8K_FINAL = re.compile(r"####\s*(-?[\d,]*\.?\d+)\s*$")
GSM8K_CALCULATOR = re.compile(r"<<[^>]*>>")


def gsm8k(row: Mapping[str, Any]) -> tuple[str, str]:
    """Validate a GSM8K row: (question, worked answer ending in `#### N`, calculator notes removed)."""
    question = _text(row, "question")
    answer = _text(row, "answer").strip()
    if not GSM8K_FINAL.search(answer):
        raise RowError("no_final_number", "answer lacks '#### N'")
    return question, GSM8K_CALCULATOR.sub("", answer)


def gsm8k_final_number(answer: str) -> str | None:
    """The number after `####` in a GSM8K answer, without thousands separators."""
    m = GSM8K_FINAL.search(answer.strip())
    return m.group(1).replace(",", "") if m else None
