"""Train a byte-level BPE tokenizer on a prompt corpus, for `run_clm.py --tokenizer_name FOLDER`.

A small vocabulary makes the output layer, most of a small model's compute with GPT-2's 50,257 tokens,
several times cheaper.

    python bench/train_tokenizer.py --data ../shared/data/sd-discord-prompts --vocab_size 8192 --output runs/bpe-8k
"""

import argparse
import sys
from pathlib import Path

from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import utils  # noqa: E402

EOS = "<|endoftext|>"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset folder or file (its train split is used)")
    parser.add_argument("--vocab_size", type=int, default=8192, help="tokens in the vocabulary, EOS included")
    parser.add_argument("--output", required=True, help="folder to save the tokenizer in")
    args = parser.parse_args()
    prompts = utils.load_prompts(args.data)["train"]["Prompt"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(prompts, vocab_size=args.vocab_size, min_frequency=2, special_tokens=[EOS])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, unk_token=EOS)
    tokenizer.save_pretrained(args.output)
    print(f"saved a {len(tokenizer)}-token tokenizer to {args.output}")


if __name__ == "__main__":
    main()
