"""Where rows come from: a Hugging Face dataset streamed through `datasets`, local files of the same schema, a JSON identity file, or the embedded corpus."""

from __future__ import annotations

import functools
import glob
import itertools
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from planck.schemas.errors import PlanckError
from planck.schemas.rows import CHAT_FORMATS, SCHEMAS, missing_columns, source_kind

from . import embedded

EMBEDDED = "embedded"
# Chat sets generated in code, named in mixtures as `path = "builtin:NAME"` (no file to read).
BUILTIN_PREFIX = "builtin:"
_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".txt": "text"}
LOCAL_SUFFIXES = tuple(_BUILDERS)
SUPPORTED_TYPES = ", ".join(_BUILDERS)
# --txt-docs: what one document of a .txt file is, as `datasets`' text builder's sample_by.
TXT_DOCS = {"file": "document", "line": "line", "blank-line": "paragraph"}
HUB_PROBE_SECONDS = 5.0


class SourceError(PlanckError, RuntimeError):
    """A source that cannot be read at all; the message names the file or dataset."""


class HubUnreachable(SourceError):
    """The Hugging Face hub does not answer; the job adds how to read local files instead."""


@dataclass
class SourceSpec:
    """One input: a hub dataset (`hf`, `config`, `split`) or a local `path`, in a row `format`."""

    name: str
    format: str
    hf: str | None = None
    config: str | None = None
    split: str = "train"
    path: str | None = None
    max_rows: int | None = None
    repeats: int = 1
    txt_docs: str = "file"  # how .txt files are cut into documents (a key of TXT_DOCS)

    def describe(self) -> str:
        """A one-line, stable description recorded in the manifest."""
        if self.path == EMBEDDED:
            return embedded.describe()
        if self.path and self.path.startswith(BUILTIN_PREFIX):
            from . import demo_chat

            return demo_chat.describe()
        if self.path is not None:
            return f"local: {self.path}" + (f" (split {self.split})" if Path(self.path).is_dir() else "")
        return f"hf: {self.hf}" + (f" config {self.config}" if self.config else "") + f" split {self.split}"

    def is_local_files(self) -> bool:
        """True for files, a glob or a folder on this machine (not the hub, embedded or a built-in set)."""
        return self.path is not None and self.path != EMBEDDED and not self.path.startswith(BUILTIN_PREFIX)


def local_name(path: str) -> str:
    """A source's name from its path: the file's stem, the folder's name, or the folder a glob starts in."""
    p = Path(path).expanduser()
    if any(c in path for c in "*?["):
        fixed = list(itertools.takewhile(lambda part: not any(c in part for c in "*?["), p.parts))
        p = Path(*fixed) if fixed else Path(".")
        return p.resolve().name or "local"
    return (p.resolve().name if p.is_dir() else p.stem) or "local"


@dataclass
class LocalFiles:
    """The files a local source reads, in order, and those of its folder it leaves out (with why)."""

    files: list[Path]
    not_read: dict[str, list[Path]] = field(default_factory=dict)


def local_files(spec: SourceSpec) -> LocalFiles:
    """Resolve a file, glob or folder into the files to read; SourceError names what is wrong."""
    path = spec.path or ""
    p = Path(path).expanduser()
    if p.is_dir():
        return _folder_files(spec, p)
    if p.is_file():
        files = [p]
    else:
        files = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
        if not files:
            raise SourceError(f"{path}: no such file, folder or glob match")
    other = [f.name for f in files if f.suffix.lower() not in _BUILDERS]
    if other:
        raise SourceError(f"{path}: cannot read {', '.join(other[:5])}{' ...' if len(other) > 5 else ''} "
                          f"(planck reads {SUPPORTED_TYPES}); narrow the glob to those")
    return LocalFiles(files)


