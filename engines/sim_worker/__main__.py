"""`python -m engines.sim_worker --role prefill --port 30000 ...`: one simulated SGLang worker."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from engines.sim_worker.config import ROLES, SimWorkerConfig
from engines.sim_worker.server import serve


def parse_args(argv: Sequence[str] | None = None) -> SimWorkerConfig:
    p = argparse.ArgumentParser(prog="python -m engines.sim_worker", description=__doc__)
    p.add_argument("--role", "--disaggregation-mode", dest="role", choices=ROLES, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument(
        "--bootstrap-port",
        "--disaggregation-bootstrap-port",
        dest="bootstrap_port",
        type=int,
        default=8998,
    )
    p.add_argument("--model", "--served-model-name", dest="served_model_name", default="tiny")
    p.add_argument("--engine-model", default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", dest="tokenizer_path", default=None)
    p.add_argument("--waiting-timeout", dest="waiting_timeout_s", type=float, default=300.0)
    p.add_argument("--bootstrap-timeout", dest="bootstrap_timeout_s", type=float, default=300.0)
    p.add_argument("--no-cache-report", dest="enable_cache_report", action="store_false")
    p.add_argument("--page-size", type=int, default=64)
    p.add_argument("--max-running-requests", type=int, default=256)
    p.add_argument("--max-total-tokens", dest="max_total_num_tokens", type=int, default=262144)
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--startup-delay", dest="startup_delay_s", type=float, default=0.0)
    p.add_argument("--kv-store", default=None, help="http://HOST:PORT | mooncake://HOST:PORT")
    p.add_argument("--kv-scale", type=float, default=256.0)
    p.add_argument("--kv-segment-bytes", type=int, default=64 << 20)
    p.add_argument("--snic-gbps", type=float, default=None)
    p.add_argument("--cnic-gbps", type=float, default=None)
    p.add_argument("--log-level", default="warning")
    return SimWorkerConfig(**vars(p.parse_args(argv)))


def main(argv: Sequence[str] | None = None) -> None:
    serve(parse_args(argv))


if __name__ == "__main__":
    main()
