"""`planck chat`'s terminal loop: read a line, stream the model's reply, handle /commands.

Chat models get the chat template and (by default) remember the conversation; base models
continue each line as plain text. Ctrl-C stops a reply (its engine slot is freed), Ctrl-D leaves.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, TextIO

from planck.model.weights import LoadedModel
from planck.schemas.rows import Message

from .batcher import Batcher, Finished, SamplingParams, TextDelta
from .prompt import PromptError, chat_prompt, completion_prompt

CLEAR_SCREEN = "\x1b[2J\x1b[H"
HINT = "/help for commands, Ctrl-C stops a reply, Ctrl-D or /quit leaves"
# What a prompt holds besides the conversation: <|endoftext|> opening it, and an empty question's
# <|user_start|> <|user_end|> <|assistant_start|>.
PROMPT_FRAME_TOKENS = 4


@dataclass
class ReplSettings:
    """What `planck chat` starts with; /commands change it during the session."""

    params: SamplingParams
    system: str | None = None
    memory: bool = True


# ---- terminal output ---------------------------------------------------------------------------


class Style:
    """ANSI styling, or plain text when disabled (not a terminal, or NO_COLOR set)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def _wrap(self, code: str, text: str, readline: bool = False) -> str:
        if not self.enabled:
            return text
        start, end = f"\x1b[{code}m", "\x1b[0m"
        if readline:  # readline must be told which prompt bytes take no columns, or line editing misplaces the cursor
            start, end = f"\001{start}\002", f"\001{end}\002"
        return f"{start}{text}{end}"

    def dim(self, text: str) -> str:
        return self._wrap("2", text)

    def bold(self, text: str) -> str:
        return self._wrap("1", text)

    def error(self, text: str) -> str:
        return self._wrap("31", text)

    def user(self, text: str, readline: bool = False) -> str:
        return self._wrap("1;32", text, readline)

    def model(self, text: str) -> str:
        return self._wrap("1;36", text)


# A model can emit any byte, including escape sequences that would repaint or retitle the
# terminal: show control characters (except newline and tab) as harmless symbols instead.
_CONTROL = {c: 0x2400 + c for c in range(32) if chr(c) not in "\n\t"}
_CONTROL |= {0x7F: 0x2421} | {c: 0xFFFD for c in range(0x80, 0xA0)}


def printable(text: str) -> str:
    """Model text made safe to print: control characters become visible symbols."""
    return text.translate(_CONTROL)