def _card_patterns(base: Path, config: str | None) -> tuple[Path, dict] | None:
    """(folder, split patterns) that a hub clone's README.md declares for `config`; None without declared configs."""
    readme = base / "README.md"
    try:
        if not readme.read_text(encoding="utf-8").startswith("---"):  # no YAML block, so no configs
            return None
    except (OSError, UnicodeDecodeError):
        return None
    from datasets.data_files import get_data_patterns, sanitize_patterns
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    configs = MetadataConfigs.from_dataset_card_data(DatasetCard.load(readme).data)
    if not configs:
        return None
    name = config or configs.get_default_config_name() or (next(iter(configs)) if len(configs) == 1 else None)
    if name not in configs:
        what = f"no config {config!r}" if config else "several configs and no default"
        raise SourceError(f"{base}: README.md declares {what} (it has {', '.join(configs)}); "
                          "choose one (--config NAME for tokenize pretrain) or point at that config's files")
    params = configs[name]
    folder = base / params["data_dir"] if params.get("data_dir") else base
    files = params.get("data_files")
    return folder, sanitize_patterns(files) if files is not None else get_data_patterns(str(folder))


def _folder_files(spec: SourceSpec, base: Path) -> LocalFiles:
    """A folder's files of every supported type; a hub-like folder's (train-0000.parquet, test/...) of `spec.split` only."""
    from datasets.data_files import DEFAULT_PATTERNS_ALL, DataFilesDict, EmptyDatasetError, get_data_patterns

    base = base.resolve()
    declared = _card_patterns(base, spec.config)
    if declared is None and spec.config:
        raise SourceError(f"{spec.path}: --config {spec.config}: no README.md in this folder declares configs; drop --config")
    try:
        # The rule `datasets` applies to a hub repository, so a local mirror splits exactly as the hub does.
        folder, patterns = declared or (base, get_data_patterns(str(base)))
        by_split = {str(k): [Path(f) for f in v] for k, v in DataFilesDict.from_patterns(patterns, base_path=str(folder)).items()}
        everything = [Path(f) for f in DataFilesDict.from_patterns({"all": ["**"]}, base_path=str(folder))["all"]]
    except (EmptyDatasetError, FileNotFoundError):
        raise SourceError(f"{spec.path}: no data files in this folder (planck reads {SUPPORTED_TYPES})") from None
    if declared is None and patterns == DEFAULT_PATTERNS_ALL:
        chosen = by_split["train"]  # no file names a split: the folder is one set of rows, read whole like a glob
    elif spec.split in by_split:
        chosen = by_split[spec.split]
    else:
        raise SourceError(f"{spec.path}: laid out like a hub dataset, with no {spec.split} split (it has {', '.join(by_split)})")
    files = [f for f in chosen if f.suffix.lower() in _BUILDERS]
    not_read = {}
    if other := [f for f in chosen if f.suffix.lower() not in _BUILDERS]:
        not_read[f"not {SUPPORTED_TYPES}"] = other
    in_a_split = {f for fs in by_split.values() for f in fs}
    if declared is None and (stray := [f for f in everything if f not in in_a_split and f.suffix.lower() in _BUILDERS]):
        not_read["in no split of this hub-like layout"] = stray
    if not files:
        names = ", ".join(f.name for f in chosen[:5])
        raise SourceError(f"{spec.path}: no {SUPPORTED_TYPES} files{f' (it has {names})' if names else ''}")
    return LocalFiles(files, not_read)


def _check_readable(path: Path, builder: str) -> None:
    """Fail early, naming the file, when a local file cannot be read at all."""
    try:
        if builder == "parquet":
            import pyarrow.parquet as pq

            pq.read_metadata(path)
            return
        with open(path, "rb") as f:
            first_line = f.readline(1 << 20)
        first_line.decode("utf-8")
    except Exception as exc:  # pyarrow, OS and decoding errors all mean "unreadable"
        raise SourceError(f"{path}: cannot be read as {builder} ({exc.__class__.__name__}: {exc})") from None
    if path.suffix.lower() == ".jsonl" and first_line.strip():
        try:
            json.loads(first_line)
        except ValueError as exc:
            raise SourceError(_json_line_problem(path, 1, first_line.decode("utf-8"), exc)) from None


def _json_line_problem(path: Path, line_no: int, line: str, exc: ValueError) -> str:
    """One line naming the file, its 1-based line and what is wrong with its JSON."""
    return f"{path} line {line_no}: not valid JSON ({_json_error(exc, line)})"


