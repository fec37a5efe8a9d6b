"""Every numeric flag of every script, at and past its bounds: at a bound it is taken, past it the script says
which flag and what it takes, in one line, and writes nothing."""

import dataclasses
import typing

import pytest

import decoding
import eval as evaluation
import image_backends
import memory
import run_clm
import run_generation
import run_gradio
import utils
from conftest import run

SCRIPTS = {
    "run_clm.py": (run_clm.ModelArguments, run_clm.DataArguments, run_clm.TrainingArguments),
    "eval.py": (decoding.InferenceArguments, evaluation.EvalArguments),
    "run_generation.py": (decoding.InferenceArguments, run_generation.GenerationArguments),
    "run_gradio.py": (decoding.InferenceArguments, run_gradio.DemoArguments, image_backends.ImageArguments),
    "memory.py": (memory.MemoryArguments,),
    "image_backends.py": (image_backends.ImageArguments,),
}
# Numbers any value of which is meaningful: seeds, and the Trainer's own flags this product does not set.
FREE = {"seed"}


def own_numeric_fields(cls) -> list[str]:
    """The int and float flags a dataclass declares itself (for the Trainer's arguments: the ones this product sets)."""
    hints = typing.get_type_hints(cls)
    declared = cls.__dict__.get("__annotations__", {})
    numeric = []
    for f in dataclasses.fields(cls):
        kinds = typing.get_args(hints[f.name]) or (hints[f.name],)
        if f.name in declared and any(k in (int, float) for k in kinds) and bool not in kinds:
            numeric.append(f.name)
    return numeric


CASES = [(script, cls, name, bounds) for script, classes in SCRIPTS.items() for cls in classes
         for name, bounds in getattr(cls, "bounds", {}).items()]


def test_every_numeric_flag_has_bounds():
    for script, classes in SCRIPTS.items():
        for cls in classes:
            missing = [n for n in own_numeric_fields(cls) if n not in getattr(cls, "bounds", {}) and n not in FREE]
            assert not missing, f"{script} {cls.__name__}: numeric flags without bounds: {missing}"


@pytest.mark.parametrize("script, cls, name, bounds", CASES, ids=[f"{c[0]}:--{c[2]}" for c in CASES])
def test_numeric_flag_at_and_past_its_bounds(script, cls, name, bounds):
    is_int = int in (typing.get_args(typing.get_type_hints(cls)[name]) or (typing.get_type_hints(cls)[name],))
    step = 1 if is_int else 0.001
    for edge, outside in ((bounds[0], -step), (bounds[1], step)):
        if edge is None:
            continue
        at = int(edge) if is_int else edge
        utils.parse_arguments(SCRIPTS[script], [f"--{name}", str(at)])  # the bound itself is taken
        past = at + outside
        with pytest.raises(utils.InputError, match=name):  # ours ("--name must be"), or the Trainer's own check
            utils.parse_arguments(SCRIPTS[script], [f"--{name}", str(past)])


@pytest.mark.parametrize("script, flags, message", [
    ("run_generation.py", ["--prompt", "castle,", "--num_return_sequences", "-1"], "--num_return_sequences must be"),
    ("run_generation.py", ["--prompt", "castle,", "--num_keywords", "0"], "--num_keywords must be at least 1"),
    ("run_generation.py", ["--input_file", "IN", "--output_file", "OUT", "--batch_size", "0"], "--batch_size must be"),
    ("eval.py", ["--max_samples", "-5", "--output_dir", "OUT"], "--max_samples must be at least 1; got -5"),
    ("run_clm.py", ["--dataset_name", "EMPTY_CSV", "--output_dir", "OUT"], "holds no prompts"),
    ("run_clm.py", ["--output_dir", "OUT", "--per_device_train_batch_size", "0"], "--per_device_train_batch_size"),
    ("memory.py", ["--output_dir", "OUT", "--memory_tuning_samples", "-1"], "--memory_tuning_samples must be"),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny_checkpoint, tmp_path, script, flags, message):
    (tmp_path / "empty.csv").write_text("Prompt\n")
    (tmp_path / "in.txt").write_text("castle,\n")
    names = {"OUT": tmp_path / "out", "EMPTY_CSV": tmp_path / "empty.csv", "IN": tmp_path / "in.txt"}
    flags = [str(names.get(f, f)) for f in flags]
    model = [] if script == "run_clm.py" else ["--model_name_or_path", str(tiny_checkpoint)]
    before = sorted(p.name for p in tiny_checkpoint.iterdir())
    result = run(script, *model, *flags)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and lines[-1].startswith("error: ") and message in lines[-1]
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tiny_checkpoint.iterdir()) == before
