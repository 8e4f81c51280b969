"""`planck eval`: multiple-choice scoring against a direct forward pass, batching and padding, GSM8K number
matching, bits per byte against the trainer's evaluate(), the hub code path on local files, and the command."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]

# ARC rows with 3 and 4 choices; the last is invalid (its answerKey is not a label) and must be skipped, not scored.
ARC_ROWS = [
    {"id": "a0", "question": "Which is a colour?", "choices": {"text": ["red", "seven", "dog", "run"], "label": ["A", "B", "C", "D"]}, "answerKey": "A"},
    {"id": "a1", "question": "Which is a number?", "choices": {"text": ["red", "seven", "dog"], "label": ["A", "B", "C"]}, "answerKey": "B"},
    {"id": "a2", "question": "Which is an animal?", "choices": {"text": ["red", "seven", "dog", "run"], "label": ["A", "B", "C", "D"]}, "answerKey": "C"},
    {"id": "a3", "question": "Which is a verb?", "choices": {"text": ["red", "seven", "run"], "label": ["1", "2", "3"]}, "answerKey": "3"},
    {"id": "a4", "question": "Which is warm?", "choices": {"text": ["ice", "sun", "snow", "fog"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    {"id": "a5", "question": "Which is cold?", "choices": {"text": ["ice", "sun", "fire"], "label": ["A", "B", "C"]}, "answerKey": "A"},
    {"id": "bad", "question": "Broken key?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "E"},
]
# A question long enough for the next prompt bucket (over 64 tokens), so batches of several lengths are scored.
LONG_QUESTION = "Read this carefully. " + "The quick brown fox jumps over the lazy dog again and again. " * 4 + "Which animal jumps?"
MMLU_ROWS = [
    {"question": "What is 2 + 2?", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1},
    {"question": LONG_QUESTION, "subject": "reading", "choices": ["fox", "dog", "cat", "owl"], "answer": 0},
    {"question": "Which is a prime?", "subject": "elementary_mathematics", "choices": ["4", "6", "7", "8"], "answer": 2},
    {"question": "Which gas do plants take in?", "subject": "biology", "choices": ["oxygen", "carbon dioxide", "helium", "neon"], "answer": 1},
    {"question": "What is H2O?", "subject": "chemistry", "choices": ["salt", "sugar", "water", "air"], "answer": 2},
]
GSM_ROWS = [
    {"question": "Ann has 2 pens and buys 3 more. How many pens?", "answer": "2+3=<<2+3=5>>5\n#### 5"},
    {"question": "A shop sells 1,200 apples a day. How many in 2 days?", "answer": "1200*2=<<1200*2=2400>>2400\n#### 2,400"},
    {"question": "It is 3 degrees and drops 10. What now?", "answer": "3-10=<<3-10=-7>>-7\n#### -7"},
]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Local files of the hub datasets' schemas: ARC parquet, MMLU jsonl, GSM8K jsonl, and a file that is not parquet."""
    d = tmp_path_factory.mktemp("eval_sources")
    pq.write_table(pa.Table.from_pylist(ARC_ROWS), d / "arc.parquet")
    # The hub's layout: a folder with a test split file, loaded by `datasets` like the hub repository.
    (d / "arc_hub").mkdir()
    pq.write_table(pa.Table.from_pylist(ARC_ROWS), d / "arc_hub" / "test-00000-of-00001.parquet")
    (d / "mmlu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MMLU_ROWS))
    gsm = GSM_ROWS + [{"question": "No final line?", "answer": "about four"}]
    (d / "gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gsm))
    (d / "broken.parquet").write_bytes(b"this is not parquet")
    return {"arc": d / "arc.parquet", "arc_hub": d / "arc_hub", "mmlu": d / "mmlu.jsonl", "gsm8k": d / "gsm8k.jsonl",
            "broken": d / "broken.parquet"}


@pytest.fixture(scope="module")
def chat_model(chat_checkpoint):
    from planck.serve.weights import load_for_serving as load_model

    return load_model(chat_checkpoint)


@pytest.fixture(scope="module")
def base_model(base_checkpoint):
    from planck.serve.weights import load_for_serving as load_model

    return load_model(base_checkpoint)


def _rows(task: str, path: Path, limit=None):
    from planck.eval.tasks import TASKS, Settings

    return TASKS[task].prepare(task, Settings(limit=limit, source_paths={task: str(path)}))


# ---- multiple choice -------------------------------------------------------------------------

def test_letter_ids_are_the_forms_the_answers_take():
    from planck.eval.multiple_choice import letter_ids
    from planck.schemas.chat_template import encode_text, multiple_choice_conversation, render_conversation
    from planck.schemas.rows import MultipleChoice

    chat, base = letter_ids(True), letter_ids(False)
    assert len(set(chat.tolist())) == len(set(base.tolist())) == 10
    assert chat[0] == encode_text("A")[0] and base[1] == encode_text(" B")[0] and chat[1] != base[1]
    # The SFT data answers with the bare letter right after <|assistant_start|>: the id the chat scorer reads.
    ids, _ = render_conversation(multiple_choice_conversation(MultipleChoice("q?", ("x", "y", "z"), 2)))
    assert int(ids[list(ids).index(50261) + 1]) == chat[2]


def test_rows_are_validated_and_bad_ones_counted(files):
    prepared = _rows("arc_easy", files["arc"])
    items, reader = prepared.items, prepared.reader
    assert len(items) == 6 and reader.skipped == Counter({"bad_answer_index": 1}) and reader.read == 7
    assert [mc.answer for mc in items] == [0, 1, 2, 2, 1, 0] and len(items[1].choices) == 3
    assert reader.spec.describe() == f"local: {files['arc']}"
    assert len(_rows("arc_easy", files["arc"], limit=2).items) == 2
    items = _rows("mmlu", files["mmlu"]).items
    assert [mc.subject for mc in items][0] == "elementary_mathematics" and items[3].answer == 1


@pytest.mark.parametrize("which", ["chat", "base"])
def test_predictions_are_the_argmax_letter_of_a_direct_forward_pass(which, files, chat_model, base_model):
    """The batched, padded, compiled scorer picks what model(tokens) on each lone prompt says."""
    import jax
    import jax.numpy as jnp

    from planck.eval import multiple_choice as mc

    loaded = chat_model if which == "chat" else base_model
    items = _rows("mmlu", files["mmlu"]).items
    scored, kept, too_long = mc.evaluate(items, loaded, batch_size=4)
    assert kept == list(range(5)) and too_long == 0
    letters = mc.letter_ids(loaded.is_chat)
    # model(tokens) on each prompt alone, padded to the whole context (the scorer pads to 64 or 128, four at a
    # time), read at the prompt's last token: one compilation instead of eager calls at five lengths.
    forward = jax.jit(lambda tokens: loaded.model(tokens))
    expected = []
    for item in items:
        ids = mc.prompt_ids(item, loaded.is_chat)
        assert ids[-1] == (50261 if loaded.is_chat else mc.encode_text(":")[0])  # <|assistant_start|> / "Answer:"
        tokens = np.zeros((1, loaded.config.seq_len), np.int32)
        tokens[0, : len(ids)] = ids
        logits = np.asarray(forward(jnp.asarray(tokens))[0, len(ids) - 1])
        expected.append(int(np.argmax(logits[letters[: len(item.choices)]])))
    assert scored.predictions == expected
    assert scored.accuracy == np.mean([p == it.answer for p, it in zip(expected, items)])
    assert scored.baseline == pytest.approx(0.25)


def test_batched_and_padded_scoring_equals_one_prompt_at_a_time(files, chat_model):
    from planck.eval import multiple_choice as mc

    items = _rows("mmlu", files["mmlu"]).items
    prompts = [mc.prompt_ids(it, True) for it in items]
    scorer1, scorer4 = mc.LetterScorer(chat_model, 1), mc.LetterScorer(chat_model, 4)
    assert len({scorer4.bucket(len(p)) for p in prompts}) == 2  # two bucket lengths, and a short last batch
    letters = mc.letter_ids(True)
    one, four = scorer1(prompts, letters), scorer4(prompts, letters)
    np.testing.assert_allclose(one, four, rtol=1e-4, atol=1e-4)
    assert mc.score(items, one).predictions == mc.score(items, four).predictions
    assert mc.evaluate(items, chat_model, 1)[0].predictions == mc.evaluate(items, chat_model, 4)[0].predictions


def test_scoring_takes_the_best_valid_letter_and_reports_the_random_baseline(files, monkeypatch):
    """Steered logits: 'D' is highest everywhere, 'B' next. 4-choice rows answer D, 3-choice rows (no D) answer B."""
    from planck.eval import multiple_choice as mc
    from planck.eval.tasks import TASKS, Context, Settings

    seen = {}

    def steered(loaded, prompts, letters, batch_size, progress=None):
        seen["n"] = len(prompts)
        logits = np.zeros((len(prompts), len(letters)), np.float32)
        logits[:, 3], logits[:, 1] = 5.0, 2.0
        return logits

    monkeypatch.setattr(mc, "letter_logits", steered)
    fake = SimpleNamespace(is_chat=True, config=SimpleNamespace(seq_len=128))
    prepared = _rows("arc_easy", files["arc"])
    result = TASKS["arc_easy"].run("arc_easy", prepared, Context(fake, Settings(show_progress=False)))
    preds = [d["prediction"] for d in result.details]
    assert preds == [3, 1, 3, 1, 3, 1]
    answers = [0, 1, 2, 2, 1, 0]
    s = result.summary
    assert s["metric"] == "accuracy" and s["n"] == 6 and s["correct"] == 1
    assert s["value"] == pytest.approx(np.mean([p == a for p, a in zip(preds, answers)]))
    assert s["baseline"] == pytest.approx((3 * 0.25 + 3 / 3) / 6)  # three 4-choice rows, three 3-choice rows
    assert s["skipped"] == {"bad_answer_index": 1}

    # A context too short for some prompts: those rows are counted as too long and never scored.
    lengths = [len(mc.prompt_ids(it, True)) for it in prepared.items]
    fake.config.seq_len = sorted(lengths)[2]
    prepared = _rows("arc_easy", files["arc"])
    result = TASKS["arc_easy"].run("arc_easy", prepared, Context(fake, Settings(show_progress=False)))
    too_long = sum(n > fake.config.seq_len for n in lengths)
    assert too_long > 0 and seen["n"] == 6 - too_long == result.summary["n"]
    assert result.summary["skipped"] == {"bad_answer_index": 1, "too_long": too_long}

    # --limit counts scored rows: rows too long for the context do not use it up, more are read instead.
    fits = [i for i, n in enumerate(lengths) if n <= fake.config.seq_len]
    limit = len(fits)
    assert fits[-1] >= limit  # some of the first `limit` rows are too long
    settings = Settings(limit=limit, show_progress=False)
    result = TASKS["arc_easy"].run("arc_easy", _rows("arc_easy", files["arc"], limit=limit), Context(fake, settings))
    assert result.summary["n"] == limit and [d["row"] for d in result.details] == fits
    assert result.summary["skipped"]["too_long"] == fits[-1] + 1 - limit


# ---- GSM8K -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text, number",
    [
        ("She has 5 + 3 = 8 apples.\n#### 8", "8"),
        ("The total is 1,234 dollars.", "1234"),
        ("It ends at -7.", "-7"),
        ("Each costs 2.50, so 3.75 in all.", "3.75"),
        ("That makes 40.", "40"),
        ("#### 1,000.50 and then 3 more words 9", "1000.5"),  # the number after '####' wins over later ones
        ("Twelve.", None),
        ("answer: 0.5", "0.5"),
        ("x = -0", "0"),
        ("007 agents", "7"),
    ],
)
def test_final_number_extraction(text, number):
    from planck.eval.gsm8k import final_number

    assert final_number(text) == number


def test_reference_numbers_match_the_row_schema():
    from planck.eval.gsm8k import reference_number

    assert [reference_number(r["answer"]) for r in GSM_ROWS] == ["5", "2400", "-7"]
    assert reference_number("no marker 5") is None


class FakeBatcher:
    """Answers each prompt with a canned text through the batcher's submit/emit protocol."""

    def __init__(self, replies: dict[str, str]):
        from planck.schemas.tokenizer import get_tokenizer

        self.replies, self.decode, self.submitted = replies, get_tokenizer().decode, []

    def submit(self, prompt_ids, params, emit, stop=()):
        from planck.serve.batcher import Finished, TextDelta

        self.submitted.append((list(prompt_ids), params, tuple(stop)))
        prompt = self.decode(prompt_ids)
        reply = next(v for k, v in self.replies.items() if k in prompt)
        for i in range(0, len(reply), 3):
            emit(TextDelta(reply[i : i + 3]))
        emit(Finished("stop", len(prompt_ids), 1))
        return SimpleNamespace(cancel=lambda: None)


@pytest.mark.parametrize("chat", [True, False])
def test_gsm8k_scores_the_final_number_of_each_generation(chat, files):
    from planck.eval.tasks import TASKS, Context, Settings

    prepared = _rows("gsm8k", files["gsm8k"])
    assert len(prepared.items) == 3 and prepared.reader.skipped == Counter({"no_final_number": 1})
    fake = FakeBatcher({
        "Ann has 2 pens": "2 + 3 = 5 pens.\n#### 5",
        "1,200 apples": "1,200 * 2 = 2,400.",  # right, written with a comma
        "3 degrees": "It is 13 degrees.",  # wrong
    })
    ctx = Context(SimpleNamespace(is_chat=chat, config=SimpleNamespace(seq_len=128)),
                  Settings(max_new_tokens=17, show_progress=False))
    ctx._batcher = fake
    result = TASKS["gsm8k"].run("gsm8k", prepared, ctx)
    s = result.summary
    assert (s["n"], s["correct"], s["baseline"]) == (3, 2, 0.0) and s["value"] == pytest.approx(2 / 3)
    assert [d["prediction"] for d in result.details] == ["5", "2400", "13"]
    assert [d["reference"] for d in result.details] == ["5", "2400", "-7"]
    # All three were submitted (so the slots can batch them), greedy, with the asked token budget.
    assert len(fake.submitted) == 3
    assert all(p.temperature == 0.0 and p.max_tokens == 17 for _, p, _ in fake.submitted)
    first = fake.decode(fake.submitted[0][0])
    if chat:
        assert first.startswith("<|endoftext|><|user_start|>Ann has") and first.endswith("<|assistant_start|>")
        assert fake.submitted[0][2] == ()
    else:
        assert first == "<|endoftext|>Question: " + GSM_ROWS[0]["question"] + "\nAnswer:"
        assert fake.submitted[0][2] == ("\nQuestion:",)


# ---- bits per byte -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def val_shards(tmp_path_factory) -> Path:
    from planck.cli import main

    d = tmp_path_factory.mktemp("eval_shards") / "pretrain"
    assert main(["tokenize", "pretrain", "--source", "embedded", "--max-tokens", "5k", "--val-tokens", "2k",
                 "--shard-tokens", "2k", "--workers", "1", "--quiet", "--out", str(d)]) == 0
    return d


def test_bpb_equals_the_trainers_evaluate(val_shards, base_model):
    import jax

    from planck.eval import bpb
    from planck.model.loss import evaluate
    from planck.shards.windows import ShardWindows, eval_batches, target_bytes

    source = ShardWindows(val_shards, "val", base_model.config.seq_len)
    assert len(source) >= 8
    got = bpb.bits_per_byte(base_model.model, source, batch_size=4, num_batches=2)
    want = evaluate(base_model.model, eval_batches(source, batch_size=4, num_batches=2),
                    jax.sharding.SingleDeviceSharding(jax.devices()[0]), target_bytes)
    assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-6)
    assert got["val_bpb"] == pytest.approx(want["val_bpb"], rel=1e-6)
    assert math.isfinite(got["val_bpb"]) and got["val_bpb"] > 0 and got["val_loss"] > 0
    assert (got["batches"], got["windows"], got["tokens"]) == (2, 8, 8 * 128)
    assert got["bytes"] > got["tokens"]  # English averages several bytes per token
    # Without a limit: every whole batch of the split.
    full = bpb.bits_per_byte(base_model.model, source, batch_size=4)
    assert full["batches"] == len(source) // 4


