"""GGUF files of causal-LM runs, for llama.cpp (issue 20).

    merge_gguf:  run ─▶ merged plain model (export.merge) ─▶ llama.cpp tensor names, Q/K rows
                 permuted ─▶ one .gguf: the base GGUF's metadata and tokenizer + merged weights
                 (f32, f16, or q8_0 through gguf.quants)
    export_gguf: run ─▶ its LoRA pairs (the strategy gives them) ─▶ an adapter .gguf that llama.cpp
                 loads beside the base GGUF (`--lora`, llama_cpp.Llama(lora_path=...))

Only Llama-architecture bases that are GGUF files themselves: their metadata (tokenizer, rope,
chat template) is carried over as it is, and every tensor written is checked against the base's
names and shapes, so a file llama.cpp would misread is refused here. The `gguf` package writes
the files; llama.cpp reads them (tests/test_gguf.py compares its greedy tokens with transformers').
"""

from __future__ import annotations

from pathlib import Path

from peftkit.errors import UsageError
from peftkit.export.folder import check_out_file, staged_file
from peftkit.export.merge import RunInfo, check_mergeable, merged_model

DTYPES = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}  # --dtype -> GGMLQuantizationType name
SYNONYMS = {"float32": "f32", "float16": "f16"}         # the hf format's names mean the same
FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}
ARCH = "llama"
# keys GGUFWriter writes itself, or that describe the base file's tensors rather than ours
OWN_KEYS = ("GGUF.", "general.architecture", "general.file_type", "general.quantization_version")


# ---------------------------------------------------------------- checks before any work

def gguf_dtype(dtype: str | None) -> str:
    dtype = SYNONYMS.get(dtype, dtype) if dtype else "f32"
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype}: --format gguf writes {', '.join(DTYPES)}")
    return dtype


def base_gguf(run: RunInfo):
    """(path, gguf.GGUFReader) of the run's base GGUF file, or a one-line refusal (task,
    architecture, source)."""
    import gguf

    from peftkit.models import source_of
    from peftkit.tasks import get_task

    recipe = run.recipe
    if not get_task(recipe.task).gguf:
        raise UsageError(f"{run.dir}: a {recipe.task} run cannot be written as GGUF: llama.cpp runs "
                         "causal language models; leave out --format for a Hugging Face folder")
    source = source_of(recipe)
    if not source.gguf_file:
        # which llama.cpp pre-tokenizer a transformers tokenizer needs is known only to
        # llama.cpp's convert_hf_to_gguf.py (a table of hashes); a wrong guess tokenizes silently
        # differently, so the tokenizer must come from a GGUF file
        raise UsageError(f"{run.dir}: its base {source.label} is not a GGUF file. --format gguf "
                         "carries the base GGUF's tokenizer and metadata over; convert the base "
                         "with llama.cpp's convert_hf_to_gguf.py and train from that file "
                         "(model.name: FILE.gguf; smollm2-135m is one), or leave out --format for a Hugging Face folder")
    path = Path(source.path) / source.gguf_file
    reader = gguf.GGUFReader(str(path))
    arch = reader.fields["general.architecture"].contents()
    if arch != ARCH:
        raise UsageError(f"{path}: architecture {arch!r}; --format gguf writes Llama-architecture "
                         "models only (their Q/K layout is known); leave out --format for a Hugging Face folder")
    return path, reader


# ---------------------------------------------------------------- merged model

def merge_gguf(run_dir, out, dtype: str | None = None, overwrite: bool = False,
               trust_remote_code: bool = False) -> Path:
    """One run merged into one GGUF file at `out`."""
    run = RunInfo(Path(run_dir), trust_remote_code)
    check_mergeable(run)
    dtype = gguf_dtype(dtype)
    base, reader = base_gguf(run)
    out = check_out_file(Path(out), ".gguf", overwrite)
    model, _, _, _ = merged_model(run)
    write_merged(model, base, reader, out, dtype)
    return out


