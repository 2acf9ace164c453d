"""The tiny embedded model: a 4-layer Llama with random weights and a byte-level BPE tokenizer, built locally.

No model hub is reachable on the machines this harness is developed and tested on, so the tests and
the quick checks use this model where speed matters more than what a model knows. It is built once (a
few seconds) and cached as an ordinary Hugging Face folder, so everything downstream loads it by path
like any hub model. Every dimension is a multiple of 64 (the NF4 block size): bitsandbytes' CPU 4-bit kernels
on AVX512-BF16 machines assert otherwise.
"""
from __future__ import annotations

from pathlib import Path

from core.cache import build_once, cache_root

TINY_NAME = "tiny-llama-v2"
EMBEDDED_ID = "embedded:tiny-llama"
VOCAB_SIZE = 1024
SPECIAL_TOKENS = ["<s>", "</s>", "<pad>"]


def tokenizer_corpus() -> list[str]:
    """Text the tokenizer is trained on: the bundled prose plus samples of every generated task,
    so prompts in the judges' formats tokenize compactly."""
    from core import generated

    prose = (Path(__file__).parent / "assets" / "prose.txt").read_text(encoding="utf-8")
    lines = [line for line in prose.splitlines() if line.strip()]
    for task in generated.TASKS.values():
        for record in task.make(count=200, seed=1234):
            lines.append(record["prompt"] + record["completion"])
    return lines


def build_tokenizer():
    """Train a byte-level BPE tokenizer: any UTF-8 text encodes, and decoding is lossless."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from core.rules import load_rules

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    # Like Llama's tokenizer: a BOS token in front of every encoded text.
    bpe.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bpe.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        clean_up_tokenization_spaces=False,
        model_max_length=load_rules().max_total_tokens,  # the competition's context
    )


def build_model(tokenizer, seed: int = 0):
    """A 4-layer Llama with random weights (hidden 128, 4 heads of 32, 2 KV heads)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from core.rules import load_rules

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=load_rules().max_total_tokens,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # At the usual init (std 0.02) a frozen random output head caps every logit near 2-3, so no
    # adapter could ever make a confident prediction; a wider head (std 0.2) gives LoRA room to learn.
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 0.2)
    return model


def tiny_model_path(rebuild: bool = False) -> Path:
    """Build the tiny model once (atomically, see build_once) and return its folder."""

    def build(staging: Path) -> None:
        tokenizer = build_tokenizer()
        build_model(tokenizer).save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return build_once(cache_root() / TINY_NAME, build, rebuild)