def _count(n: int) -> str:
    """12345678 -> '12.3M' (parameter counts in the banner)."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


# ---- the session -------------------------------------------------------------------------------


@dataclass
class Session:
    """One terminal conversation: the model, the settings and what has been said so far."""

    batcher: Batcher
    loaded: LoadedModel
    settings: ReplSettings
    out: TextIO
    style: Style
    history: list[Message] = field(default_factory=list)  # user/assistant turns; the system prompt is kept apart

    @property
    def context(self) -> int:
        return self.batcher.engine.context

    @property
    def is_chat(self) -> bool:
        return self.loaded.is_chat

    def write(self, text: str) -> None:
        # Flushed every time: replies are streamed piece by piece.
        self.out.write(text)
        self.out.flush()

    def say(self, text: str = "") -> None:
        self.write(text + "\n")

    def note(self, text: str) -> None:
        self.say(self.style.dim(text))

    def error(self, text: str) -> None:
        self.say(self.style.error(text))

    def banner(self) -> None:
        meta = self.loaded.meta
        facts = [str(meta.get("phase", "?")), f"step {meta.get('step', '?')}"]
        if meta.get("parameters"):
            facts.append(f"{_count(int(meta['parameters']))} parameters")
        facts.append(f"context {self.context}")
        self.say(self.style.bold(f"planck chat: {self.loaded.name}") + f" ({', '.join(facts)})")
        if self.is_chat:
            self.say(f"chat model, memory {'on' if self.settings.memory else 'off'}")
        else:
            self.say("base model: plain completion (each line is continued on its own)")
        if self.is_chat and self.settings.system:
            self.say(f"system prompt: {self.settings.system}")
        self.note(HINT)

    def prompt_label(self) -> str:
        return "you> " if self.is_chat else "text> "

    # ---- one question ------------------------------------------------------------------------

    def ask(self, text: str) -> None:
        """Send one line to the model and stream the reply (remembering it when memory is on)."""
        try:
            ids, dropped = self._prompt(text)
        except PromptError as exc:
            self.error(str(exc))
            return
        if dropped:
            self.note(f"[dropped {dropped} old message{'s' if dropped != 1 else ''} to fit the context]")
            del self.history[:dropped]
        reply, reason = self._stream_reply(ids)
        # A stopped reply is remembered as far as it got (that is what the user saw); one stopped
        # before any text, or failed, is not: the question was most likely abandoned.
        kept = reason != "error" and (reply or reason != "interrupted")
        if self.is_chat and self.settings.memory and kept:
            self.history += [Message("user", text), Message("assistant", reply)]

    def _prompt(self, text: str) -> tuple[list[int], int]:
        """Prompt ids for `text` and how many remembered messages had to be dropped to fit."""
        if not self.is_chat:
            return completion_prompt(text, self.context), 0
        history = self.history if self.settings.memory else []
        messages = [*self.system_messages(), *history, Message("user", text)]
        return chat_prompt(messages, self.context, self.settings.params.max_tokens)

    def system_messages(self) -> list[Message]:
        """The system prompt as the conversation's first message, if one is set."""
        return [Message("system", self.settings.system)] if self.settings.system else []

    def _stream_reply(self, ids: list[int]) -> tuple[str, str]:
        """Print the reply as it arrives; returns its text and why it ended ('interrupted' on Ctrl-C)."""
        self.write(self.style.model("planck> "))
        parts: list[str] = []
        reason, error = "interrupted", None
        events = self.batcher.stream(ids, self.settings.params)
        try:
            for event in events:
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                    self.write(printable(event.text))
                elif isinstance(event, Finished):
                    reason, error = event.reason, event.error
        except KeyboardInterrupt:
            pass
        except (ValueError, RuntimeError) as exc:  # refused at submission (engine shut down, say)
            reason, error = "error", str(exc)
        finally:
            events.close()  # still running (Ctrl-C): cancels the request, and the engine frees its slot
        reply = "".join(parts)
        if not reply.endswith("\n"):
            self.say()
        if reason == "interrupted":
            self.note("[stopped]")
        elif reason == "length":
            self.note("[stopped: length limit]")
        elif reason == "error":
            self.error(f"[error: {error or 'the engine failed'}]")
        return reply, reason

    # ---- what /show prints -------------------------------------------------------------------

    def context_use(self) -> tuple[int, int]:
        """Tokens of the conversation the model sees before the next question, and how many old messages no longer fit."""
        # Fitted as the next question will be (chat_prompt, with that question still empty), not counted
        # whole: the last reply may have run to the end of the context (and its text may take more tokens
        # re-read than it took generated), and a system prompt or max_tokens set since may leave less room.
        # PromptError when the system prompt alone leaves no room.
        history = self.history if self.settings.memory else []
        messages = [*self.system_messages(), *history, Message("user", "")]
        ids, dropped = chat_prompt(messages, self.context, self.settings.params.max_tokens)
        return len(ids) - PROMPT_FRAME_TOKENS, dropped


# ---- commands ----------------------------------------------------------------------------------

# A handler gets the session and the text after the command name; it returns True to leave.
Handler = Callable[[Session, str], "bool | None"]


@dataclass(frozen=True)
class Command:
    """A /command: how to type it, one line of help, and what it does."""

    usage: str
    help: str
    run: Handler


def cmd_help(s: Session, arg: str) -> None:
    """/help: one line per command, then the aliases."""
    width = max(len(c.usage) for c in COMMANDS.values())
    for c in COMMANDS.values():
        s.say(f"  {c.usage.ljust(width)}  {c.help}")
    s.say("aliases (the original PlanckGPT's memory commands among them):")
    for alias, target in ALIASES.items():
        s.say(f"  {alias.ljust(width)}  same as {target}")
    s.note(f"  anything else is sent to the model. {HINT}")


