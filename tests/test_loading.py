"""The one loader's rules: the compute dtype, the attention implementation, the context."""
from __future__ import annotations

import sys

import pytest
import torch

from core.models import attention_implementation, compute_dtype, flash_attn_imports, resolve_quant


def test_one_dtype_rule_for_training_serving_and_evaluation():
    assert compute_dtype("bf16") == torch.bfloat16 and compute_dtype("fp16") == torch.float16
    if torch.cuda.is_available():
        half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        assert compute_dtype("auto") == half and resolve_quant("auto") == {torch.bfloat16: "bf16"}.get(half, "fp16")
    else:
        assert compute_dtype("auto") == torch.float32 and resolve_quant("auto") == "fp32"
    assert resolve_quant("nf4") == "nf4"


def test_a_flash_attn_that_does_not_import_is_not_used(tmp_path, monkeypatch):
    """A flash-attn wheel built against another torch is found by the package metadata but fails at
    import with an undefined symbol; such a module must count as absent."""
    package = tmp_path / "flash_attn"
    package.mkdir()
    (package / "__init__.py").write_text(
        'raise ImportError("flash_attn_2_cuda.cpython-311-x86_64-linux-gnu.so: undefined symbol: _ZN3c104cuda9SetDeviceEi")')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    assert not flash_attn_imports()
    (package / "__init__.py").write_text("")
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    assert flash_attn_imports()
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)


def test_attention_setting_other_than_auto_is_kept():
    assert attention_implementation("eager") == "eager"
    if not torch.cuda.is_available():
        assert attention_implementation("auto") == "sdpa"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_flash_attention_is_chosen_exactly_when_it_imports():
    from transformers.utils import is_flash_attn_2_available

    usable = is_flash_attn_2_available() and flash_attn_imports()
    assert attention_implementation("auto") == ("flash_attention_2" if usable else "sdpa")


def test_the_context_is_the_competitions_rule(tiny_model):
    """budget.toml's max_total_tokens is the one place the 2048-token context is written."""
    from transformers import AutoConfig, AutoTokenizer

    from core.rules import load_rules
    from eval.client import CONTEXT_WINDOW
    from submission.settings import Settings

    context = load_rules().max_total_tokens
    assert context == 2048
    assert CONTEXT_WINDOW == Settings().context == context
    assert AutoConfig.from_pretrained(tiny_model).max_position_embeddings == context
    assert AutoTokenizer.from_pretrained(tiny_model).model_max_length == context
