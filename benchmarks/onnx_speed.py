"""CPU latency and throughput of ONNX Runtime against PyTorch for one merged model, in one process.

    python benchmarks/onnx_speed.py RUN_OR_MERGED [--onnx ONNX_DIR] [--threads 1]
        [--latency 300] [--throughput 1024] [--rounds 5]

RUN_OR_MERGED: a run folder (merged here with `peftkit merge`, both formats) or a merged folder
(`peftkit merge --out`; exported to ONNX here); --onnx reuses an ONNX folder already written from
it. Texts: the recipe's own test split (CoNLL-2003 test for the CoNLL recipes), words joined by
spaces, tokenized once as `peftkit predict` does; the timed part is the forward pass alone
(tokenizing and decoding are the same code on both sides):

    latency     batch 1, one sentence per call: p50 and p99 over --latency sentences
    throughput  batches of up to 32 sentences of similar length (peftkit predict's batching):
                sentences per second over --throughput sentences

Rounds alternate the order (PyTorch first, then ONNX Runtime first, ...) so that other jobs on the
machine hit both alike; each figure is the median over rounds (p50/p99 over all rounds' calls).
Both float32, both with --threads intra-op threads. Prints the largest logit difference too.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

BATCH = 32


def merged_and_onnx(folder: str, onnx: str | None, tmp: str) -> tuple[str, str]:
    """(merged folder, ONNX folder) for a run folder or a merged folder."""
    from peftkit.export import merge_run
    from peftkit.export.folder import MERGED, read_meta

    if (read_meta(Path(folder)) or {}).get("kind") == MERGED:
        return folder, onnx or export_merged(folder, f"{tmp}/onnx")
    merged = merge_run(folder, f"{tmp}/merged")
    return str(merged), onnx or str(merge_run(folder, f"{tmp}/onnx", fmt="onnx"))


def export_merged(folder: str, out: str) -> str:
    """An ONNX folder from a merged folder: the same writer as peftkit merge --format onnx."""
    from peftkit.export.folder import read_meta
    from peftkit.export.onnx_export import save_onnx
    from peftkit.predict import load_for_inference

    loaded, meta = load_for_inference(folder), read_meta(Path(folder))
    save_onnx(loaded.model, loaded.tokenizer, Path(out), loaded.recipe, loaded.labels,
              meta.get("base_model", "?"), meta.get("sources", []), [None])
    return out


def test_texts(loaded, limit: int) -> list[str]:
    from peftkit.data.readers import load_raw
    from peftkit.predict import eval_recipe

    test = load_raw(eval_recipe(loaded.recipe), loaded.task)["test"]
    column = "tokens" if "tokens" in test.column_names else "text"
    rows = test.select(range(min(limit, len(test))))[column]
    return [" ".join(r) if isinstance(r, list) else r for r in rows]


def encode(tokenizer, texts: list[str], max_length: int) -> dict:
    return dict(tokenizer(texts, truncation=True, padding=True, max_length=max_length,
                          return_tensors="pt"))


def timed(model, batches: list[dict]) -> tuple[list[float], list]:
    import torch

    times, outputs = [], []
    with torch.inference_mode():
        for batch in batches:
            start = time.perf_counter()
            outputs.append(model(**batch).logits)
            times.append(time.perf_counter() - start)
    return times, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a run folder or a merged folder")
    parser.add_argument("--onnx", help="an ONNX folder written from it (default: export here)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads, both (default 1)")
    parser.add_argument("--latency", type=int, default=300, help="sentences at batch 1 per round")
    parser.add_argument("--throughput", type=int, default=1024, help="sentences at batch 32 per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import torch

    from peftkit.output import route_libraries
    from peftkit.predict import load_for_inference
    from peftkit.tasks.base import length_batches

    route_libraries()  # load reports and library warnings off the screen
    torch.set_num_threads(args.threads)  # the ONNX Runtime session takes torch's count
    with tempfile.TemporaryDirectory() as tmp:
        merged_dir, onnx_dir = merged_and_onnx(args.folder, args.onnx, tmp)
        models = {"PyTorch": load_for_inference(merged_dir), "ONNX Runtime": load_for_inference(onnx_dir)}
        ref = models["PyTorch"]
        texts = test_texts(ref, max(args.latency, args.throughput))
    length = ref.recipe.data.max_length
    singles = [encode(ref.tokenizer, [t], length) for t in texts[:args.latency]]
    many = texts[:args.throughput]
    batches = [encode(ref.tokenizer, [many[i] for i in idx], length)
               for idx in length_batches(many, BATCH)]

    out = {name: timed(m.model, batches)[1] for name, m in models.items()}  # warm-up + outputs
    diff = max((a - b).abs().max().item() for a, b in zip(out["PyTorch"], out["ONNX Runtime"]))
    latency = {name: [] for name in models}
    throughput = {name: [] for name in models}
    for r in range(args.rounds):
        order = list(models) if r % 2 == 0 else list(models)[::-1]
        for name in order:
            latency[name] += timed(models[name].model, singles)[0]
            throughput[name].append(len(many) / sum(timed(models[name].model, batches)[0]))
    report(args, latency, throughput, diff, len(singles), len(many), len(batches))


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def report(args, latency, throughput, diff, n_single, n_many, n_batches) -> None:
    import onnxruntime
    import torch

    print(f"\n{args.folder}" + (f" (ONNX: {args.onnx})" if args.onnx else ""))
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} thread(s), "
          f"{args.rounds} rounds, float32; largest |logit difference| {diff:.2g}")
    print(f"latency: {n_single} test sentences one by one per round; throughput: "
          f"{n_many} sentences in {n_batches} batches of <= {BATCH} per round\n")
    print("| runtime | latency p50 (ms) | latency p99 (ms) | throughput (sentences/s) |")
    print("|---|---|---|---|")
    base = statistics.median(throughput["PyTorch"])
    for name in latency:
        tput = statistics.median(throughput[name])
        print(f"| {name} | {1000 * quantile(latency[name], 0.5):.2f} | "
              f"{1000 * quantile(latency[name], 0.99):.2f} | {tput:.0f} ({tput / base:.2f}x) |")


if __name__ == "__main__":
    main()
