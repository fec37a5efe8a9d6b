"""The memory's decoding at no cost of its own: the scores its processor handed to decoding, recorded in one run and
handed back step by step in the next. The replay takes the same steps and writes the same text, so its time over the
model alone's is the floor of any faster memory with these predictions on this machine: the cost of the longer
prompts' extra steps alone. The recording keeps every step's scores (a batch of 192 rows x 50k tokens: 39 MB a step),
so it runs untimed.

    with memory_replay.recording():
        decoding.generate_prompts(..., memory=memory)
    with memory_replay.replaying():
        decoding.generate_prompts(..., memory=memory)  # same text, the memory's own work skipped
"""

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import decoding  # noqa: E402

_recorded: list = []
_replay = iter(())


class RecordingMemoryProcessor(decoding.MemoryProcessor):
    def __call__(self, input_ids, scores):
        mixed = super().__call__(input_ids, scores)
        _recorded.append(mixed)  # decoding only reads it
        return mixed


class ReplayedMemoryProcessor(decoding.MemoryProcessor):
    def __init__(self, *args, **kwargs):
        pass  # nothing to look up

    def __call__(self, input_ids, scores):
        mixed = next(_replay, None)
        if mixed is None or mixed.shape != scores.shape:
            raise RuntimeError("the replay left the recorded decoding")
        return mixed


@contextlib.contextmanager
def _memory_processor(processor: type):
    original = decoding.MemoryProcessor
    decoding.MemoryProcessor = processor  # generate_prompts makes its memory's processor from this name
    try:
        yield
    finally:
        decoding.MemoryProcessor = original


@contextlib.contextmanager
def recording():
    """Every generate_prompts call with a memory inside keeps its processor's scores, in order."""
    _recorded.clear()
    with _memory_processor(RecordingMemoryProcessor):
        yield


@contextlib.contextmanager
def replaying():
    """generate_prompts calls inside get the recorded scores back in the recorded order; then they are dropped."""
    global _replay
    _replay = iter(_recorded)
    with _memory_processor(ReplayedMemoryProcessor):
        yield
    left = next(_replay, None) is not None
    _recorded.clear()
    if left:
        raise RuntimeError("the replay ended before the recorded decoding")
