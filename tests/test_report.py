"""`planck report`: the report card written at the end of a real (tiny) training run, eval.json, comparisons, errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from planck.cli import main
from planck.report.markdown import fmt_int, fmt_sig
from planck_testing import embedded_shards

REPO = Path(__file__).resolve().parents[1]


def planck(*args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "planck.cli", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          check=False)
    if check and proc.returncode:
        raise AssertionError(f"planck {args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return embedded_shards(tmp_path_factory.mktemp("shards") / "pretrain", "30k", "4k", "20k")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shards) -> tuple[Path, str]:
    """A 4-step tiny pretraining run through `planck train`; (run folder, the command's stdout)."""
    run = tmp_path_factory.mktemp("runs") / "tinyrun"
    proc = planck("train", "pretrain", "--config", "tiny", "--quiet", "--data", shards, "--run-dir", run,
                  "--set", "train.steps=4", "--set", "train.log_every=1", "--set", "train.eval_every=2",
                  "--set", "train.eval_batches=1", "--set", "train.checkpoint_every=4")
    return run, proc.stdout


def copy_run(run: Path, dest: Path) -> Path:
    """A copy of the run folder without its (large, unused here) weights and checkpoints."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("checkpoints", "params"))
    return dest


def test_training_writes_a_report_with_the_runs_figures(trained, shards):
    run, stdout = trained
    report = run / "report.md"
    assert report.exists(), stdout
    text = report.read_text()
    assert f"report in {report}" in stdout
    # The parameter count as the model reports it (printed by `planck train`, recorded in final/model.json).
    params = json.loads((run / "final" / "model.json").read_text())["parameters"]
    printed = re.search(r"planck train pretrain: ([\d,]+) parameters", stdout).group(1)
    assert printed == fmt_int(params)
    assert f"**Parameters:** {printed} " in text
    # The final val_bpb from metrics.jsonl, three significant digits.
    last = metrics(run)[-1]
    assert last["step"] == 4 and "val_bpb" in last
    bpb = fmt_sig(last["val_bpb"])
    assert re.fullmatch(r"\d\.\d\d", bpb)
    assert f"| final val bpb | {bpb} bits/byte (step 4; the trainer's evaluation on 256 tokens in 4 windows) |" in text
    assert "Validation along the way (the trainer's evaluation):" in text and "| 2 | " in text
    assert f"| final train loss | {fmt_sig(last['loss'])} nats/token |" in text
    assert f"| tokens seen | {fmt_int(last['tokens_seen'])} |" in text
    # The data folder's token counts from its manifest.
    manifest = json.loads((shards / "manifest.json").read_text())
    for split in ("train", "val"):
        listed = [s for s in manifest["shards"] if s["split"] == split]
        docs, tokens = sum(s["documents"] for s in listed), sum(s["tokens"] for s in listed)
        assert f"| {split} | {len(listed)} | {fmt_int(docs)} | {fmt_int(tokens)} |" in text
    docs, tokens = sum(s["documents"] for s in manifest["shards"]), sum(s["tokens"] for s in manifest["shards"])
    assert tokens > 1000 and f"| **total** | {len(manifest['shards'])} | {fmt_int(docs)} | {fmt_int(tokens)} |" in text
    assert "| embedded | " in text
    # Batch arithmetic: 4 x 2 x 1 device x 64 tokens.
    assert "= 512 tokens per step" in text and "1 device " in text
    # Plots: linked and present (lr.png written by the report, a real PNG).
    for name in ("loss.png", "lr.png"):
        assert f"]({name})" in text
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Not evaluated yet: run `planck eval --checkpoint" in text


def test_eval_json_scores_and_samples_appear(trained, tmp_path):
    run = copy_run(trained[0], tmp_path / "evaluated")
    (run / "eval.json").write_text(json.dumps({
        "tasks": {
            # The shape `planck eval` writes: metric + value, extras (one a key nobody knows yet), skips, a second
            # score with its own baseline, samples.
            "arc_easy": {"metric": "accuracy", "value": 0.31, "baseline": 0.25, "n": 100, "seconds": 12.5,
                         "skipped": {}, "future_key": "text"},
            "mmlu": {"metric": "accuracy", "value": 0.2876, "baseline": 0.25, "n": 80, "correct": 23,
                     "skipped": {"too_long": 3}, "source": "local: x.jsonl"},
            "bpb": {"metric": "bpb", "value": 2.6145, "baseline": 15.6, "n": 40, "val_loss": 7.1, "val_loss_baseline": 10.8},
            "sample": {"metric": "samples", "value": None, "samples": [
                {"prompt": "Hi", "completion": "there <|endoftext|> *bold*", "temperature": 0.0},
            ]},
        },
        "checkpoint": str(run), "written": "2025-11-25T16:00:00Z", "extra": {"unknown": 1},
    }))
    assert main(["report", str(run)]) == 0
    text = (run / "report.md").read_text()
    assert "| arc_easy | accuracy | 0.310 | 0.250 | 100 | 12.5 s |  |" in text
    assert "| mmlu | accuracy | 0.288 | 0.250 | 80 | – | correct 23, skipped: too_long 3 |" in text
    assert "| bpb | bpb | 2.61 | 15.6 | 40 |" in text and "| bpb | val_loss | 7.10 | 10.8 | 40 |" in text
    assert "| sample |" not in text and "Not evaluated yet" not in text
    assert "> Hi" in text and "Completion (greedy):" in text
    # Model output renders literally: the special token is not swallowed as an HTML tag, * is not emphasis.
    assert "> there \\<\\|endoftext\\|\\> \\*bold\\*" in text


def test_the_trainers_and_evals_val_bpb_say_what_each_covers(trained, shards, tmp_path):
    """Training's final val bpb (train.eval_batches batches) and eval.json's bpb (the split eval scored) are two figures
    for one checkpoint: each names its windows and tokens, and a note says why they differ."""
    from planck.shards.windows import ShardWindows, eval_batches

    run = copy_run(trained[0], tmp_path / "evaluated")
    # What the trainer scored: train.eval_batches=1 batch of micro_batch 4 x 1 device, counted as the loop cuts it.
    val = ShardWindows(shards, "val", 64)
    [batch] = list(eval_batches(val, batch_size=4, num_batches=1))
    tokens = int(batch["mask"].sum())
    assert len(batch["inputs"]) == 4 and tokens == 256 and len(val) > 8
    # eval.json as `planck eval --tasks bpb --data SHARDS` writes it (batch 8: the split's whole batches).
    n = len(val) // 8 * 8
    bpb = {"metric": "bpb", "value": 4.0963, "baseline": 4.398, "n": n, "val_loss": 10.08, "val_loss_baseline": 10.83,
           "tokens": n * 64, "bytes": 16363, "batches": n // 8, "seq_len": 64, "data": str(shards), "limit": None,
           "seconds": 2.1}
    (run / "eval.json").write_text(json.dumps({"tasks": {"bpb": bpb}, "checkpoint": str(run / "final")}))
    assert main(["report", str(run)]) == 0
    text = (run / "report.md").read_text()
    trained_bpb = fmt_sig(metrics(run)[-1]["val_bpb"])
    assert f"| final val bpb | {trained_bpb} bits/byte (step 4; the trainer's evaluation on 256 tokens in 4 windows) |" in text
    assert (f"| val figures measured on | the trainer's evaluation, the same windows each time: the first 4 of the val "
            f"split's {len(val)} windows, 4 × 64 = 256 tokens (from config.json: train.eval_batches 1 × a batch of 4 "
            "windows, train.micro_batch 4 × 1 device) |") in text
    assert (f"| bpb | bpb | 4.10 | 4.40 | {n} | 2.1 s | `planck eval`: the first {n} of the val split's {len(val)} windows, "
            f"{n} × 64 = {fmt_int(n * 64)} tokens |") in text
    assert f"| bpb | val_loss | 10.1 | 10.8 | {n} | 2.1 s | the same windows |" in text
    note = (f"> Note: this bpb (4.10, `planck eval` on {fmt_int(n * 64)} tokens in {n} windows) and Training's final val bpb "
            f"({trained_bpb}, the trainer's evaluation on 256 tokens in 4 windows) differ because they cover different "
            "parts of the val split.")
    assert note in text.splitlines()

    # More eval batches than the split holds: the trainer scored its whole batches, as eval_batches caps them.
    config = json.loads((run / "config.json").read_text())
    config["config"]["train"]["eval_batches"] = 1000
    (run / "config.json").write_text(json.dumps(config))
    assert main(["report", str(run)]) == 0
    text = (run / "report.md").read_text()
    whole = len(val) // 4 * 4
    assert sum(len(b["inputs"]) for b in eval_batches(val, batch_size=4, num_batches=1000)) == whole
    assert (f"the first {whole} of the val split's {len(val)} windows, {whole} × 64 = {fmt_int(whole * 64)} tokens "
            "(from config.json: train.eval_batches 1,000 × a batch of 4 windows, train.micro_batch 4 × 1 device; "
            "the split holds fewer)") in text
    assert whole == n and "differ because" not in text and "cover the same windows of the val split." in text

    # Side by side: each row says whose figure it is, and a line says why the two differ.
    out = tmp_path / "cmp.md"
    assert main(["report", str(run), str(copy_run(trained[0], tmp_path / "other")), "--out", str(out)]) == 0
    cmp = out.read_text()
    assert f"| final val bpb (trainer's evaluation) | {trained_bpb} | {trained_bpb} |" in cmp
    assert "| bpb (planck eval; random 4.40) | 4.10 | – |" in cmp
    assert "The two val bpb rows differ because they cover different parts of the val split" in cmp


def test_comparison_of_two_runs(trained, tmp_path):
    first = copy_run(trained[0], tmp_path / "runs" / "pretrain")
    second = copy_run(trained[0], tmp_path / "runs" / "midtrain")
    rows = metrics(second)
    rows[-1]["val_bpb"], rows[-1]["loss"] = 1.2345, 2.5
    (second / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = json.loads((second / "config.json").read_text())
    config["phase"] = "midtrain"
    (second / "config.json").write_text(json.dumps(config))
    (second / "eval.json").write_text(json.dumps({"tasks": {"mmlu": {"metric": "accuracy", "value": 0.4, "baseline": 0.25, "n": 50}}}))
    out = tmp_path / "cmp.md"
    assert main(["report", str(first), str(second), "--out", str(out)]) == 0
    text = out.read_text()
    assert "|  | pretrain | midtrain |" in text
    assert "| phase | pretrain | midtrain |" in text
    want_bpb = fmt_sig(metrics(first)[-1]["val_bpb"])
    assert f"| final val bpb (trainer's evaluation) | {want_bpb} | 1.23 |" in text
    assert "| final train loss |" in text and " | 2.50 |" in text
    assert "| mmlu accuracy (random 0.250) | – | 0.400 |" in text
    for name in ("pretrain", "midtrain"):
        link = f"runs/{name}/report.md"
        assert f"]({link})" in text and (tmp_path / link).exists()
    assert "1.23 bits/byte" in (second / "report.md").read_text()
    # Without --out the comparison goes to the runs' common parent.
    assert main(["report", str(first), str(second)]) == 0
    assert "](pretrain/report.md)" in (tmp_path / "runs" / "report.md").read_text()


def test_not_a_run_is_one_error_line(tmp_path, capsys):
    proc = planck("report", tmp_path / "not_a_run", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"planck: error: {tmp_path / 'not_a_run'}: no such run folder"]
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    assert main(["report", str(tmp_path / "empty")]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("planck: error: ") and str(tmp_path / "empty") in line and "config.json" in line


def test_a_run_whose_data_folder_is_gone_still_gets_a_report(trained, shards, tmp_path):
    run = copy_run(trained[0], tmp_path / "orphan")
    data = shutil.copytree(shards, tmp_path / "data")
    config = json.loads((run / "config.json").read_text())
    config["data"] = str(data)
    (run / "config.json").write_text(json.dumps(config))
    assert main(["report", str(run)]) == 0
    assert "The data folder is missing" not in (run / "report.md").read_text()
    shutil.rmtree(data)
    assert main(["report", str(run)]) == 0
    text = (run / "report.md").read_text()
    assert f"**The data folder is missing** ({data} was moved or deleted)" in text
    assert "| final val bpb |" in text  # the rest of the report is intact


def test_a_failing_report_does_not_fail_the_run(trained, tmp_path, monkeypatch, caplog):
    """The loop's end-of-run report call logs a warning instead of raising, whatever goes wrong."""
    from planck.report import card as report
    from planck.schemas.run_folder import RunFolder
    from planck.train.loop import write_report

    run = copy_run(trained[0], tmp_path / "damaged")
    (run / "report.md").unlink()
    (run / "config.json").write_text("{not json")
    with caplog.at_level("WARNING", logger="planck.train"):
        write_report(RunFolder(run))  # a RunFolderError inside: logged
        monkeypatch.setattr(report, "write_report", lambda run_dir: 1 / 0)
        write_report(RunFolder(run))  # any other exception: logged too
    messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(messages) == 2 and not (run / "report.md").exists()
    assert "config.json: cannot read the run configuration" in messages[0] and f"planck report {run}" in messages[0]
    assert "division by zero" in messages[1]