def test_bpb_task_reports_the_uniform_baseline(val_shards, base_model):
    from planck.eval.tasks import TASKS, Context, Settings, run_task

    settings = Settings(data=val_shards, limit=1, batch_size=2, show_progress=False)
    result = run_task("bpb", TASKS["bpb"].prepare("bpb", settings), Context(base_model, settings))
    s = result.summary
    assert s["metric"] == "bpb" and s["n"] == 2 and s["limit"] == 1 and s["tokens"] == 2 * 128
    assert s["val_loss_baseline"] == pytest.approx(math.log(50263))
    assert s["baseline"] == pytest.approx(s["tokens"] * math.log2(50263) / s["bytes"])
    assert s["value"] == pytest.approx(s["val_loss"] * s["tokens"] / (math.log(2) * s["bytes"]))


# ---- sources: the hub code path ----------------------------------------------------------------

def test_hub_sources_and_the_hub_call_on_a_local_copy(files, monkeypatch):
    """Each task streams its test split from the hub; here `datasets.load_dataset` serves a local copy."""
    import datasets

    from planck.eval.sources import read_rows, source_spec
    from planck.schemas import rows

    specs = {t: source_spec(t) for t in ("arc_easy", "arc_challenge", "mmlu", "gsm8k")}
    assert [(s.hf, s.config, s.split, s.format) for s in specs.values()] == [
        ("allenai/ai2_arc", "ARC-Easy", "test", "arc"), ("allenai/ai2_arc", "ARC-Challenge", "test", "arc"),
        ("cais/mmlu", "all", "test", "mmlu"), ("openai/gsm8k", "main", "test", "gsm8k"),
    ]
    real = datasets.load_dataset
    calls = []

    def hub(path, name=None, split=None, streaming=False, **kw):
        calls.append((path, name, split, streaming))
        return real(str(files["arc_hub"]), split=split, streaming=streaming)

    monkeypatch.setattr(datasets, "load_dataset", hub)
    monkeypatch.setattr("planck.tokenize.sources.hub_problem", lambda: None)  # the hub "answers" (offline test machines)
    items, skipped = read_rows(specs["arc_challenge"], rows.arc, limit=4)
    assert calls == [("allenai/ai2_arc", "ARC-Challenge", "test", True)]
    assert len(items) == 4 and items[1].question == "Which is a number?"
    # A hub-like local folder is read at its test split (through the real `datasets`).
    monkeypatch.undo()
    items, skipped = read_rows(source_spec("arc_easy", str(files["arc_hub"])), rows.arc, limit=None)
    assert len(items) == 6 and skipped == Counter({"bad_answer_index": 1})


