"""The SLO-aware dual-path scheduler: which prefill engine, which decode engine, which read path.

Pure: the standard library and this package only. No I/O, no clock, no global RNG: every call
takes `now` (seconds on the caller's clock), the cluster state is a plain object the caller
updates, and the engines' cost model is injected (`cost_model.CostModel`). The gateway drives it
in real time; `loadtest`'s simulator drives the same objects in virtual time.

The cycle, as in vLLM's scheduler: `Scheduler.submit` a request → `Scheduler.schedule(now)`
returns the decisions it could make (the rest wait, earliest deadline first) → the caller
dispatches them and reports back `prefill_done` / `finished` and the workers' load reports.
"""
