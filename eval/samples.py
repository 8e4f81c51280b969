"""Fixed sample prompts: what the model says, to read beside the scores (greedy, and one sampled with a fixed seed)."""

from __future__ import annotations

from dataclasses import dataclass

MAX_NEW_TOKENS = 64


@dataclass(frozen=True)
class SamplePrompt:
    text: str
    temperature: float = 0.0  # 0 = greedy: the same text on every run of the same weights


PROMPTS: tuple[SamplePrompt, ...] = (
    SamplePrompt("The capital of France is"),
    SamplePrompt("Why is the sky blue?"),
    SamplePrompt("Write a haiku about the sea."),
    SamplePrompt("What is 12 + 7?"),
    SamplePrompt("Who are you?"),
    SamplePrompt("Tell me a short story about a robot.", temperature=0.7),
)


def prompt_ids(text: str, chat: bool, context: int) -> list[int]:
    """A chat turn for chat models, plain text after <|endoftext|> for base models (as `planck chat` does)."""
    from planck.schemas.rows import Message
    from planck.serve.prompt import chat_prompt, completion_prompt

    if chat:
        return chat_prompt([Message("user", text)], context, MAX_NEW_TOKENS)[0]
    return completion_prompt(text, context)
