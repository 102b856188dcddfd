"""Load benchmark of `peftkit serve` against a separate merged model per adapter (issue 20, part 3).

    PEFTKIT_DATA_DIR=../shared/data bash benchmarks/serve_adapters.sh /tmp/serve-bench
    python benchmarks/serve.py /tmp/serve-bench/ner{1..8} [--rounds 3] [--threads 2]

Two servers run side by side on 127.0.0.1, both over HTTP, both with one model thread:
  serve   `peftkit serve RUN x 8`: one MiniLM base, 8 LoRA adapters, requests that arrive
          together share one forward pass (peft's mixed-adapter batches)
  merged  the naive alternative: each run merged (`peftkit merge`) into its own model, all 8
          held in one process, each request its own forward pass through its run's model
          (the same task.predict code, so both answer the same)
Streams: every request one CoNLL-2003 test sentence, to one adapter or to the 8 mixed in turn,
from 1, 8 and 32 concurrent clients. Cells run interleaved (round by round, the two sides
alternating who goes first) so load from others on the machine hits both alike.
Prints requests/s and p50 / p99 latency per cell, and each server's resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 8, 32)


# ---------------------------------------------------------------- the naive server

def naive_app(folders: list[str]):
    """One merged model per run; a request runs alone through its run's model."""
    from concurrent.futures import ThreadPoolExecutor

    from fastapi import FastAPI

    from peftkit.predict import load_for_inference

    loaded = {Path(f).name: load_for_inference(f) for f in folders}
    model_thread = ThreadPoolExecutor(max_workers=1)
    app = FastAPI()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/v1/predict")
    async def predict(body: dict):
        one = loaded[body["adapter"]]

        def run():
            return one.task.predict(one.model, one.tokenizer, body["texts"], one.labels, one.recipe)

        records = await asyncio.get_running_loop().run_in_executor(model_thread, run)
        return {"adapter": body["adapter"], "predictions": records}

    return app


def run_naive(port: int, folders: list[str]) -> None:
    import uvicorn

    uvicorn.run(naive_app(folders), host="127.0.0.1", port=port, log_level="warning")


# ---------------------------------------------------------------- the load

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, *args, "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}"


def wait_healthy(proc, url: str) -> None:
    import httpx2

    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"server {url} exited with {proc.returncode}")
        try:
            if httpx2.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx2.HTTPError:
            time.sleep(0.5)
    raise SystemExit(f"server {url} did not come up")


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


async def stream(url: str, names: list[str], sentences: list[str], clients: int, n: int):
    """n requests from `clients` concurrent clients; (wall seconds, latencies, failures)."""
    import httpx2

    latencies, failures = [], 0
    todo = iter(range(n))
    async with httpx2.AsyncClient(base_url=url, timeout=300,
                                  limits=httpx2.Limits(max_connections=clients)) as client:
        async def worker():
            nonlocal failures
            for i in todo:
                body = {"adapter": names[i % len(names)], "texts": [sentences[i % len(sentences)]]}
                t0 = time.perf_counter()
                r = await client.post("/v1/predict", json=body)
                latencies.append(time.perf_counter() - t0)
                failures += r.status_code != 200
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - t0, latencies, failures


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def test_sentences(limit: int = 400) -> list[str]:
    from peftkit.data.conll import read_conll

    data_dir = Path(os.environ.get("PEFTKIT_DATA_DIR", ROOT.parent / "shared" / "data"))
    rows = read_conll(data_dir / "conll2003" / "test.txt")
    return [" ".join(tokens) for tokens in rows["tokens"][:limit] if len(tokens) > 3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=64, help="requests per client count of 1; "
                        "x2 at 8 clients, x4 at 32")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each server")
    parser.add_argument("--naive-server", type=int, help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_server:
        return run_naive(args.port, args.runs)

    from peftkit.export import merge_run

    runs = [str(Path(r).resolve()) for r in args.runs]
    names = [Path(r).name for r in runs]
    sentences = test_sentences()
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        merged = [str(merge_run(r, Path(tmp) / Path(r).name)) for r in runs]
        servers = {"serve": start(["-m", "peftkit", "serve", *runs], args.threads),
                   "merged": start([__file__, *merged, "--naive-server", "1"], args.threads)}
        try:
            for name, (proc, url) in servers.items():
                wait_healthy(proc, url)
            memory = {name: rss_mb(proc.pid) for name, (proc, _) in servers.items()}
            results = measure(servers, names, sentences, args)
            after = {name: rss_mb(proc.pid) for name, (proc, _) in servers.items()}
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=60)
    report(results, memory, after, len(runs), args)


def measure(servers, names, sentences, args) -> dict:
    results: dict[tuple, dict] = {}
    order = list(servers)
    for round_ in range(args.rounds):
        for stream_name, targets in (("1 adapter", names[:1]), (f"{len(names)} mixed", names)):
            for clients in CONCURRENCY:
                n = args.requests * {1: 1, 8: 2, 32: 4}[clients]
                for side in (order if round_ % 2 == 0 else order[::-1]):
                    wall, lat, failed = asyncio.run(stream(servers[side][1], targets, sentences,
                                                           clients, n))
                    cell = results.setdefault((stream_name, clients, side),
                                              {"wall": 0.0, "n": 0, "lat": [], "failed": 0})
                    cell["wall"] += wall
                    cell["n"] += n
                    cell["lat"] += lat
                    cell["failed"] += failed
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    return results


def report(results: dict, memory: dict, after: dict, n_runs: int, args) -> None:
    print(f"peftkit serve vs one merged model per adapter; {args.rounds} interleaved rounds, "
          f"{args.threads} torch threads per server; 2-core machine shared with other jobs")
    print(f"{'stream':<11} {'clients':>7} | {'serve req/s':>11} {'p50 ms':>7} {'p99 ms':>7} | "
          f"{'merged req/s':>12} {'p50 ms':>7} {'p99 ms':>7} | {'speed-up':>8} | failed")
    for (stream_name, clients) in dict.fromkeys((s, c) for s, c, _ in results):
        a, b = results[(stream_name, clients, "serve")], results[(stream_name, clients, "merged")]
        ra, rb = a["n"] / a["wall"], b["n"] / b["wall"]
        print(f"{stream_name:<11} {clients:>7} | {ra:>11.1f} {1000 * percentile(a['lat'], 50):>7.1f} "
              f"{1000 * percentile(a['lat'], 99):>7.1f} | {rb:>12.1f} "
              f"{1000 * percentile(b['lat'], 50):>7.1f} {1000 * percentile(b['lat'], 99):>7.1f} | "
              f"{ra / rb:>7.2f}x | {a['failed']} / {b['failed']}")
    print(f"resident memory (after loading / after the load): serve ({n_runs} adapters on one "
          f"base) {memory['serve']:.0f} / {after['serve']:.0f} MB, merged ({n_runs} models) "
          f"{memory['merged']:.0f} / {after['merged']:.0f} MB")


if __name__ == "__main__":
    main()