def cmd_clear(s: Session, arg: str) -> None:
    """/clear: clear the screen, nothing else."""
    s.write(CLEAR_SCREEN)


def cmd_memory(s: Session, arg: str) -> None:
    """/memory [on|off]: switch multi-turn context, or show whether it is on."""
    if not s.is_chat:
        s.say("memory is unavailable for base models: each line is completed on its own")
        return
    if arg in ("on", "off"):
        s.settings.memory = arg == "on"
    elif arg:
        s.error("usage: /memory on|off")
        return
    if s.settings.memory:
        s.say(f"memory on: the conversation is remembered ({len(s.history)} messages so far)")
    else:
        s.say("memory off: each question is answered on its own")


def cmd_reset(s: Session, arg: str) -> None:
    """/reset: forget the conversation, keep the system prompt."""
    s.history.clear()
    s.say("conversation forgotten" + (" (system prompt kept)" if s.settings.system else ""))


def cmd_show(s: Session, arg: str) -> None:
    """/show: the remembered conversation and how much of the context it fills."""
    if not s.is_chat:
        s.say("no conversation: base models complete each line on its own")
        return
    messages = [*s.system_messages(), *s.history]
    if not messages:
        s.say("(empty conversation)")
    for m in messages:
        s.say(f"{s.style.bold(m.role + ':')} {printable(m.content)}")
    try:
        seen, dropped = s.context_use()
    except PromptError:
        s.note(f"[the system prompt alone fills the {s.context}-token context: every question will be refused; "
               "/system shortens it]")
        return
    if not s.settings.memory:
        s.note(f"[{seen} of {s.context} context tokens; memory off: the model sees "
               f"{'the system prompt and ' if s.settings.system else ''}each question alone]")
        return
    left_out = ""
    if dropped == 1:
        left_out = "; the oldest message no longer fits and will be left out"
    elif dropped:
        left_out = f"; the oldest {dropped} messages no longer fit and will be left out"
    s.note(f"[{seen} of {s.context} context tokens before your next message{left_out}; memory on]")


def cmd_system(s: Session, arg: str) -> None:
    """/system [TEXT]: set or clear the system prompt."""
    if not s.is_chat:
        s.say("system prompts are unavailable for base models")
        return
    s.settings.system = arg or None
    s.say(f"system prompt set: {arg}" if arg else "system prompt cleared")


def setting(usage: str, help: str, name: str, parse: Callable[[str], object]) -> Command:
    """A command that sets one SamplingParams field, keeping the old value if the new one is refused."""

    def run(s: Session, arg: str) -> None:
        try:
            value = parse(arg)
        except ValueError:
            s.error(f"usage: {usage}")
            return
        params = dataclasses.replace(s.settings.params, **{name: value})
        try:
            params.validate()
        except ValueError as exc:
            s.error(f"{exc} (kept {getattr(s.settings.params, name)})")
            return
        s.settings.params = params
        s.say(f"{name} = {'random' if value is None else value}")

    return Command(usage, help, run)


def _seed(text: str) -> int | None:
    # "off" goes back to a fresh random seed per reply.
    return None if text == "off" else int(text)


def cmd_settings(s: Session, arg: str) -> None:
    """/settings: sampling settings, memory and system prompt."""
    p = s.settings.params
    s.say(f"temperature {p.temperature:g}, top_k {p.top_k}, top_p {p.top_p:g}, max_tokens {p.max_tokens}, "
          f"seed {'random' if p.seed is None else p.seed}")
    if s.is_chat:
        s.say(f"memory {'on' if s.settings.memory else 'off'}, system prompt: {s.settings.system or '(none)'}")


def cmd_quit(s: Session, arg: str) -> bool:
    """/quit: leave."""
    return True


