"""run_generation.py's batch mode: a file of keywords in, a file of prompts out, killed and resumed."""

import csv
import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import OFFLINE, ROOT, run

WORDS = ["castle", "owl", "forest", "robot", "ship", "dragon", "city", "lake", "knight", "witch"]


def keywords_file(path, count: int):
    path.write_text("".join(f"{WORDS[i % 10]} {i}, {WORDS[(i * 7) % 10]}\n" for i in range(count)))
    return path


def batch_args(checkpoint, inputs, output, candidates: int = 2, batch_size: int = 16) -> list[str]:
    return [str(ROOT / "run_generation.py"), "--model_name_or_path", str(checkpoint), "--input_file", str(inputs),
            "--output_file", str(output), "--strategy", "top_k" if candidates > 1 else "greedy", "--length", "6",
            "--num_return_sequences",
            str(candidates), "--batch_size", str(batch_size)]


def test_killed_and_resumed_every_input_exactly_once(tiny_checkpoint, tmp_path):
    inputs, output = keywords_file(tmp_path / "keywords.txt", 1000), tmp_path / "prompts.jsonl"
    args = batch_args(tiny_checkpoint, inputs, output, candidates=1, batch_size=40)
    process = subprocess.Popen([sys.executable, *args], env=OFFLINE, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and (not output.exists() or output.read_text().count("\n") < 300):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = output.read_text().count("\n")
    assert 300 <= written < 1000, "the run was not killed part-way"
    with output.open("a") as f:  # as if killed in the middle of writing a line
        f.write('{"line": 999, "inp')
    resumed = run(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming" in resumed.stderr
    records = [json.loads(line) for line in output.read_text().splitlines()]
    pairs = [(r["line"], r["candidate"]) for r in records]
    assert sorted(pairs) == [(line, 0) for line in range(1, 1001)]  # each exactly once
    lines = inputs.read_text().splitlines()
    for r in records:
        assert r["input"] == lines[r["line"] - 1] and r["prompt"].startswith(r["input"])
        assert r["strategy"] == "greedy" and isinstance(r["seed"], int) and r["clip_tokens"] > 0
    again = run(*args)
    assert again.returncode == 0 and output.read_text().count("\n") == 1000  # nothing left to do


@pytest.mark.parametrize("suffix", ["txt", "csv"])
def test_wildcard_and_csv_files_resume(tiny_checkpoint, tmp_path, suffix):
    inputs, output = keywords_file(tmp_path / "keywords.txt", 40), tmp_path / f"prompts.{suffix}"
    keywords_file(tmp_path / "first.txt", 15)
    first = run(*batch_args(tiny_checkpoint, tmp_path / "first.txt", output))
    assert first.returncode == 0, first.stderr[-3000:]
    rest = run(*batch_args(tiny_checkpoint, inputs, output))
    assert rest.returncode == 0, rest.stderr[-3000:]
    text = output.read_text()
    if suffix == "txt":
        prompts = text.splitlines()
        assert len(prompts) == 80
        lines = inputs.read_text().splitlines()
        assert [p.split(",")[0] for p in prompts[::2]] == [line.split(",")[0] for line in lines]
    else:
        rows = list(csv.DictReader(text.splitlines()))
        written = sorted((int(r["line"]), int(r["candidate"])) for r in rows)
        assert written == [(n, c) for n in range(1, 41) for c in range(2)]


def test_bad_batch_input_is_refused_and_nothing_written_is_lost(tiny_checkpoint, tmp_path):
    output = tmp_path / "prompts.jsonl"
    output.write_text('{"line": 1, "input": "castle 0, castle", "candidate": 0, "prompt": "castle 0, castle, x"}\n')
    before = output.read_text()
    cases = {
        "empty": ((tmp_path / "empty.txt", b"\n  \n"), output, "has no keywords"),
        "binary": ((tmp_path / "binary.txt", bytes(range(256))), output, "not a UTF-8 text file"),
        "unwritable": ((tmp_path / "ok.txt", b"castle,\n"), tmp_path / "missing" / "out.jsonl", "cannot write"),
        "other inputs": ((tmp_path / "other.txt", b"owl,\n"), output, "other inputs"),
        "format": ((tmp_path / "ok.txt", b"castle,\n"), tmp_path / "out.xlsx", "format"),
    }
    for name, ((path, content), out, message) in cases.items():
        path.write_bytes(content)
        result = run("run_generation.py", "--model_name_or_path", tiny_checkpoint, "--input_file", path,
                     "--output_file", out)
        assert result.returncode != 0 and message in result.stderr, (name, result.stderr[-2000:])
        assert "Traceback" not in result.stderr
        assert output.read_text() == before, name
    budget = run("run_generation.py", "--model_name_or_path", tiny_checkpoint, "--input_file",
                 keywords_file(tmp_path / "k.txt", 5), "--output_file", output, "--max_clip_tokens", "3")
    assert budget.returncode != 0 and "over the budget" in budget.stderr and output.read_text() == before
