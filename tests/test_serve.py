"""peftkit serve: several runs' adapters on one base, over real HTTP.

Servers are real `python -m peftkit serve` processes on 127.0.0.1 (started, waited for on
/health, stopped); the answers are compared with `peftkit predict` on each run. The runs are
tiny models trained for a step, then their adapter tensors perturbed apart (each run then
answers differently, so a request routed to the wrong adapter shows).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx  # the HTTP client the openai package itself uses (httpx 0.x is not installed)
import pytest
import torch
from safetensors.torch import load_file, save_file

from peftkit.errors import UsageError
from peftkit.pipeline import run_recipe
from peftkit.predict import predict_texts
from peftkit.recipe import build_recipe
from peftkit.rundir import seal_weights

from conftest import tiny_ner_recipe

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["John Smith lives in Paris .", "Maria Garcia works for Acme Corp in Berlin .",
         "the weather was fine", "Tokyo and London signed a deal with Siemens ."]
PROMPTS = ["name[Blue Heron], food[Thai]", "eatType[pub], area[riverside]", "name[Zizzi]"]


def perturb(run_dir: Path, seed: int, scale: float = 0.5) -> None:
    """Noise on every saved adapter tensor, head included: each run predicts differently."""
    path = run_dir / "adapter" / "adapter_model.safetensors"
    g = torch.Generator().manual_seed(seed)
    tensors = {k: v + scale * torch.randn(v.shape, generator=g) for k, v in load_file(str(path)).items()}
    save_file(tensors, str(path), metadata={"format": "pt"})
    seal_weights(path.parent)


def train_ner(model_dir, run_dir: Path, seed: int, strategy=None) -> Path:
    raw = tiny_ner_recipe(model_dir, run_dir, strategy or {"name": "lora", "r": 4},
                          max_steps=1, eval_every="no", seed=seed)
    raw["data"]["max_test_samples"] = 4
    run_recipe(build_recipe(raw))
    perturb(run_dir, seed)
    return run_dir


def train_gen(model_dir, run_dir: Path, seed: int) -> Path:
    raw = {"task": "causal-lm", "model": {"name": str(model_dir)},
           "strategy": {"name": "lora", "r": 4},
           "data": {"name": "demo-gen", "max_length": 64, "max_train_samples": 16,
                    "max_eval_samples": 4, "max_test_samples": 2},
           "train": {"max_steps": 1, "batch_size": 8, "precision": "fp32", "eval_every": "no",
                     "seed": seed},
           "eval": {"max_new_tokens": 6, "fail_on_collapse": False},
           "output": {"dir": str(run_dir)}}
    run_recipe(build_recipe(raw))
    perturb(run_dir, seed, scale=2.0)
    return run_dir


@pytest.fixture(scope="module")
def ner_runs(tiny_bert_dir, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("serve-ner")
    return [train_ner(tiny_bert_dir, root / f"ner{i}", seed=i) for i in (1, 2, 3, 4)]


@pytest.fixture(scope="module")
def gen_runs(tiny_llama_dir, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("serve-gen")
    return [train_gen(tiny_llama_dir, root / f"gen{i}", seed=i) for i in (1, 2, 3)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(*args: str):
    """A real `peftkit serve` process; yields its base URL once /health answers."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "peftkit", "serve", *args, "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_healthy(proc, url: str, limit_s: float = 180) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("server did not answer /health in time")


@pytest.fixture(scope="module")
def ner_server(ner_runs):
    with server(*map(str, ner_runs[:3])) as url:
        yield url


@pytest.fixture(scope="module")
def expected(ner_runs) -> dict[str, list[dict]]:
    """`peftkit predict`'s records, run by run; they differ between runs (else the test is void)."""
    out = {run.name: predict_texts(run, TEXTS) for run in ner_runs}
    assert len({json.dumps(v) for v in out.values()}) == len(out), "adapters predict alike"
    return out


def post(url: str, path: str, body, **kw) -> httpx.Response:
    if isinstance(body, (bytes, str)):
        return httpx.post(url + path, content=body, timeout=60, **kw)
    return httpx.post(url + path, json=body, timeout=60, **kw)


# ---------------------------------------------------------------- correctness

def test_mixed_concurrent_stream_matches_predict_per_run(ner_server, expected):
    """48 requests for three adapters at once, one text or all texts each, 16 in flight."""
    names = ["ner1", "ner2", "ner3"]
    requests = [(names[i % 3], TEXTS if i % 4 == 0 else [TEXTS[i % len(TEXTS)]]) for i in range(48)]

    async def main():
        limit = asyncio.Semaphore(16)
        async with httpx.AsyncClient(base_url=ner_server, timeout=120) as client:
            async def one(name, texts):
                async with limit:
                    r = await client.post("/v1/predict", json={"adapter": name, "texts": texts})
                return name, texts, r
            return await asyncio.gather(*(one(n, t) for n, t in requests))

    for name, texts, r in asyncio.run(main()):
        assert r.status_code == 200, r.text
        want = [expected[name][TEXTS.index(t)] for t in texts]
        assert r.json() == {"adapter": name, "predictions": want}