COMMANDS: dict[str, Command] = {
    "/help": Command("/help", "list these commands", cmd_help),
    "/clear": Command("/clear", "clear the screen (the conversation stays)", cmd_clear),
    "/memory": Command("/memory [on|off]", "remember the conversation, or answer each question on its own", cmd_memory),
    "/reset": Command("/reset", "forget the conversation (the system prompt stays)", cmd_reset),
    "/show": Command("/show", "print the remembered conversation and how many context tokens of it the model sees", cmd_show),
    "/system": Command("/system [TEXT]", "set the system prompt (empty: clear it)", cmd_system),
    "/temp": setting("/temp X", "sampling temperature (0 = greedy)", "temperature", float),
    "/topk": setting("/topk N", "sample among the N likeliest tokens", "top_k", int),
    "/topp": setting("/topp X", "nucleus sampling threshold (1 = off)", "top_p", float),
    "/max": setting("/max N", "longest reply in tokens", "max_tokens", int),
    "/seed": setting("/seed N|off", "fixed seed for reproducible replies, or off for random", "seed", _seed),
    "/settings": Command("/settings", "print the current settings", cmd_settings),
    "/quit": Command("/quit", "leave (so does Ctrl-D)", cmd_quit),
}
# Another name -> the command line it stands for. The original PlanckGPT's chat called memory (the
# conversation kept between questions) by these names; an alias that fixes an argument takes none.
ALIASES = {
    "/enablemem": "/memory on",
    "/disablemem": "/memory off",
    "/clearmem": "/reset",
    "/showmem": "/show",
    "/exit": "/quit",
    "/?": "/help",
}


def run_command(s: Session, line: str) -> bool:
    """Run one /command line; True means leave."""
    name, arg = (line.split(None, 1) + [""])[:2]
    arg = arg.strip()
    if name in ALIASES:
        target, fixed = (ALIASES[name].split(None, 1) + [""])[:2]
        if fixed and arg:
            s.error(f"usage: {name} (it takes no argument: it is {ALIASES[name]})")
            return False
        name, arg = target, fixed or arg
    command = COMMANDS.get(name)
    if command is None:
        s.error(f"unknown command {name}: /help lists them")
        return False
    return bool(command.run(s, arg))


# ---- input -------------------------------------------------------------------------------------


def _line_reader(stdin: TextIO, out: TextIO, style: Style) -> Callable[[str], str]:
    """A function that shows a prompt and returns the next line; raises EOFError at the end of input."""
    if stdin is sys.stdin and out is sys.stdout and stdin.isatty():
        try:
            import readline  # noqa: F401  (imported for its side effect: line editing and history in input())
        except ImportError:
            pass
        return lambda label: input(style.user(label, readline=True))

    def read(label: str) -> str:
        # Not a terminal (a file or pipe): echo each line after its prompt so the output reads as a transcript.
        out.write(style.user(label))
        out.flush()
        line = stdin.readline()
        if not line:
            raise EOFError
        line = line.rstrip("\r\n")
        if not stdin.isatty():
            out.write(line + "\n")
        return line

    return read


def run_repl(batcher: Batcher, loaded: LoadedModel, settings: ReplSettings,
             stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Run the terminal chat until /quit or end of input; returns the exit code (0)."""
    stdin = stdin or sys.stdin
    out = stdout or sys.stdout
    style = Style(out.isatty() and not os.environ.get("NO_COLOR"))
    session = Session(batcher, loaded, settings, out, style)
    if not loaded.is_chat:
        settings.memory = False
    read = _line_reader(stdin, out, style)
    session.banner()
    while True:
        try:
            line = read(session.prompt_label()).strip()
        except KeyboardInterrupt:  # Ctrl-C at the prompt only discards the line being typed
            session.say()
            continue
        except EOFError:
            session.say()
            break
        try:
            if not line:
                continue
            if line.startswith("/"):
                if run_command(session, line):
                    break
            else:
                session.ask(line)
        except KeyboardInterrupt:  # Ctrl-C outside a reply (during a command, say): back to the prompt
            session.say()
    session.note("bye")
    return 0
