"""Errors that name the next step: missing shards, a missing checkpoint, an unknown preset; a finished run's real step.

Each runs the `planck` command's main() in this process with temporary paths: exit code 1, one line on stderr, no traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planck.cli import main
from planck_testing import embedded_shards

REPO = Path(__file__).resolve().parents[1]


def error_line(capsys) -> str:
    """The one line the command printed on stderr (no traceback, nothing else)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = err.strip().splitlines()
    assert line.startswith("planck: error: ")
    return line


def test_training_without_shards_says_how_to_make_them(tmp_path, capsys):
    data, run_dir = tmp_path / "shards" / "pretrain", tmp_path / "runs" / "pretrain"
    assert main(["train", "pretrain", "--config", "tiny", "--quiet", "--data", str(data), "--run-dir", str(run_dir)]) == 1
    line = error_line(capsys)
    assert line == (f"planck: error: {data}: no such folder; make the shards first: `make shards` (or `make demo-shards` "
                    f"for the offline demo), or `planck tokenize pretrain|chat --out {data} ...`")
    assert not run_dir.exists()  # refused before the run folder is made


def test_chat_without_a_trained_model_says_how_to_get_one(tmp_path, capsys):
    missing = tmp_path / "runs" / "sft"  # what `make chat` points at before any training
    assert main(["chat", "--checkpoint", str(missing), "--no-warm-up"]) == 1
    assert error_line(capsys) == (f"planck: error: {missing}: no such file or folder; train one first (make pretrain "
                                  "midtrain sft, or make demo), or point at a finished run: make chat CHECKPOINT=runs/demo/sft")


@pytest.mark.parametrize("command", [["train", "pretrain"], ["plan", "--no-search"]])
def test_an_unknown_preset_lists_the_presets(command, tmp_path, capsys):
    presets = sorted(p.stem for p in (REPO / "configs" / "presets").glob("*.toml"))
    assert "tiny" in presets and "planck150m" in presets
    assert main([*command, "--config", "huge", *(["--data", str(tmp_path), "--run-dir", str(tmp_path / "r")]
                                                 if command[0] == "train" else [])]) == 1
    assert error_line(capsys) == (f"planck: error: unknown preset 'huge'; the presets are {', '.join(presets)} "
                                  "(configs/presets/), or give a .toml file")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return embedded_shards(tmp_path_factory.mktemp("shards") / "pretrain", "20k", "2k", "20k")


def test_re_running_a_finished_run_names_its_final_step(shards, tmp_path, capsys):
    run_dir = tmp_path / "run"
    cmd = ["train", "pretrain", "--config", "tiny", "--quiet", "--data", str(shards), "--run-dir", str(run_dir),
           "--set", "train.steps=2", "--set", "train.eval_every=100", "--set", "train.checkpoint_every=2"]
    assert main(cmd) == 0
    assert f"{run_dir}: done at step 2 (loss " in capsys.readouterr().out
    assert main(cmd) == 0
    out = capsys.readouterr().out
    assert f"{run_dir}: done at step 2 (already finished: nothing to do); weights in {run_dir / 'final'}" in out
    assert "None" not in out


def test_the_done_line_falls_back_to_final_then_the_newest_checkpoint(tmp_path, capsys, monkeypatch):
    """A trainer that returned no step: the step comes from final/model.json, else from the newest checkpoint."""
    import planck.train.loop

    monkeypatch.setattr(planck.train.loop, "train", lambda *a, **kw: {})
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "8").mkdir(parents=True)
    (run_dir / "checkpoints" / "12").mkdir()
    cmd = ["train", "pretrain", "--config", "tiny", "--quiet", "--data", str(tmp_path), "--run-dir", str(run_dir)]
    assert main(cmd) == 0
    assert f"{run_dir}: done at step 12; weights in" in capsys.readouterr().out
    (run_dir / "final").mkdir()
    (run_dir / "final" / "model.json").write_text(json.dumps({"phase": "pretrain", "step": 16}))
    assert main(cmd) == 0
    assert f"{run_dir}: done at step 16 (already finished: nothing to do)" in capsys.readouterr().out