def test_models_and_health_list_the_adapters(ner_server):
    models = httpx.get(f"{ner_server}/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["ner1", "ner2", "ner3"]
    assert {m["task"] for m in models["data"]} == {"token-classification"}
    health = httpx.get(f"{ner_server}/health").json()
    assert health["status"] == "ok" and health["adapters"] == ["ner1", "ner2", "ner3"]


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("body, status, words", [
    ({"adapter": "nope", "texts": ["a"]}, 404, "no adapter named 'nope'; this server has: ner1"),
    ({"adapter": "ner1"}, 400, "texts: Field required"),
    ({"adapter": "ner1", "texts": "John"}, 400, "texts: Input should be a valid array"),
    ({"adapter": "ner1", "texts": [1]}, 400, "texts.0: Input should be a valid string"),
    ({"adapter": "ner1", "texts": []}, 400, "texts: List should have at least 1 item"),
    ({"adapter": "ner1", "texts": ["a"], "txt": 1}, 400, "txt: Extra inputs are not permitted"),
    ({"adapter": "ner1", "texts": ["a"] * 65}, 413, "65 items, above this server's limit of 64"),
    ({"adapter": "ner1", "texts": ["a" * 20_001]}, 413, "20001 characters"),
    (b'{"adapter": "ner1", "texts": [', 400, "the body is not JSON"),
    (b"\xff\xfe garbage", 400, "the body is not JSON"),
    (b"x" * (1024 * 1024 + 1), 413, "request body of 1048577 bytes is above"),
])
def test_bad_predict_requests_get_a_4xx_json_error(ner_server, body, status, words):
    r = post(ner_server, "/v1/predict", body)
    assert r.status_code == status
    assert words in r.json()["error"]["message"]


def test_wrong_endpoints_and_switched_off_loading(ner_server):
    r = post(ner_server, "/v1/completions", {"model": "ner1", "prompt": "x"})
    assert r.status_code == 400 and "use POST /v1/predict" in r.json()["error"]["message"]
    r = post(ner_server, "/v1/adapters", {"path": "/tmp"})
    assert r.status_code == 403 and "--allow-adapter-loading" in r.json()["error"]["message"]
    assert httpx.get(f"{ner_server}/v2/nothing").json()["error"]["code"] == 404


def test_server_survives_a_burst_of_malformed_requests(ner_server, expected):
    bad = [b"", b"{", b"[]", b"null", b'{"adapter": null}', b'{"adapter": "ner1", "texts": [[]]}',
           b"\x00" * 5000, json.dumps({"adapter": "ner1", "texts": ["a"] * 500}).encode(),
           b'{"adapter": "ner1", "texts": ["' + b"a" * 2_000_000 + b'"]}']

    async def main():
        async with httpx.AsyncClient(base_url=ner_server, timeout=120) as client:
            rs = await asyncio.gather(*(client.post("/v1/predict", content=b) for b in bad * 6))
            good = await client.post("/v1/predict", json={"adapter": "ner2", "texts": TEXTS})
            return rs, good

    rs, good = asyncio.run(main())
    assert {r.status_code for r in rs} <= {400, 413}
    assert all("message" in r.json()["error"] for r in rs)
    assert good.json()["predictions"] == expected["ner2"]


# ---------------------------------------------------------------- OpenAI clients

def test_openai_client_against_three_causal_adapters(gen_runs):
    """The official client, unchanged: models.list, completions and chat per adapter; chat
    answers what `peftkit predict` generates for the run (same template, greedy)."""
    openai = pytest.importorskip("openai")
    chats = {run.name: [r["generated"] for r in predict_texts(run, PROMPTS)] for run in gen_runs}
    assert len({json.dumps(v) for v in chats.values()}) == 3, "adapters generate alike"
    with server(*map(str, gen_runs)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == ["gen1", "gen2", "gen3"]
        for name, want in chats.items():
            for prompt, text in zip(PROMPTS, want):
                chat = client.chat.completions.create(
                    model=name, messages=[{"role": "user", "content": prompt}], temperature=0,
                    max_tokens=6)
                assert chat.choices[0].message.content == text
                assert chat.usage.completion_tokens <= 6
        done = client.completions.create(model="gen2", prompt=PROMPTS, max_tokens=4)
        assert len(done.choices) == 3 and done.usage.completion_tokens <= 12
        assert all(c.finish_reason in ("stop", "length") for c in done.choices)
        with pytest.raises(openai.NotFoundError, match="no adapter named 'gpt-4'"):
            client.completions.create(model="gpt-4", prompt="x")
        with pytest.raises(openai.BadRequestError, match="above this server's limit"):
            client.completions.create(model="gen1", prompt="x", max_tokens=10_000)
        with pytest.raises(openai.BadRequestError, match="stream"):
            client.completions.create(model="gen1", prompt="x", stream=True)


# ---------------------------------------------------------------- loading

def test_adapter_loaded_while_serving_answers_as_its_run(ner_runs, expected):
    extra = ner_runs[3]
    with server(str(ner_runs[0]), "--allow-adapter-loading") as url:
        r = post(url, "/v1/adapters", {"path": str(extra), "name": "late"})
        assert r.status_code == 200 and r.json()["id"] == "late"
        assert post(url, "/v1/adapters", {"path": str(extra), "name": "late"}).status_code == 409
        r = post(url, "/v1/adapters", {"path": str(extra.parent / "missing")})
        assert r.status_code == 400 and "is not a folder" in r.json()["error"]["message"]
        r = post(url, "/v1/predict", {"adapter": "late", "texts": TEXTS})
        assert r.json()["predictions"] == expected[extra.name]
        r = post(url, "/v1/predict", {"adapter": "ner1", "texts": TEXTS})
        assert r.json()["predictions"] == expected["ner1"]


def test_grouped_per_adapter_without_mixed_batches(tiny_bert_dir, tmp_path):
    """IA3 has no mixed-adapter batch in peft: the pool runs each adapter in turn, same answers."""
    from peftkit.serve.pool import AdapterPool

    runs = [train_ner(tiny_bert_dir, tmp_path / f"ia3_{i}", seed=i, strategy={"name": "ia3"})
            for i in (1, 2)]
    pool = AdapterPool.load([str(r) for r in runs])
    assert pool.batch_key(pool.adapters["ia3_1"]) != pool.batch_key(pool.adapters["ia3_2"])
    for run in runs:
        assert pool.predict([run.name] * len(TEXTS), TEXTS) == predict_texts(run, TEXTS)


def test_mixed_batch_equals_each_run_alone(ner_runs, expected):
    from peftkit.serve.pool import AdapterPool

    pool = AdapterPool.load([str(r) for r in ner_runs[:3]])
    names = [f"ner{1 + i % 3}" for i in range(len(TEXTS) * 3)]
    texts = [TEXTS[i // 3] for i in range(len(names))]
    got = pool.predict(names, texts)
    assert got == [expected[n][TEXTS.index(t)] for n, t in zip(names, texts)]


def test_runs_that_cannot_share_a_base_are_refused(ner_runs, gen_runs, tiny_bert_dir, tmp_path):
    from peftkit.serve.pool import AdapterPool

    with pytest.raises(UsageError, match="same task"):
        AdapterPool.load([str(ner_runs[0]), str(gen_runs[0])])
    with pytest.raises(UsageError, match="two runs are named 'ner1'.*NAME=PATH"):
        AdapterPool.load([str(ner_runs[0]), str(ner_runs[0])])
    ia3 = train_ner(tiny_bert_dir, tmp_path / "ia3", seed=1, strategy={"name": "ia3"})
    with pytest.raises(UsageError, match="strategy ia3, .* with lora: one served base"):
        AdapterPool.load([str(ner_runs[0]), str(ia3)])
    adapter = train_ner(tiny_bert_dir, tmp_path / "bottleneck", seed=1, strategy={"name": "adapter"})
    with pytest.raises(UsageError, match="cannot serve several runs on one base: its bottleneck"):
        AdapterPool.load([str(adapter), f"again={adapter}"])


def test_cli_refuses_a_base_the_runs_were_not_trained_on(ner_runs, tiny_llama_dir):
    r = subprocess.run([sys.executable, "-m", "peftkit", "serve", str(tiny_llama_dir),
                        str(ner_runs[0]), "--port", str(free_port())],
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2
    assert "is not the model the runs were trained on" in r.stderr
    assert "Traceback" not in r.stderr


def test_batcher_runs_requests_queued_together_in_one_call_and_isolates_a_bad_one():
    from peftkit.serve.batcher import Batcher, Job

    calls = []

    def run(payloads):
        calls.append(list(payloads))
        if "bad" in payloads:
            raise ValueError("bad payload")
        return [p.upper() for p in payloads]

    async def main():
        batcher = Batcher(window_s=0.0, max_items=100)
        batcher.start()
        together = [batcher.submit(Job(("key", i % 2), run, p, 1)) for i, p in enumerate("abcd")]
        first = await asyncio.gather(*together)
        mixed = await asyncio.gather(*(batcher.submit(Job(("key",), run, p, 1))
                                       for p in ("x", "bad", "y")), return_exceptions=True)
        await batcher.stop()
        return first, mixed

    first, mixed = asyncio.run(main())
    assert first == ["A", "B", "C", "D"]
    assert mixed[0] == "X" and isinstance(mixed[1], ValueError) and mixed[2] == "Y"
    # queued before the worker woke: one call per key; the failed batch again one by one
    assert calls == [["a", "c"], ["b", "d"], ["x", "bad", "y"], ["x"], ["bad"], ["y"]]


def test_length_batches_keep_long_texts_from_padding_short_ones():
    from peftkit.tasks.base import length_batches

    texts = ["a" * n for n in (5, 120, 6, 5, 7, 118)]
    batches = length_batches(texts, max_count=3)
    assert sorted(i for b in batches for i in b) == list(range(6))       # every text, once
    assert batches == [[0, 3, 2], [4], [5, 1]]     # similar lengths together, at most 3
