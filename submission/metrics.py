"""GET /metrics in Prometheus' text format (0.0.4): requests and their latency per route and status,
and the engine's state (queue, batch rows, decoded tokens, prefix cache, KV memory).

Rates are left to Prometheus: tokens per second is `rate(harness_generated_tokens_total[1m])`. The
counters live in the server process; the request threads only touch them on the event loop.
"""

from __future__ import annotations

from collections import defaultdict

# Latency buckets in seconds: from a 1-token answer on a GPU to a 400-token generation under load.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)  # (method, route, status)
        self.buckets: dict[str, list[int]] = defaultdict(lambda: [0] * len(BUCKETS))
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests[(method, route, status)] += 1
        counts = self.buckets[route]
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                counts[i] += 1
        self.sums[route] += seconds
        self.counts[route] += 1

    def render(self, stats: dict, alive: bool) -> str:
        """The exposition text; `stats` is Engine.stats()."""
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        family("harness_requests_total", "counter", "HTTP requests answered, by method, route and status")
        for (method, route, status), count in sorted(self.requests.items()):
            out.append(f'harness_requests_total{{method="{method}",route="{route}",status="{status}"}} {count}')
        family("harness_request_seconds", "histogram", "time from request to response, by route")
        for route in sorted(self.counts):
            for bound, count in zip(BUCKETS, self.buckets[route]):
                out.append(f'harness_request_seconds_bucket{{route="{route}",le="{bound}"}} {count}')
            out.append(f'harness_request_seconds_bucket{{route="{route}",le="+Inf"}} {self.counts[route]}')
            out.append(f'harness_request_seconds_sum{{route="{route}"}} {self.sums[route]}')
            out.append(f'harness_request_seconds_count{{route="{route}"}} {self.counts[route]}')
        cache, memory = stats["prefix_cache"], stats["memory"]
        gauges = {
            "harness_engine_up": (int(alive), "1 while the engine's worker runs"),
            "harness_queue_length": (stats["queued"], "requests waiting for a batch row"),
            "harness_batch_rows": (stats["running"], "requests decoding in the running batch"),
            "harness_batch_tokens_bound": (memory["batch_tokens"], "the running batch's KV bound in tokens"),
            "harness_kv_bytes_per_token": (memory["kv_bytes_per_token"], "KV cache bytes per token"),
            "harness_prefix_cache_tokens": (cache["tokens"], "tokens held by the prefix cache"),
            "harness_prefix_cache_capacity_tokens": (memory["prefix_cache_tokens"], "the prefix cache's bound"),
            "harness_prefix_cache_entries": (cache["entries"], "prefixes held by the prefix cache"),
        }
        counters = {
            "harness_decode_steps_total": (stats["decode_steps"], "decoding steps run"),
            "harness_generated_tokens_total": (
                round(stats["mean_batch"] * stats["decode_steps"]), "tokens decoded (rows summed over steps)"),
            "harness_prefix_cache_hits_total": (cache["hits"], "prompts that reused a cached prefix"),
            "harness_prefix_cache_reused_tokens_total": (cache["reused_tokens"], "prompt tokens not recomputed"),
            "harness_prefix_cache_evictions_total": (cache["evictions"], "prefixes evicted"),
            "harness_out_of_memory_total": (memory["out_of_memory"], "times the engine shed memory"),
            "harness_prompt_seconds_total": (stats["prompt_s"], "worker time computing prompts"),
            "harness_decode_seconds_total": (stats["decode_s"], "worker time decoding"),
        }
        for kind, values in (("gauge", gauges), ("counter", counters)):
            for name, (value, help_text) in values.items():
                family(name, kind, help_text)
                out.append(f"{name} {value}")
        return "\n".join(out) + "\n"
