"""The replay client: agents of a trace replayed against any OpenAI-compatible endpoint.

    config        ReplayConfig, Timeouts: what one run does (frozen, checked when built)
    prompt_text   deterministic user text of a given token count, and the per-agent feedback
                  that keeps each prompt near the trace's length whatever the chat template adds
    sse           a bounded Server-Sent Events decoder (pure: bytes in, payloads out)
    chat_request  one streamed chat completion → a `TurnOutcome` (sample, reply, ITL summary)
    agent         one agent's turns in order, with tool latency, stopping at its first error
    server_probe  best effort, our gateway only: storage-NIC counters and read-path shares
    runner        the run: model discovery, arrivals (offline | Poisson), concurrency, progress
    progress      the progress bar (requests done, errors, recent median TTFT)
    results       results.json, samples.jsonl and the report folder
    command       `dualpath replay` (mounted by `loadtest.cli.register`)
    errors        ReplayError, ReplayStreamError

It speaks plain HTTP (`httpx`): nothing here imports the gateway or the engines.
"""
