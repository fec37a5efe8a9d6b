"""Web demo: type a few keywords, get a full Stable Diffusion prompt and a picture from Karlo.

    python run_gradio.py                                  # http://127.0.0.1:7860, default checkpoint
    KARLO_API_KEY=... python run_gradio.py --model_name_or_path=results --fp16 --device="cuda"

Without KARLO_API_KEY it still writes prompts and says that images need the key. The prompt always comes
back first; an image service failure shows as a message next to it.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the demo talks to no one but its users and Karlo
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import threading
from dataclasses import dataclass, field

import gradio as gr
from transformers import HfArgumentParser, set_seed

import utils
from karlo_api import KarloClient, KarloError

EXAMPLES = ["young, curly haired,", "a beautiful", "a cyberpunk city,"]
MAX_INPUT_CHARS = 300


@dataclass
class DemoArguments:
    model_name_or_path: str = field(default=utils.DEFAULT_CHECKPOINT, metadata={
        "help": "Checkpoint folder written by run_clm.py, or any causal LM."})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda."})
    fp16: bool = field(default=False, metadata={"help": "Run the model in float16 (GPU)."})
    bf16: bool = field(default=False, metadata={"help": "Run the model in bfloat16."})
    server_name: str = field(default="127.0.0.1", metadata={"help": "Address to listen on (0.0.0.0: every interface)."})
    server_port: int | None = field(default=None, metadata={"help": "Port (default: 7860, or the next free one)."})
    share: bool = field(default=False, metadata={"help": "Also publish a public gradio.live link."})
    concurrency_limit: int = field(default=8, metadata={"help": "Requests served at once; the rest wait in the queue."})
    karlo_timeout: float = field(default=60.0, metadata={"help": "Seconds to wait for Karlo per request."})


def build_demo(model, tokenizer, karlo: KarloClient, concurrency_limit: int = 8) -> gr.Blocks:
    model_lock = threading.Lock()  # one generation at a time (seeding is global); image requests run in parallel

    def write_prompts(keywords: str, num_keywords: int, strategy: str, seed: int, candidates: int) -> list[str]:
        text = utils.clean_prompt("".join(ch for ch in keywords if ch.isprintable() or ch.isspace()))
        if not text:
            raise ValueError("Type at least one keyword, e.g. 'young, curly haired,'.")
        if len(keywords) > MAX_INPUT_CHARS:
            raise ValueError(f"That is {len(keywords)} characters; give the first few keywords "
                             f"(at most {MAX_INPUT_CHARS} characters).")
        preset = utils.PRESETS[strategy]
        if not preset["do_sample"] and preset["num_beams"] == 1:  # greedy has one answer only
            candidates = 1
        room = utils.model_context(model) - len(tokenizer(text + ",")["input_ids"])
        if room < 8:
            raise ValueError("Those keywords fill the model's context; give fewer.")
        max_new_tokens = min(12 * int(num_keywords) + 16, room)  # ample for the keywords asked for
        with model_lock:
            set_seed(int(seed))
            return utils.generate_prompts(model, tokenizer, [text + ","], preset, max_new_tokens,
                                          num_keywords=[int(num_keywords)], num_return_sequences=int(candidates))

    def generate(keywords, num_keywords, strategy, seed, candidates, negative_prompt):
        try:
            prompts = write_prompts(keywords or "", num_keywords, strategy, seed, candidates)
        except ValueError as e:
            yield "", None, f"**{e}**"
            return
        text = "\n".join(prompts)
        if not karlo.has_key:
            yield text, None, "Prompt written. Images need a Karlo API key: set `KARLO_API_KEY` and restart."
            return
        yield text, None, "Prompt written; drawing the image..."
        try:
            image = karlo.text_to_image(prompts[0], negative_prompt or "")[0]
        except KarloError as e:
            yield text, None, f"Prompt written, but no image: {e}"
            return
        yield text, image, "Done."

    with gr.Blocks(title="Keyword generator", analytics_enabled=False) as demo:
        gr.Markdown("# Keyword generator\nType the first keyword or two; the model writes the rest of a "
                    "Stable Diffusion prompt, and Karlo draws it.")
        with gr.Row():
            with gr.Column():
                keywords = gr.Textbox(label="Keywords", placeholder="young, curly haired,", max_lines=2)
                num_keywords = gr.Slider(1, 20, value=12, step=1, label="Number of keywords")
                strategy = gr.Dropdown(list(utils.PRESETS), value="beam", label="Strategy")
                with gr.Row():
                    seed = gr.Number(value=42, precision=0, label="Seed")
                    candidates = gr.Slider(1, 4, value=1, step=1, label="Candidates")
                negative_prompt = gr.Textbox(label="Negative prompt (image)", placeholder="blurry, low quality")
                button = gr.Button("Generate", variant="primary")
            with gr.Column():
                prompts = gr.Textbox(label="Prompt", lines=4, buttons=["copy"], elem_id="prompt")
                status = gr.Markdown()
                image = gr.Image(label="Image", type="pil", format="png", elem_id="image")
        gr.Examples(EXAMPLES, inputs=[keywords])
        inputs = [keywords, num_keywords, strategy, seed, candidates, negative_prompt]
        button.click(generate, inputs, [prompts, image, status], api_name="generate",
                     concurrency_limit=concurrency_limit)
        keywords.submit(generate, inputs, [prompts, image, status], concurrency_limit=concurrency_limit)
    return demo.queue(max_size=64)


def main() -> None:
    (args,) = HfArgumentParser(DemoArguments).parse_args_into_dataclasses()
    model, tokenizer = utils.load_checkpoint(args.model_name_or_path, args.device, args.fp16, args.bf16)
    karlo = KarloClient(timeout=args.karlo_timeout)
    if not karlo.has_key:
        print("note: KARLO_API_KEY is not set: the demo writes prompts but draws no images.")
    build_demo(model, tokenizer, karlo, args.concurrency_limit).launch(
        server_name=args.server_name, server_port=args.server_port, share=args.share)


if __name__ == "__main__":
    main()
