# The gateway image: `dualpath` (gateway, simulated SGLang workers, trace and replay tools), the
# embedded KV store server, and the CPU build of Mooncake (`mooncake_master` and its client),
# whose binaries link Debian's libibverbs1 even over TCP.
FROM python:3.11-slim

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libibverbs1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY session ./session
COPY kvstore ./kvstore
COPY engines ./engines
COPY loadtest ./loadtest
RUN pip install --no-cache-dir ".[hf,mooncake]"

RUN useradd --create-home --uid 10001 dualpath
USER dualpath
EXPOSE 8000
ENTRYPOINT ["dualpath"]
CMD ["--help"]
