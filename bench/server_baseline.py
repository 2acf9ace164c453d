"""The baseline for bench/server_throughput.py: a server like the competition's official samples.

One request at a time, each a `model.generate` call (greedy or sampled, with its log-probabilities
from the returned logits); it speaks the same API so the same client drives both servers. It is
given stop strings (`generate(stop_strings=...)`, then the text cut), which the official samples
ignored, so it does no extra work ours avoids.

Two styles: `sample` (the default) is the official samples' own: an `async` handler doing the
blocking generate, so the event loop, and with it all HTTP work, waits for each request in turn.
`threaded` is a stronger baseline: a plain handler in FastAPI's thread pool, generate behind a
lock, so HTTP work for other clients overlaps the model work.

    python bench/server_baseline.py --port 8081 [--style sample|threaded] [--model PATH] [--threads N]
"""

from __future__ import annotations

import argparse
import threading
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.embedded import resolve_model_id
from core.tiny import EMBEDDED_ID
from submission.api import ProcessRequest

lock = threading.Lock()  # the samples served one request at a time
state: dict = {}


def health() -> dict:
    return {"status": "ok"}


def process(request: ProcessRequest) -> dict:
    start = time.perf_counter()
    model, tokenizer = state["model"], state["tokenizer"]
    ids = tokenizer(request.prompt, return_tensors="pt").input_ids.to(model.device)
    greedy = request.temperature <= 1e-4
    options = (
        {"do_sample": False}
        if greedy
        else {
            "do_sample": True,
            "temperature": request.temperature,
            "top_k": request.top_k,
            "top_p": request.top_p,
        }
    )
    stops = [s for s in request.stop_sequences or [] if s]
    with lock, torch.inference_mode():
        if request.seed is not None:
            torch.manual_seed(request.seed)
        out = model.generate(
            ids,
            max_new_tokens=request.max_new_tokens,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=tokenizer.pad_token_id,
            stop_strings=stops or None,
            tokenizer=tokenizer,
            **options,
        )
    new = out.sequences[0, ids.shape[1] :].tolist()
    tokens, text = [], ""
    for token, logits in zip(new, out.logits):
        if token == tokenizer.eos_token_id:
            break
        logprobs = torch.log_softmax(logits[0].float(), -1)
        top = logprobs.topk(request.top_k_per_token)
        piece = tokenizer.decode([token])
        tokens.append(
            {
                "text": piece,
                "logprob": float(logprobs[token]),
                "top_logprob": {tokenizer.decode([i]): float(v) for v, i in zip(top.values, top.indices)},
            }
        )
        text += piece
    cuts = [text.find(s) for s in stops if s in text]
    if cuts:
        text = text[: min(cuts)]
    return {
        "text": text,
        "tokens": tokens,
        "logprob": sum(t["logprob"] for t in tokens),
        "request_time": time.perf_counter() - start,
    }


async def process_like_the_samples(request: ProcessRequest) -> dict:
    return process(request)  # blocks the event loop, as the samples' handlers did


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--model", default=EMBEDDED_ID)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--style", choices=["sample", "threaded"], default="sample")
    args = parser.parse_args()
    handler = process_like_the_samples if args.style == "sample" else process
    import uvicorn  # here: bench/gpu_check.py calls process() in a process without the web stack
    from fastapi import FastAPI

    app = FastAPI()
    app.get("/health")(health)
    app.post("/process")(handler)
    if args.threads:
        torch.set_num_threads(args.threads)
    path = resolve_model_id(args.model)
    state["tokenizer"] = AutoTokenizer.from_pretrained(path)
    state["model"] = AutoModelForCausalLM.from_pretrained(path).eval()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