def write_merged(model, base: Path, reader, out: Path, dtype: str) -> None:
    """The merged model's tensors with the base file's metadata, `dtype` (f32, f16, q8_0)."""
    import gguf

    tensors = gguf_weights(model)
    check_against_base(tensors, reader, base)
    with staged_file(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        copy_metadata(reader, writer)
        writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[dtype]))
        if dtype == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for t in reader.tensors:  # the base's order
            add_tensor(writer, t.name, tensors[t.name], dtype)
        finish(writer)


def gguf_weights(model) -> dict:
    """llama.cpp name -> float32 numpy array (torch layout) of every tensor of `model`."""
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:  # llama.cpp reuses token_embd when output is absent
        state.pop("lm_head.weight", None)
    return {gguf_name(k, model.config): permuted(k, v, model.config) for k, v in state.items()}


def gguf_name(hf_name: str, config) -> str:
    """transformers' Llama parameter name -> llama.cpp's, by the gguf package's own table."""
    import gguf

    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    name = table.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise UsageError(f"tensor {hf_name}: no llama.cpp name for it; --format gguf writes plain "
                         "Llama models only")
    return name


def permuted(hf_name: str, rows, config):
    """llama.cpp's rotary layout of Q and K rows (convert_hf_to_gguf.py, LlamaModel.permute);
    transformers undoes it when it loads a GGUF (modeling_gguf_pytorch_utils, reverse_permute)."""
    heads = {"q_proj": config.num_attention_heads,
             "k_proj": config.num_key_value_heads or config.num_attention_heads}
    part = hf_name.split(".")[-2]
    if part not in heads:
        return rows
    n = heads[part]
    return (rows.reshape(n, 2, rows.shape[0] // n // 2, *rows.shape[1:])
            .swapaxes(1, 2).reshape(rows.shape))


def check_against_base(tensors: dict, reader, base: Path) -> None:
    """Same names and shapes as the base file: what llama.cpp's loader expects of a Llama."""
    want = {t.name: [int(d) for d in t.shape] for t in reader.tensors}
    have = {name: list(reversed(a.shape)) for name, a in tensors.items()}  # ggml lists dims inner first
    for name in sorted(want.keys() | have.keys()):
        if want.get(name) != have.get(name):
            raise UsageError(f"tensor {name}: {have.get(name) or 'missing'} here, "
                             f"{want.get(name) or 'absent'} in the base {base}; the run's model "
                             "is not the base GGUF's architecture")


# ---------------------------------------------------------------- adapter alone

def export_gguf(run_dir, out, overwrite: bool = False, trust_remote_code: bool = False) -> Path:
    """A run's LoRA adapter as a llama.cpp adapter GGUF (the base stays a file of its own)."""
    import gguf

    from peftkit.rundir import load_run

    run = RunInfo(Path(run_dir), trust_remote_code)
    strategy = run.recipe.strategy_impl
    refusal = strategy.gguf_adapter_refusal(run.recipe.strategy)
    if refusal:
        raise UsageError(f"{run.dir}: a {run.recipe.strategy_name} adapter cannot be written as a "
                         f"llama.cpp adapter: {refusal}. Merge it instead: peftkit merge {run.dir} "
                         "--format gguf --out model.gguf")
    base, reader = base_gguf(run)
    out = check_out_file(Path(out), ".gguf", overwrite)
    check_adapter_only(run)
    model, _, _, _, _ = load_run(run.dir, quantization="none", recipe=run.recipe,
                                 trust_remote_code=trust_remote_code)
    tensors, alpha = lora_tensors(strategy, model, reader, base)
    with staged_file(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        name = reader.fields.get("general.name")
        if name is not None:
            writer.add_name(f"{name.contents()} LoRA")
        for tname, array in tensors.items():
            writer.add_tensor(tname, array)
        finish(writer)
    return out


def check_adapter_only(run: RunInfo) -> None:
    """Trained heads or biases (peft's modules_to_save, bias) have no place in a llama.cpp adapter."""
    from safetensors import safe_open

    from peftkit.rundir import weights_dir

    for path in sorted(weights_dir(run.dir).glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            others = [k for k in f.keys() if ".lora_A." not in k and ".lora_B." not in k]
        if others:
            raise UsageError(f"{path}: the run trained {others[0]} besides its LoRA pairs; a "
                             "llama.cpp adapter holds LoRA pairs only. Merge it instead: peftkit "
                             f"merge {run.dir} --format gguf --out model.gguf")


def lora_tensors(strategy, model, reader, base: Path) -> tuple[dict, float]:
    """{blk.N.attn_q.weight.lora_a: A, ....lora_b: B} and the alpha llama.cpp scales by
    (scale = alpha / rank, rank read from each A): one alpha must fit every pair."""
    present = {t.name for t in reader.tensors}
    tensors, alphas = {}, set()
    for name, a, b, scaling in strategy.lora_pairs(model):
        target = gguf_name(name + ".weight", model.config)
        if target not in present:
            raise UsageError(f"LoRA on {name}: the base {base} has no tensor {target} for "
                             "llama.cpp to add it to (tied embeddings?); merge instead")
        a = a.detach().float().cpu().numpy()
        b = permuted(name + ".weight", b.detach().float().cpu().numpy(), model.config)
        tensors[target + ".lora_a"], tensors[target + ".lora_b"] = a, b
        alphas.add(round(float(scaling) * a.shape[0], 6))
    if len(alphas) != 1:
        raise UsageError(f"the adapter's layers scale differently (alpha values {sorted(alphas)}); "
                         "a llama.cpp adapter has one alpha. Merge it instead")
    return tensors, alphas.pop()


# ---------------------------------------------------------------- writing

def copy_metadata(reader, writer) -> None:
    """Every key of the base file (tokenizer, chat template, rope, names) but those that describe
    the base's own tensors; as gguf's scripts/gguf_new_metadata.py copies them."""
    import gguf

    for field in reader.fields.values():
        if field.name.startswith(OWN_KEYS):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)


def add_tensor(writer, name: str, array, dtype: str) -> None:
    """1-D tensors (norms) stay f32, as llama.cpp's converter keeps them; matrices take `dtype`
    where their rows divide into its blocks, f16 otherwise."""
    import gguf

    qtype = getattr(gguf.GGMLQuantizationType, DTYPES[dtype])
    if array.ndim == 1:
        qtype = gguf.GGMLQuantizationType.F32
    try:
        data = gguf.quants.quantize(array, qtype)
    except gguf.QuantError:
        qtype = gguf.GGMLQuantizationType.F16
        data = gguf.quants.quantize(array, qtype)
    writer.add_tensor(name, data, raw_dtype=qtype)


def finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def dequantized_copy(source: Path, out: Path) -> Path:
    """`source` with every tensor de-quantized to f32 and its metadata as it is: the exact base
    that transformers trains on (it de-quantizes GGUF on load), for llama.cpp comparisons
    (tests/test_gguf.py, benchmarks/gguf_agreement.py)."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(source))
    writer = gguf.GGUFWriter(str(out), "llama")
    copy_metadata(reader, writer)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for t in reader.tensors:
        writer.add_tensor(t.name, gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32))
    finish(writer)
    return out


def llama_cpp_greedy(llm, ids: list[int], n: int) -> list[int]:
    """What llama.cpp (`llm`: a llama_cpp.Llama over a written file) continues `ids` with,
    greedily, up to EOS or `n` tokens: the check of tests/test_gguf.py and
    benchmarks/gguf_agreement.py against transformers' greedy tokens."""
    got = []
    for tok in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        if tok == llm.token_eos() or len(got) == n:
            break
        got.append(tok)
    return got
