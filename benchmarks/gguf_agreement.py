"""How closely llama.cpp follows transformers on a run exported with --format gguf.

    python benchmarks/gguf_agreement.py RUN [--prompts 8] [--tokens 48] [--work DIR]

RUN: a finished causal-LM LoRA run on a Llama GGUF base (e.g. `peftkit run recipes/lora_gen.yaml`).
The reference is transformers' greedy continuation on the unmerged run (PeftModel, float32) of
the run's first test prompts, rendered as the run renders them. Each row is llama.cpp
(llama-cpp-python, one thread) greedy on the same prompt ids:

    merged f32 / f16 / q8_0      peftkit merge RUN --format gguf --dtype ... (f16 / q8_0 from the
                                 same merged model through write_merged, not loaded again)
    base + adapter               the base GGUF as shipped + peftkit export RUN --format gguf
    base f32 + adapter           the base de-quantized to f32 (what transformers computes with)
    base alone                   no adapter: how far the run's own tokens are from the base's

and says, per prompt, how many tokens agree before the first difference (an ended continuation
agrees through its end). Greedy decoding, so nothing here depends on a seed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--work", type=Path, help="where the GGUF files go (default: a temp dir)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="gguf-agreement-"))
    work.mkdir(parents=True, exist_ok=True)

    from peftkit.export.gguf import dequantized_copy, export_gguf, merge_gguf, write_merged
    from peftkit.models import source_of
    from peftkit.rundir import load_run
    from peftkit.tasks.causal_lm import Sampling, chat_prompts, generate_ids

    model, tokenizer, recipe, _, _ = load_run(args.run)
    prompts = chat_prompts(tokenizer, [[{"role": "user", "content": p}] for p in
                                       test_prompts(args.run, args.prompts)], recipe)
    greedy = Sampling(max_new_tokens=args.tokens, num_beams=1)
    want = [generate_ids(model, tokenizer, [p], greedy, 1)[0] for p in prompts]
    source = source_of(recipe)
    base = Path(source.path) / source.gguf_file
    adapter = export_gguf(args.run, work / "adapter.gguf", overwrite=True)
    rows = []
    merged = merge_gguf(args.run, work / "merged-f32.gguf", dtype="f32", overwrite=True)
    rows.append(("merged f32", agreement(cpp_greedy(merged, prompts, args.tokens), want)))
    plain = recipe.strategy_impl.merge(model)  # = what merge_gguf writes, without loading it again
    for dtype in ("f16", "q8_0"):
        merged = work / f"merged-{dtype}.gguf"
        write_merged(plain, base, gguf.GGUFReader(str(base)), merged, dtype)
        rows.append((f"merged {dtype}", agreement(cpp_greedy(merged, prompts, args.tokens), want)))
    rows.append((f"base ({base_type(base)}) + adapter",
                 agreement(cpp_greedy(base, prompts, args.tokens, adapter), want)))
    base_f32 = dequantized_copy(base, work / "base-f32.gguf")
    rows.append(("base f32 + adapter", agreement(cpp_greedy(base_f32, prompts, args.tokens, adapter), want)))
    rows.append(("base alone (no adapter)", agreement(cpp_greedy(base, prompts, args.tokens), want)))
    print(f"run {args.run}, {len(prompts)} test prompts, up to {args.tokens} greedy tokens; "
          f"reference: transformers on the unmerged run (mean continuation "
          f"{np.mean([len(w) for w in want]):.1f} tokens)\n")
    print("| llama.cpp on | identical continuations | tokens before the first difference, per prompt |")
    print("|---|---|---|")
    for name, (same, firsts) in rows:
        print(f"| {name} | {same}/{len(prompts)} | {', '.join(map(str, firsts))} |")


def test_prompts(run: Path, n: int) -> list[str]:
    """The run's first n test prompts (the MRs its generations_test.jsonl lists)."""
    path = run / "generations_test.jsonl"
    if not path.is_file():
        sys.exit(f"{path} missing: give a finished causal-lm run")
    lines = path.read_text(encoding="utf-8").splitlines()[:n]
    return [json.loads(line)["prompt"] for line in lines]


def cpp_greedy(path: Path, prompts: list[list[int]], n: int, lora: Path | None = None):
    from llama_cpp import Llama

    from peftkit.export.gguf import llama_cpp_greedy

    llm = Llama(model_path=str(path), lora_path=str(lora) if lora else None, n_ctx=512,
                n_threads=1, n_threads_batch=1, seed=0, verbose=False)
    return [llama_cpp_greedy(llm, ids, n) for ids in prompts]


def agreement(got: list[list[int]], want: list[list[int]]) -> tuple[int, list[int]]:
    """(identical continuations, tokens before the first difference of each)."""
    firsts = []
    for g, w in zip(got, want):
        k = next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), min(len(g), len(w)))
        firsts.append(k)
    return sum(g == w for g, w in zip(got, want)), firsts


def base_type(path: Path) -> str:
    types = {t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors} - {"F32"}
    return "/".join(sorted(types)) or "F32"



if __name__ == "__main__":
    main()