def _json_error(exc: ValueError, text: str, column: int | None = None) -> str:
    """What the JSON parser says, with the column, and a hint when the text stops in the middle of a value."""
    if not isinstance(exc, json.JSONDecodeError):
        return str(exc)
    # The parser ran off the end (or into an open string): the text stops early.
    cut = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")
    return f"{exc.msg.removesuffix(' at')} at column {column or exc.colno}{'; truncated?' if cut else ''}"


def json_problem(path: Path) -> str | None:
    """The first JSON syntax error of a .json or .jsonl file, as one line naming its 1-based line; None if it parses."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return f"{path}: cannot be read ({exc})"
    lines = text.splitlines()
    if path.suffix.lower() == ".json":
        try:
            json.loads(text)
            return None
        except ValueError as exc:
            if not _looks_like_json_lines(lines):  # one JSON document (a list of rows): its error is the file's
                # An error at the very end belongs to the last line with text, not to the empty one after it.
                at = min(exc.pos, len(text.rstrip()))
                line_no, column = text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at)
                return f"{path} line {line_no}: not valid JSON ({_json_error(exc, text, column)})"
    for i, line in enumerate(lines, 1):
        if line.strip():
            try:
                json.loads(line)
            except ValueError as exc:
                return _json_line_problem(path, i, line, exc)
    return None


def _looks_like_json_lines(lines: list[str]) -> bool:
    """A .json file holding one object per line (datasets reads those too): its first line parses alone."""
    filled = [line for line in lines if line.strip()]
    if len(filled) < 2:
        return False
    try:
        json.loads(filled[0])
    except ValueError:
        return False
    return True


@dataclass
class _Part:
    """Consecutive files of one type, loaded by one `datasets` builder (the hub: one part, no files)."""

    where: str  # named in errors: the file, or the source and how many files
    builder: str
    files: list[Path]
    ds: Any


def _quiet_datasets():
    import datasets

    # Read failures become one planck line naming the file; datasets' own log line would say it twice.
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    datasets.disable_progress_bars()
    return datasets


@functools.cache
def hub_problem() -> str | None:
    """Why the Hugging Face hub cannot be reached, found with one quick request (None when it answers).

    Without it, `datasets` retries for half a minute before giving up on a machine that is offline.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_SECONDS)
    except Exception as exc:  # DNS, refused, timeout, TLS: any answer at all (even an error status) means reachable
        return f"{constants.ENDPOINT}: {exc.__class__.__name__}: {str(exc)[:200]}"
    return None


def _parts(spec: SourceSpec) -> list[_Part]:
    """The `datasets.IterableDataset`s of a hub id or of local files (the same code path for both)."""
    datasets = _quiet_datasets()
    if spec.path is None:
        if problem := hub_problem():
            raise HubUnreachable(f"{spec.describe()}: cannot reach the Hugging Face hub ({problem})")
        try:
            ds = datasets.load_dataset(spec.hf, name=spec.config, split=spec.split, streaming=True)
        except Exception as exc:
            raise SourceError(f"{spec.describe()}: cannot open ({exc.__class__.__name__}: {exc})") from None
        return [_Part(spec.describe(), "hub", [], ds)]
    if spec.txt_docs not in TXT_DOCS:
        raise SourceError(f"--txt-docs {spec.txt_docs!r}: expected one of {', '.join(TXT_DOCS)}")
    found = local_files(spec)
    for why, files in found.not_read.items():
        shown = ", ".join(str(f.relative_to(Path(spec.path).expanduser().resolve())) for f in files[:5])
        print(f"note: {spec.path}: {len(files)} file(s) not read ({why}): {shown}{' ...' if len(files) > 5 else ''}",
              file=sys.stderr)
    parts = []
    # Files in sorted order; each run of one type is one `datasets` load, so a single-type source is read as before.
    for builder, run in itertools.groupby(found.files, key=lambda f: _BUILDERS[f.suffix.lower()]):
        files = list(run)
        for f in files:
            _check_readable(f, builder)
        extra = {"sample_by": TXT_DOCS[spec.txt_docs]} if builder == "text" else {}
        where = str(files[0]) if len(files) == 1 else f"{spec.path} ({len(files)} {builder} files from {files[0].name})"
        try:
            ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", streaming=True, **extra)
        except Exception as exc:
            raise SourceError(f"{where}: cannot open ({exc.__class__.__name__}: {exc})") from None
        parts.append(_Part(where, builder, files, ds))
    return parts