# ---- the command -------------------------------------------------------------------------------

def _planck(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planck.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_cli_json_results_and_eval_json_merge(files, tmp_path, chat_checkpoint, capsys):
    import shutil

    from planck.cli import main
    from planck.eval.report import merge_eval_json

    run = tmp_path / "run"
    shutil.copytree(chat_checkpoint / "final", run / "final")
    proc = _planck("eval", "--checkpoint", run, "--tasks", "arc_easy,sample", "--source-path", f"arc_easy={files['arc']}",
                   "--limit", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out["tasks"]) == {"arc_easy", "sample"} and out["model"]["chat"] is True
    arc = out["tasks"]["arc_easy"]
    assert arc["n"] == 3 and arc["limit"] == 3 and arc["metric"] == "accuracy"
    assert arc["baseline"] == pytest.approx((0.25 + 1 / 3 + 0.25) / 3)
    assert out["tasks"]["sample"]["n"] == 3 and all(isinstance(s["completion"], str) for s in out["tasks"]["sample"]["samples"])
    assert "arc_easy" in proc.stderr  # its progress bar
    saved = json.loads((run / "eval.json").read_text())
    assert saved["tasks"] == out["tasks"] and saved["checkpoint"].endswith("final") and "written" in saved

    # A second run with another task (in this process: the same `main`) merges into eval.json; the table is printed.
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--tasks", "gsm8k", "--source-path", f"gsm8k={files['gsm8k']}",
                 "--limit", "2", "--max-new-tokens", "8"]) == 0
    printed = capsys.readouterr().out
    assert "gsm8k" in printed and "accuracy" in printed and "eval.json" in printed
    merged = json.loads((run / "eval.json").read_text())
    assert set(merged["tasks"]) == {"arc_easy", "sample", "gsm8k"}
    assert merged["tasks"]["gsm8k"]["n"] == 2 and merged["tasks"]["arc_easy"] == arc
    assert not list(run.glob("*.tmp"))

    # Tasks that score nothing (every ARC row rejected; every MMLU prompt longer than the context) fail in one line
    # that says why, and keep the good earlier scores; the task of the same invocation that scored is still merged.
    bad_arc = tmp_path / "bad_arc.jsonl"
    bad_arc.write_text("".join(json.dumps({**r, "answerKey": "Z"}) + "\n" for r in ARC_ROWS))
    long_mmlu = tmp_path / "long_mmlu.jsonl"
    long_mmlu.write_text(json.dumps({**MMLU_ROWS[0], "question": LONG_QUESTION * 3}) + "\n")
    merge_eval_json(run / "eval.json", {"mmlu": {"metric": "accuracy", "value": 0.5, "n": 4}}, "earlier", {})
    before = json.loads((run / "eval.json").read_text())["tasks"]
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--tasks", "arc_easy,mmlu,sample", "--source-path", f"arc_easy={bad_arc}",
                 "--source-path", f"mmlu={long_mmlu}", "--limit", "1", "--seed", "7"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("planck")]
    assert len(err) == 1 and "arc_easy scored nothing: 7 rows read, all rejected (bad_answer_index 7)" in err[0], err
    assert "mmlu scored nothing: 1 row read, all rejected (too_long 1)" in err[0] and "keeps its earlier results" in err[0]
    after = json.loads((run / "eval.json").read_text())["tasks"]
    assert after["arc_easy"] == before["arc_easy"] == arc and after["mmlu"] == before["mmlu"]
    assert after["sample"] != before["sample"] and after["sample"]["n"] == 1  # the task that scored was merged
    # Nothing at all to score: the same line, before the model is even loaded.
    assert main(["eval", "--checkpoint", str(run), "--tasks", "arc_easy", "--source-path", f"arc_easy={bad_arc}"]) == 1
    assert json.loads((run / "eval.json").read_text())["tasks"] == after


