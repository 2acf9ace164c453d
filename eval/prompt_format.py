"""`--prompt-format`: every request's prompt put in a prompt format (core/prompts.py) before the target sees it.

raw (the default) sends the judges' prompts as the HELM client does; chat wraps each in the chat template
of the target's tokenizer (the local --model's, or --tokenizer's for a --server), the same rule a recipe's
`model.prompt_format` applies to training data, so a model is evaluated in the format it was trained in.
A competition server encodes the template's special tokens as plain text (submission/engine.py sets
split_special_tokens, as the judges' prompts never hold any), so chat is exact only in-process (--model).
"""
from __future__ import annotations

from lm_eval.api.model import LM

from core.prompts import format_prompt


class Formatted(LM):
    """Another lm-eval LM whose requests' contexts are put in `prompt_format` first."""

    def __init__(self, inner: LM, tokenizer, prompt_format: str):
        super().__init__()
        format_prompt(tokenizer, "", prompt_format)  # an unusable format fails before any request
        self.inner, self.tokenizer, self.prompt_format = inner, tokenizer, prompt_format

    def _formatted(self, requests):
        for request in requests:
            context, *rest = request.args
            request.arguments = (format_prompt(self.tokenizer, context, self.prompt_format), *rest)
        return requests

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        return self.inner.generate_until(self._formatted(requests), disable_tqdm)

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self.inner.loglikelihood(self._formatted(requests), disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self.inner.loglikelihood_rolling(requests, disable_tqdm)  # whole texts, no prompt to format