def _identity_rows(spec: SourceSpec) -> Iterator[Any]:
    path = Path(spec.path or "")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise SourceError(json_problem(path) or f"{path}: cannot be read as an identity file ({exc})") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot be read as an identity file ({exc})") from None
    if not isinstance(data, list):
        raise SourceError(f"{path}: an identity file is a JSON list of conversations")
    if data and isinstance(data[0], Mapping):
        _check_columns(spec, str(path), list(data[0]))
    yield from data


def _check_columns(spec: SourceSpec, where: str, columns: list[str] | None) -> None:
    """Refuse a table that lacks the format's required columns, naming it, the gap, what it has and the schema."""
    if columns is not None and (missing := missing_columns(spec.format, columns)):
        raise SourceError(
            f"{where}: no column {', '.join(missing)} (it has {', '.join(columns) or 'none'}); "
            f"{source_kind(spec.format)} has this schema:\n{SCHEMAS[spec.format]}"
        )


def open_rows(spec: SourceSpec, *, worker_index: int = 0, num_workers: int = 1) -> Iterator[Any]:
    """Iterate a source's rows in a fixed order; with n workers, only this worker's disjoint part."""
    if spec.format not in CHAT_FORMATS + ("pretrain",):
        raise SourceError(f"source {spec.name!r}: unknown format {spec.format!r}")
    if spec.path == EMBEDDED:
        rows: Iterator[Any] = embedded.embedded_rows()
        return (r for i, r in enumerate(rows) if i % num_workers == worker_index)
    if spec.path and spec.path.startswith(BUILTIN_PREFIX):
        from . import demo_chat

        if spec.path != BUILTIN_PREFIX + demo_chat.NAME:
            raise SourceError(f"source {spec.name!r}: unknown built-in set {spec.path!r}; there is {BUILTIN_PREFIX}{demo_chat.NAME}")
        return (r for i, r in enumerate(demo_chat.demo_chat_rows()) if i % num_workers == worker_index)
    if spec.format == "identity" and spec.path and spec.path.endswith(".json"):
        rows = _identity_rows(spec)
        return (r for i, r in enumerate(rows) if i % num_workers == worker_index)
    parts = _parts(spec)
    for part in parts:  # columns are known up front for parquet, JSON lines and the hub; checked at the first row otherwise
        _check_columns(spec, part.where, part.ds.column_names)
    if num_workers > 1:
        from datasets.distributed import split_dataset_by_node

        # Whole files per worker when they divide evenly, every n-th row otherwise (per run of one file type).
        for part in parts:
            part.ds = split_dataset_by_node(part.ds, rank=worker_index, world_size=num_workers)
    return _guarded(parts, spec)


def _guarded(parts: list[_Part], spec: SourceSpec) -> Iterator[Any]:
    """Rows of each part in turn, with read failures turned into a SourceError naming the file (and line)."""
    for part in parts:
        check_first = part.ds.column_names is None
        it = iter(part.ds)
        while True:
            try:
                row = next(it)
            except StopIteration:
                break
            except Exception as exc:
                raise SourceError(_read_problem(part, exc)) from None
            if check_first:
                _check_columns(spec, part.where, list(row) if isinstance(row, Mapping) else None)
                check_first = False
            yield row


def _read_problem(part: _Part, exc: Exception) -> str:
    """The line for a read failure: a JSON file's bad line when there is one, else the file(s) and the error."""
    if part.builder == "json":
        for f in part.files:
            if problem := json_problem(f):
                return problem
    return f"{part.where}: reading failed ({exc.__class__.__name__}: {str(exc)[:300]})"