@pytest.mark.parametrize(
    "args, words",
    [
        (["--tasks", "arc_easy,hellaswag"], ["unknown task", "hellaswag"]),
        (["--tasks", "bpb"], ["--data"]),
        (["--tasks", "arc_easy", "--source-path", "arc_easy=BROKEN"], ["broken.parquet", "cannot be read"]),
        (["--tasks", "arc_easy", "--source-path", "arc_easy=MISSING"], ["no such file"]),
        (["--tasks", "mmlu", "--source-path", "sample=x.jsonl"], ["reads no rows"]),
        (["--tasks", "mmlu", "--limit", "0"], ["--limit"]),
        (["--tasks", "bpb", "--data", "MISSING"], ["no such folder"]),
    ],
    ids=["unknown-task", "bpb-without-data", "unreadable-file", "missing-file", "bad-source-name", "bad-limit", "bad-data"],
)
def test_cli_errors_are_one_line(args, words, files, tmp_path, chat_checkpoint, capsys):
    from planck.cli import main

    args = [a.replace("BROKEN", str(files["broken"])).replace("MISSING", str(tmp_path / "missing.parquet")) for a in args]
    assert main(["eval", "--checkpoint", str(chat_checkpoint), *args]) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("planck: error:"), captured.err
    for word in words:
        assert word in lines[0]
    assert not (chat_checkpoint / "eval.json").exists()


def test_cli_unknown_task_fails_fast_in_a_fresh_process(chat_checkpoint):
    proc = _planck("eval", "--checkpoint", chat_checkpoint, "--tasks", "nope")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("planck: error:")


def test_eval_help_explains_every_flag():
    proc = _planck("eval", "--help")
    assert proc.returncode == 0 and proc.stderr == ""
    text = " ".join(proc.stdout.split())
    for flag in ("--checkpoint", "--tasks", "--limit", "--json", "--data", "--source-path", "--batch-size",
                 "--max-new-tokens", "--seed", "TASK=PATH", "eval.json"):
        assert flag in text, flag
    for task in ("bpb", "arc_easy", "arc_challenge", "mmlu", "gsm8k", "sample"):
        assert task in text, task
    top = _planck("--help")
    assert "eval" in top.stdout
