"""LoRA on a 16-bit, an 8-bit and a 4-bit (NF4) base: a few steps each, merged, with memory and speed.

    bash benchmarks/gpu_check.sh                  # on an NVIDIA GPU: installs, then runs this
    python benchmarks/gpu_check.py --tiny --cpu   # CPU smoke test of the same steps, tiny model

Every run goes through `python -m peftkit run` (the one pipeline) in its own process, so each
result.json holds that run's own peak GPU memory; each run is then merged with `peftkit merge`,
which reloads the base in full precision. The base is --model (a folder or hub id in safetensors)
or, offline, a randomly initialised Llama shaped like SmolLM2-135M (30 layers, hidden 576):
its metrics mean nothing, its memory and throughput do. Data: the embedded demo-gen set.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

MODES = ["none", "8bit", "4bit"]
SMOLLM2_SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048)
TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def build_base(folder: Path, tiny: bool) -> Path:
    """A random-init Llama saved in bf16 (the '16-bit base') with a BPE tokenizer trained on demo-gen."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from peftkit.data.demo_gen import generate_demo_gen

    if (folder / "config.json").exists():
        return folder
    rows = [r for split in generate_demo_gen().values() for r in split]
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([f"{r['mr']} {r['ref']}" for r in rows], trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                  pad_token="</s>")
    tok.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(tok), bos_token_id=0, eos_token_id=1, pad_token_id=1,
                         tie_word_embeddings=True, **(TINY_SHAPE if tiny else SMOLLM2_SHAPE))
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    return folder


def write_recipe(out: Path, model: str, steps: int, cpu: bool) -> Path:
    recipe = {
        "task": "causal-lm",
        "model": {"name": model},
        "strategy": {"name": "lora", "r": 16, "alpha": 32, "target_modules": "all-linear"},
        "data": {"name": "demo-gen", "max_length": 128, "max_train_samples": steps * 8,
                 "max_eval_samples": 8, "max_test_samples": 16},
        "train": {"max_steps": steps, "batch_size": 8, "learning_rate": 1.0e-3, "warmup": 0.1,
                  "eval_every": "no", "logging_steps": 5, "save_total_limit": 1,
                  "precision": "fp32" if cpu else "bf16"},
        "eval": {"max_new_tokens": 16},
    }
    path = out / "gpu_check.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def peftkit(*args: str) -> None:
    print("+ peftkit " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "peftkit", *args], check=True)


def check_merged(folder: Path, cpu: bool) -> str:
    """The merged folder loads as a plain transformers model and scores a sentence finitely."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cpu" if cpu else "cuda"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(device)
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("The Copper Kettle is a pub in the riverside area.", return_tensors="pt").to(device)
    with torch.no_grad():
        loss = model(**ids, labels=ids["input_ids"]).loss.item()
    kind = {type(m).__name__ for m in model.modules() if "Linear" in type(m).__name__}
    assert kind == {"Linear"}, f"merged model still has {kind}"
    assert loss == loss and loss < 1e4, f"merged model loss {loss}"
    return f"ok (loss {loss:.2f})"


def row(mode: str, result: dict, merged: str) -> list[str]:
    return [mode, f"{result['model_memory_mb']:.1f}", f"{result['peak_memory_mb']:.0f}",
            f"{result['train_tokens_per_second']:.0f}", f"{result['train_seconds']:.1f}",
            f"{result['train_loss']:.3f}", f"{result['trainable_params']:,}",
            f"{result['total_params']:,}", merged]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="base model folder or hub id (default: random-init SmolLM2 shape)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", default="gpu_check_out")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--tiny", action="store_true", help="a 2-layer base (smoke test)")
    ap.add_argument("--cpu", action="store_true", help="allow running without a GPU")
    args = ap.parse_args()

    import torch

    if not args.cpu and not torch.cuda.is_available():
        sys.exit("no CUDA device: this check is for an NVIDIA GPU (--cpu runs it anyway)")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model = args.model or str(build_base(out / "base", args.tiny))
    recipe = write_recipe(out, model, args.steps, args.cpu)
    table = []
    for mode in args.modes.split(","):
        run = out / "runs" / mode
        peftkit("run", str(recipe), f"model.quantization={mode}", f"output.dir={run}", "--overwrite")
        peftkit("merge", str(run), "--out", str(out / "merged" / mode), "--dtype", "bfloat16",
                "--overwrite")
        result = json.loads((run / "result.json").read_text())
        table.append(row(mode, result, check_merged(out / "merged" / mode, args.cpu)))

    head = ["base", "model MB", "peak MB", "train tok/s", "train s", "train loss", "trainable",
            "total params", "merge"]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.cpu else "CPU"
    print(f"\nLoRA r=16 all-linear, {args.steps} steps, batch 8, on {device}; base: {model}")
    for line in [head, ["---"] * len(head), *table]:
        print("| " + " | ".join(line) + " |")
    (out / "summary.json").write_text(json.dumps({"device": device, "head": head, "rows": table}, indent=2))


if __name__ == "__main__":
    main()
