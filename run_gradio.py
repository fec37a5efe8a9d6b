"""Web demo: type a few keywords, get a full Stable Diffusion prompt and a picture from your image service.

    python run_gradio.py                                  # http://127.0.0.1:7860, default checkpoint, Karlo
    KARLO_API_KEY=... python run_gradio.py --model_name_or_path=results --fp16 --device="cuda"
    python run_gradio.py --image_backend a1111 --image_url http://127.0.0.1:7861   # image_backends.py lists them all

The page says which back-end draws and where, and at start whether a key is missing or the server is not
reachable; it writes prompts whatever happens to images. The prompt always comes back first; an image service
failure shows as a message next to it. With a memory of the training prompts (memory/ in the checkpoint) a
slider sets its weight, a box caps how many keywords in a row may come from one training prompt, and under the
prompt the page names the training prompt it shares its longest run of keywords with.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the demo talks to no one but its users and images
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import threading
from dataclasses import dataclass, field
from typing import ClassVar

import gradio as gr
from transformers import set_seed

import decoding
import utils
from image_backends import ImageArguments, ImageError, describe, make_backend

EXAMPLES = ["young, curly haired,", "a beautiful", "a cyberpunk city,"]
MAX_INPUT_CHARS = 300


@dataclass
class DemoArguments:
    bounds: ClassVar[dict] = {"server_port": (1, 65535), "concurrency_limit": (1, None)}
    server_name: str = field(default="127.0.0.1", metadata={"help": "Address to listen on (0.0.0.0: every interface)."})
    server_port: int | None = field(default=None, metadata={"help": "Port (default: 7860, or the next free one)."})
    share: bool = field(default=False, metadata={"help": "Also publish a public gradio.live link."})
    concurrency_limit: int = field(default=8, metadata={"help": "Requests served at once; the rest wait in the queue."})


def provenance(memory, prompt: str, input_keywords: int, tokenizer) -> str:
    """Which training prompt the prompt shares its longest run of new keywords with, and how long that run is."""
    if memory is None:
        return ""
    (length, index), = memory.longest_copied_runs([prompt], input_keywords)
    if not length:
        return "Copied: none of its new keywords is in a training prompt."
    source = tokenizer.decode(memory.prompt_tokens(index), skip_special_tokens=True).replace("_", " ")
    return f"Copied: {length} keyword{'s' * (length > 1)} in a row from the training prompt _{source}_"


def build_demo(model, tokenizer, backend, problem: ImageError | None, concurrency_limit: int = 8, memory=None,
               memory_weight: float = 1.0, max_copied_keywords: int | None = None) -> gr.Blocks:
    """backend: an image_backends back-end, or None if it could not be set up; problem: what was found wrong at
    start. Without a key (or a back-end) no image is asked for; an unreachable server is tried again each time.
    memory: the checkpoint's memory of its training prompts (None: the model alone), with the slider's start value
    and the copy limit's (None: no limit)."""
    model_lock = threading.Lock()  # one generation at a time (seeding is global); image requests run in parallel

    def write_prompts(keywords: str, num_keywords: int, strategy: str, seed: int, candidates: int, blocklist: str,
                      max_clip_tokens: int, allow_repeats: bool, weight: float, max_copied: int) -> list[str]:
        text = utils.clean_prompt("".join(ch for ch in keywords if ch.isprintable() or ch.isspace()))
        if not text:
            raise utils.InputError("Type at least one keyword, e.g. 'young, curly haired,'.")
        if len(keywords) > MAX_INPUT_CHARS:
            raise utils.InputError(f"That is {len(keywords)} characters; give the first few keywords "
                                   f"(at most {MAX_INPUT_CHARS} characters).")
        preset = decoding.PRESETS[strategy]
        if not preset["do_sample"] and preset["num_beams"] == 1:  # greedy has one answer only
            candidates = 1
        room = decoding.model_context(model) - len(tokenizer(text + ",")["input_ids"])
        if room < 8:
            raise utils.InputError("Those keywords fill the model's context; give fewer.")
        max_new_tokens = min(12 * int(num_keywords) + 16, room)  # ample for the keywords asked for
        with model_lock:
            set_seed(int(seed))
            return decoding.generate_prompts(
                model, tokenizer, [text + ","], preset, max_new_tokens, num_keywords=[int(num_keywords)],
                num_return_sequences=int(candidates), blocklist=(blocklist or "").split(","),
                no_repeat_keywords=not allow_repeats, max_clip_tokens=int(max_clip_tokens) if max_clip_tokens else None,
                memory=memory, memory_weight=float(weight or 0), max_copied_keywords=int(max_copied) if max_copied and
                memory is not None else None)

    def generate(keywords, num_keywords, strategy, seed, candidates, negative_prompt, blocklist="", max_clip_tokens=75,
                 allow_repeats=False, weight=memory_weight, max_copied=max_copied_keywords or 0):
        try:
            prompts = write_prompts(keywords or "", num_keywords, strategy, seed, candidates, blocklist,
                                    max_clip_tokens, allow_repeats, weight, max_copied)
        except utils.InputError as e:
            yield "", None, f"**{e}**", "", ""
            return
        text = "\n".join(prompts)
        budget = f" of {int(max_clip_tokens)}" if max_clip_tokens else ""
        clip = "CLIP tokens: " + ", ".join(f"{n}{budget}" for n in decoding.clip_token_counts(prompts))
        copied = provenance(memory, prompts[0], utils.clean_prompt(keywords).count(",") + 1, tokenizer)
        if backend is None or (problem and problem.kind in ("no_key", "setup")):
            yield text, None, f"Prompt written. No image: {problem}", clip, copied
            return
        yield text, None, "Prompt written; drawing the image...", clip, copied
        try:
            image = backend.draw(prompts[0], negative_prompt or "", int(seed))
        except ImageError as e:
            yield text, None, f"Prompt written, but no image: {e}", clip, copied
            return
        yield text, image, "Done.", clip, copied

    with gr.Blocks(title="Keyword generator", analytics_enabled=False) as demo:
        gr.Markdown("# Keyword generator\nType the first keyword or two; the model writes the rest of a "
                    "Stable Diffusion prompt, and your image service draws it.")
        where = describe(backend) if backend else "none"
        if backend is not None and not backend.takes_negative_prompt:
            where += " (it takes no negative prompt)"
        gr.Markdown(f"Images: **{where}**" + (f". {problem}" if problem else ""), elem_id="image_backend")
        with gr.Row():
            with gr.Column():
                keywords = gr.Textbox(label="Keywords", placeholder="young, curly haired,", max_lines=2)
                num_keywords = gr.Slider(1, 20, value=12, step=1, label="Number of keywords")
                strategy = gr.Dropdown(list(decoding.PRESETS), value="beam", label="Strategy")
                with gr.Row():
                    seed = gr.Number(value=42, precision=0, label="Seed")
                    candidates = gr.Slider(1, 4, value=1, step=1, label="Candidates")
                blocklist = gr.Textbox(label="Blocklist", placeholder="nsfw, greg rutkowski", max_lines=2,
                                       info="Words or phrases the model must never write (any case).")
                with gr.Row():
                    max_clip_tokens = gr.Number(value=75, precision=0, minimum=0, label="CLIP token budget",
                                                info="End at the last whole keyword that fits; 0: no limit.")
                    allow_repeats = gr.Checkbox(value=False, label="Allow repeated keywords")
                with gr.Row():
                    weight = gr.Slider(0, 2, value=memory_weight if memory is not None else 0, step=0.1,
                                       label="Memory", interactive=memory is not None, elem_id="memory_weight",
                                       info="How much the training prompts steer the model: 0 the model alone, 1 as "
                                            "tuned." if memory is not None else "This checkpoint has no memory.")
                    max_copied = gr.Number(value=max_copied_keywords or 0, precision=0, minimum=0,
                                           label="Most keywords copied in a row", interactive=memory is not None,
                                           info="From any one training prompt; 0: no limit.")
                negative_prompt = gr.Textbox(label="Negative prompt (image)", placeholder="blurry, low quality")
                button = gr.Button("Generate", variant="primary")
            with gr.Column():
                prompts = gr.Textbox(label="Prompt", lines=4, buttons=["copy"], elem_id="prompt")
                copied = gr.Markdown(elem_id="provenance")
                clip_tokens = gr.Markdown(elem_id="clip_tokens")
                status = gr.Markdown()
                image = gr.Image(label="Image", type="pil", format="png", elem_id="image")
        gr.Examples(EXAMPLES, inputs=[keywords])
        inputs = [keywords, num_keywords, strategy, seed, candidates, negative_prompt, blocklist, max_clip_tokens,
                  allow_repeats, weight, max_copied]
        outputs = [prompts, image, status, clip_tokens, copied]
        button.click(generate, inputs, outputs, api_name="generate", concurrency_limit=concurrency_limit)
        keywords.submit(generate, inputs, outputs, concurrency_limit=concurrency_limit)
    return demo.queue(max_size=64)


def start_backend(args: ImageArguments):
    """The image back-end and what is wrong with it at start (None: nothing known). Never fatal: prompts go on."""
    try:
        backend = make_backend(args)
    except ImageError as e:
        return None, e
    return backend, backend.problem()


def main() -> None:
    inference, args, image_args = utils.parse_arguments((decoding.InferenceArguments, DemoArguments, ImageArguments))
    model, tokenizer, memory = inference.load()
    backend, problem = start_backend(image_args)
    print(f"Images: {describe(backend) if backend else image_args.image_backend}" + (f". {problem}" if problem else ""))
    build_demo(model, tokenizer, backend, problem, args.concurrency_limit, memory, inference.memory_weight,
               inference.max_copied_keywords).launch(server_name=args.server_name, server_port=args.server_port,
                                                     share=args.share)


if __name__ == "__main__":
    utils.run_main(main)
