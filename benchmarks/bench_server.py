"""Latency and throughput of the OpenAI-compatible server under concurrent streaming clients.

For each client count (default 1, 4 and 8) and each scheduling mode, the script starts
``turboquant serve`` on a free loopback port with the default model. N clients then send
streaming chat requests at once through the official ``openai`` client. Each client measures its time to first token (request sent to first chunk with text) and its
decode rate (completion tokens after the first, over the time from first to last chunk).
The total rate is all completion tokens over the wall time from the first request to the
last reply.

Modes:
    parallel  --max-concurrent N: every client runs at once on its own context; the server
              gives each running request threads / running OpenMP threads.
    serial    --max-concurrent 1: one request at a time with all threads, the others queued.
              The baseline that the parallel mode has to beat.

Usage:
    python benchmarks/bench_server.py [--clients 1,4,8] [--max-tokens 64] [--threads 2]
        [--modes parallel,serial] [--weights PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Distinct prompts, so no two clients could share work by accident.
TOPICS = ["the sea", "a mountain", "a city at night", "a forest", "the desert", "a river", "winter", "a library"]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(weights, threads: int, max_concurrent: int, ctx: int, log_path: str):
    """Start a server subprocess and return (process, base_url) once /health returns 200."""
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "turboquant", "serve", "--port", str(port), "--threads", str(threads),
               "--max-concurrent", str(max_concurrent), "--max-queue", "64", "--ctx", str(ctx),
               "--log-level", "warning"]
    if weights:
        command += ["--weights", weights]
    log = open(log_path, "w")
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                               env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}; see {log_path}")
        try:
            if httpx.get(base_url + "/health", timeout=1).status_code == 200:
                return process, base_url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise RuntimeError(f"/health did not respond within 120 s; see {log_path}")


def run_client(client, index: int, max_tokens: int, start_event: threading.Event, out: list) -> None:
    messages = [{"role": "user", "content": f"Write a short story about {TOPICS[index % len(TOPICS)]}."}]
    start_event.wait()
    sent = time.perf_counter()
    first = last = None
    tokens = 0
    stream = client.chat.completions.create(model="default", messages=messages, max_tokens=max_tokens,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            now = time.perf_counter()
            first = first if first is not None else now
            last = now
    out[index] = dict(sent=sent, first=first, last=last, tokens=tokens)


def measure(base_url: str, clients: int, max_tokens: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=600)
    # Warm-up: page in the weights and start the worker threads.
    client.chat.completions.create(model="default", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)

    results = [None] * clients
    start_event = threading.Event()
    workers = [threading.Thread(target=run_client, args=(client, i, max_tokens, start_event, results))
               for i in range(clients)]
    for worker in workers:
        worker.start()
    start_event.set()
    for worker in workers:
        worker.join()

    first_token = [r["first"] - r["sent"] for r in results]
    per_client = [(r["tokens"] - 1) / (r["last"] - r["first"]) for r in results if r["last"] > r["first"]]
    wall = max(r["last"] for r in results) - min(r["sent"] for r in results)
    total_tokens = sum(r["tokens"] for r in results)
    return dict(
        clients=clients,
        ttft_median=statistics.median(first_token),
        ttft_max=max(first_token),
        per_client=statistics.median(per_client) if per_client else 0.0,
        total=total_tokens / wall,
        tokens=total_tokens,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,4,8", help="comma-separated concurrent client counts")
    parser.add_argument("--max-tokens", type=int, default=64, help="completion tokens per request")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="server --threads")
    parser.add_argument("--modes", default="parallel,serial", help="parallel, serial or both")
    parser.add_argument("--ctx", type=int, default=1024, help="server --ctx")
    parser.add_argument("--weights", help="GGUF file (default: the default model)")
    args = parser.parse_args()

    counts = [int(part) for part in args.clients.split(",")]
    modes = args.modes.split(",")
    log_path = os.path.join(ROOT, "build", "bench_server.log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)

    print(f"command: python benchmarks/bench_server.py --clients {args.clients} --max-tokens {args.max_tokens} "
          f"--threads {args.threads} --modes {args.modes} --ctx {args.ctx}")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical CPUs; server threads {args.threads}")
    print(f"load average (1 minute) before the run: {os.getloadavg()[0]:.1f}")
    print()
    print("| clients | mode | time to first token, median / max (s) | tokens/s per client (median) | "
          "tokens/s total |")
    print("|---:|---|---:|---:|---:|")
    for count in counts:
        for mode in modes:
            max_concurrent = count if mode == "parallel" else 1
            if mode == "serial" and count == 1:
                continue  # the same configuration as parallel with one client
            process, base_url = start_server(args.weights, args.threads, max_concurrent, args.ctx, log_path)
            try:
                row = measure(base_url, count, args.max_tokens)
            finally:
                process.terminate()
                process.wait(timeout=60)
            print(f"| {count} | {mode} | {row['ttft_median']:.3f} / {row['ttft_max']:.3f} | "
                  f"{row['per_client']:.1f} | {row['total']:.1f} |", flush=True)
    print()
    print(f"load average (1 minute) after the run: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
