"""lm-evaluation-harness against `planck serve`: a multiple-choice task from a local YAML over a local JSONL file
(no hub), scored by loglikelihood through /v1/completions (echo + logprobs), gives the same per-row answers and
accuracy as `planck eval` on the same rows and checkpoint.

Both score the same thing: after <|endoftext|> + planck eval's base-model prompt (the lettered question, then
"\\n\\nAnswer:"), the log-probability of each letter token " A", " B", ... The server prepends the
<|endoftext|> that opens every training document (lm-eval's tiktoken encoder cannot send it), and a
log-softmax keeps the order of the letters' logits, which is what planck eval compares.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from conftest import REPO, free_port, run_planck

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is an optional extra: pip install -e '.[lmeval]'")

TASK_YAML = r"""task: planck_arc_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {rows}
test_split: test
output_type: multiple_choice
doc_to_text: "Multiple choice question:\n\n{{{{question.strip()}}}}\n\n{{% for c in choices.text %}}{{{{ 'ABCDEFGHIJ'[loop.index0] }}}}. {{{{ c.strip() }}}}\n{{% endfor %}}\nAnswer with the letter of the correct choice.\n\nAnswer:"
doc_to_choice: "{{{{ ['A','B','C','D','E','F','G','H','I','J'][:choices.text|length] }}}}"
doc_to_target: "{{{{ choices.label.index(answerKey) }}}}"
metric_list:
  - metric: acc
"""


def arc_rows(n: int = 24) -> list[dict]:
    import random

    rng = random.Random(0)
    colors = ["red", "green", "blue", "cyan", "black", "white", "orange"]
    rows = []
    for i in range(n):
        k = 3 + i % 3  # 3 to 5 choices
        rows.append({"id": f"q{i}", "question": f"Which color is item {i}?",
                     "choices": {"text": rng.sample(colors, k), "label": list("ABCDE")[:k]}, "answerKey": "ABCDE"[i % k]})
    return rows


@pytest.fixture(scope="module")
def base_serve(base_checkpoint, tmp_path_factory):
    """`planck serve` on the tiny base model, in its own process."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve_base") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "planck.cli", "serve", "--checkpoint", str(base_checkpoint),
                                 "--port", str(port), "--slots", "2"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_lm_eval_scores_the_same_as_planck_eval(base_serve, base_checkpoint, tmp_path):
    from planck.eval.multiple_choice import BASE_CUE, evaluate
    from planck.schemas import rows as row_schema
    from planck.schemas.chat_template import multiple_choice_prompt
    from planck.serve.weights import load_for_serving

    rows = arc_rows()
    data = tmp_path / "arc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "planck_arc.yaml").write_text(TASK_YAML.format(rows=data))
    out = tmp_path / "lm_eval_out"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    # The command the README gives: model=davinci picks tiktoken's r50k_base, GPT-2's BPE, which planck uses.
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args",
         f"base_url={base_serve}/v1/completions,model=davinci,tokenizer_backend=tiktoken,max_length=128",
         "--include_path", str(tasks), "--tasks", "planck_arc_local", "--output_path", str(out), "--log_samples"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    lm_acc = results["results"]["planck_arc_local"]["acc,none"]
    samples = [json.loads(line) for line in next(out.rglob("samples_planck_arc_local_*.jsonl")).read_text().splitlines()]
    samples.sort(key=lambda s: s["doc_id"])
    assert len(samples) == len(rows)

    # planck eval, the command, on the same rows and checkpoint.
    report = json.loads(run_planck("eval", "--checkpoint", base_checkpoint, "--tasks", "arc_easy",
                                   "--source-path", f"arc_easy={data}", "--json").stdout)
    assert report["tasks"]["arc_easy"]["n"] == len(rows)
    assert lm_acc == pytest.approx(report["tasks"]["arc_easy"]["value"], abs=1e-12)

    # Row by row: the same prompt text and the same chosen letter.
    items = [row_schema.arc(r) for r in rows]
    scored, kept, _ = evaluate(items, load_for_serving(base_checkpoint), batch_size=8)
    assert kept == list(range(len(rows)))
    for s, mc, planck_pred in zip(samples, items, scored.predictions):
        args = [s["arguments"][f"gen_args_{i}"] for i in range(len(mc.choices))]
        assert all(a["arg_0"] == multiple_choice_prompt(mc) + BASE_CUE for a in args)
        assert [a["arg_1"] for a in args] == [" " + "ABCDEFGHIJ"[i] for i in range(len(mc.choices))]
        lls = [float(r[0]) for r in s["filtered_resps"]]
        assert max(range(len(lls)), key=lls.__getitem__) == planck_pred, s["doc_id"]
