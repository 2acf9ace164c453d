"""Prompt formats: how a prompt reaches the model, the same rule for training, serving and evaluation.

  raw   the prompt exactly as the judges' HELM client sends it ("Question: ...\nAnswer:"). The default:
        the competition server receives raw text and must answer it as it comes, so a model is trained
        and evaluated on what it will be asked.
  chat  the prompt as the one user turn of the tokenizer's chat template, the assistant's turn opened
        (what an instruction-tuned model was tuned on; a server that wraps prompts this way would need
        it too).
"""
from __future__ import annotations

PROMPT_FORMATS = ("raw", "chat")
DEFAULT_PROMPT_FORMAT = "raw"


def format_prompt(tokenizer, prompt: str, prompt_format: str) -> str:
    """`prompt` in `prompt_format`; a ValueError naming the format for an unknown one or a tokenizer
    without a chat template."""
    if prompt_format == "raw":
        return prompt
    if prompt_format != "chat":
        raise ValueError(f"prompt format {prompt_format!r}: choose one of {', '.join(PROMPT_FORMATS)}")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"prompt format 'chat': the tokenizer of {tokenizer.name_or_path!r} has no chat template")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
