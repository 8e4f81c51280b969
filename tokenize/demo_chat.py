"""The built-in demo chat set: a few hundred conversations generated offline, for the demo's SFT phase.

Three kinds, all deterministic (fixed seeds, Python's own help topics), short enough to fit the
tiny preset's 64-token windows:
- greetings and questions about the assistant, written here;
- arithmetic with small numbers ("What is 17 + 25?" -> "17 + 25 = 42."), one or two turns;
- questions about Python's statements and concepts, answered with the opening sentence of
  Python's own help topic (`pydoc_data.topics`, the same prose the demo pretrains on).
"""

from __future__ import annotations

import random
import re
from typing import Iterator

NAME = "demo_chat"

_SMALL_TALK = [
    ("Hello!", "Hello! I am PlanckGPT, a small language model. How can I help?"),
    ("Hi there.", "Hi! Ask me about Python or give me a sum to work out."),
    ("Good morning!", "Good morning! What would you like to know?"),
    ("Who are you?", "I am PlanckGPT, a small GPT trained from scratch with JAX."),
    ("What is your name?", "My name is PlanckGPT."),
    ("What can you do?", "I can answer short questions about Python and do simple arithmetic."),
    ("Are you a person?", "No, I am a small language model, not a person."),
    ("Who made you?", "I was trained with the PlanckGPT kit, on text that ships with Python."),
    ("Thank you!", "You are welcome!"),
    ("Thanks a lot.", "Glad to help."),
    ("Goodbye.", "Goodbye! Come back any time."),
    ("How are you?", "I am doing well, thank you. What can I do for you?"),
    ("Can you help me with Python?", "Yes. Ask me about a statement or a built-in type."),
    ("Are you always right?", "No. I am a small model and I make mistakes, so check what I say."),
    ("What did you learn from?", "I learned from Python's documentation and a few example conversations."),
    ("Tell me a fact.", "Python was first released in 1991."),
]

_ASK = ["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "How much is {a} {op} {b}?", "{a} {op} {b} = ?"]
_TOPIC_ASK = ["What does {name} mean in Python?", "Tell me about {name} in Python.", "Explain {name} in Python."]
_MAX_ANSWER_CHARS = 160


def _arithmetic(rng: random.Random) -> tuple[str, str]:
    op = rng.choice("+-*")
    a, b = (rng.randint(2, 12), rng.randint(2, 12)) if op == "*" else (rng.randint(1, 99), rng.randint(1, 99))
    if op == "-" and b > a:
        a, b = b, a
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return rng.choice(_ASK).format(a=a, op=op, b=b), f"{a} {op} {b} = {value}."


def _first_sentence(text: str) -> str | None:
    """The first prose sentence of a help topic, after its underlined title."""
    body = text.split("\n\n", 1)[1] if "\n\n" in text else text
    paragraph = " ".join(body.strip().split("\n\n", 1)[0].split())
    sentence = re.split(r"(?<=[.:])\s", paragraph, maxsplit=1)[0].rstrip(".:") + "."
    if len(sentence) < 20 or len(sentence) > _MAX_ANSWER_CHARS or "::=" in sentence or sentence.startswith(("New in", "Changed in")):
        return None
    return sentence


def _topics() -> Iterator[tuple[str, str]]:
    from pydoc_data.topics import topics

    for key in sorted(topics):
        answer = _first_sentence(topics[key])
        if answer:
            title = topics[key].split("\n", 1)[0].strip()
            yield (title[0].lower() + title[1:] if title.startswith("The ") else key.replace("-", " ")), answer


def demo_chat_rows() -> Iterator[dict]:
    """Rows {"messages": [...]} in the conversation format, always the same ones in the same order."""
    rng = random.Random(44)
    rows: list[list[tuple[str, str]]] = [[pair] for pair in _SMALL_TALK] * 4
    for name, answer in _topics():
        for template in _TOPIC_ASK:
            rows.append([(template.format(name=name), answer)])
    for _ in range(200):
        rows.append([_arithmetic(rng)])
    for _ in range(60):  # two turns: the model sees a follow-up question in context
        rows.append([_arithmetic(rng), _arithmetic(rng)])
    rng.shuffle(rows)
    for i, turns in enumerate(rows):
        messages = []
        for question, answer in turns:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        yield {"messages": messages, "id": f"{NAME}:{i}"}


def describe() -> str:
    """Where the demo chat set comes from (recorded in the manifest)."""
    return "builtin: demo chat set (small talk, arithmetic, Python help-topic questions; generated offline)"
