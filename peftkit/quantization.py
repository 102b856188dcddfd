"""Quantized bases through bitsandbytes: 8-bit LLM.int8 (Dettmers et al. 2022, arXiv:2208.07339)
and 4-bit NF4 with double quantisation (QLoRA, Dettmers et al. 2023, arXiv:2305.14314).

    recipe validation ──▶ check_quantizable (GGUF files cannot be quantized)
    model.quantization ──▶ check_backend   (before any weight loads: a clear error, not a crash
                      │                      deep inside bitsandbytes)
                      └──▶ bnb_config      (task head + lm_head stay full precision)
                           ──▶ from_pretrained(quantization_config=...)  (models.load_model)
    strategy.apply ──▶ peft's prepare_model_for_kbit_training (peft strategies; peft_base.py)
    build_trainer  ──▶ own_adapters_accepted (peftkit's adapter / prefix on a quantized base)
    result.json  ◀── memory_footprint, count_parameters (packed 4-bit counted unpacked)

Only Linear layers are quantized: embeddings and layer norms stay in floating point (and
prepare_model_for_kbit_training upcasts them to fp32). Importing this module is cheap (no
torch): peftkit/__init__ calls quiet_bitsandbytes() from here, and recipe validation
calls check_quantizable.
"""

from __future__ import annotations

import contextlib
import functools
import logging

from peftkit.env import cpu_has_fast_bf16
from peftkit.errors import PeftkitError

# Output heads that must never be quantized, whatever the task: a causal LM's vocabulary
# projection (Llama/GPT-2: lm_head, GPT-NeoX: embed_out), often tied to the input embeddings.
OUTPUT_HEADS = ["lm_head", "embed_out"]
MODES = ("8bit", "4bit")


def skip_modules(task) -> list[str]:
    """Modules bitsandbytes leaves in full precision. The task head is new and trains in full:
    quantizing it breaks peft's modules_to_save copy. Passing this list replaces
    transformers' own guess (last module + output embeddings), so the output heads are listed too."""
    return list(dict.fromkeys([*task.head_names, *OUTPUT_HEADS]))


def int8_linears(model, task) -> list:
    """(parent, attribute, layer) of every Linear bitsandbytes loads in 8-bit: those whose name
    contains none of the modules left in full precision (the task head, the LM head)."""
    import torch

    skip = skip_modules(task)
    return [(parent, name, child) for prefix, parent in model.named_modules()
            for name, child in parent.named_children()
            if isinstance(child, torch.nn.Linear)
            and not any(s in (f"{prefix}.{name}" if prefix else name) for s in skip)]


def check_quantizable(recipe, problems: list[str]) -> None:
    """Recipe validation (torch-free): transformers refuses to quantize weights it reads from a
    GGUF file ("You cannot combine Quantization and loading a model from a GGUF file"), and a
    GGUF-loaded model cannot be saved as a plain folder either, so say it before anything loads."""
    mode = recipe.model.quantization
    if mode == "none":
        return
    from peftkit.models_registry import model_source

    try:
        source = model_source(recipe)
    except (LookupError, OSError, ValueError):
        return  # check_model_name reports it
    if source.gguf_file:
        problems.append(f"model.quantization: {mode} cannot quantize {recipe.model.name!r}: it is a "
                        f"GGUF file ({source.gguf_file}), and transformers loads GGUF weights only "
                        "de-quantized, never into bitsandbytes. Set model.quantization: none, or use "
                        "a safetensors copy of the model (a local folder or hub id).")


def bnb_config(mode: str, task):
    """The BitsAndBytesConfig for `mode`; raises PeftkitError first if this machine cannot run it."""
    from transformers import BitsAndBytesConfig

    check_backend(mode)
    skip = skip_modules(task)
    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute_dtype(),
                              llm_int8_skip_modules=skip)


def compute_dtype():
    """4-bit weights are de-quantized to this dtype for the matmul: bf16 where the hardware is
    fast at it (QLoRA's choice), fp16 on older GPUs, fp32 on CPUs without AVX-512 BF16."""
    import torch

    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


# ---------------------------------------------------------------- backend detection

def check_backend(mode: str) -> str:
    """'cuda' or 'cpu' when bitsandbytes can run `mode` here; else a PeftkitError naming the fix.

    On CUDA, transformers validates bitsandbytes itself. On CPU, recent bitsandbytes has a
    backend, but how complete it is depends on the version and the build, so a 16x16 layer is
    quantized and run forward and backward here, once per process, before any real weights load.
    """
    if mode not in MODES:
        raise PeftkitError(f"model.quantization: {mode!r} is not one of none, {', '.join(MODES)}")
    bnb = import_bitsandbytes(mode)
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if "cpu" not in getattr(bnb, "supported_torch_devices", ()):
        raise PeftkitError(no_cpu_backend(mode, bnb.__version__, "it lists no CPU backend"))
    problem = probe_cpu(mode)
    if problem:
        raise PeftkitError(no_cpu_backend(mode, bnb.__version__, problem))
    note = slow_path_note(mode)
    if note:
        print(f"note: model.quantization={mode}: {note}")
    return "cpu"


def import_bitsandbytes(mode: str):
    quiet_bitsandbytes()
    try:
        import bitsandbytes
    except ImportError as exc:
        raise PeftkitError(f"model.quantization: {mode} needs bitsandbytes, which cannot be imported "
                           f"({exc}); pip install -U bitsandbytes, or set model.quantization: "
                           "none") from None
    return bitsandbytes


def no_cpu_backend(mode: str, version: str, problem: str) -> str:
    other = "8bit or none" if mode == "4bit" else "none"
    return (f"model.quantization: {mode} cannot run on this machine: no GPU, and bitsandbytes "
            f"{version} has no working CPU {mode} backend ({problem}). Set model.quantization: "
            f"{other}, upgrade bitsandbytes (pip install -U bitsandbytes), or run on an NVIDIA GPU.")


@functools.lru_cache(maxsize=None)
def probe_cpu(mode: str) -> str | None:
    """None if a tiny quantized layer runs forward and backward on CPU, else what went wrong."""
    import torch

    try:
        import bitsandbytes as bnb

        dense = torch.nn.Linear(16, 16)
        if mode == "8bit":
            layer = int8_layer(16, 16)
        else:
            layer = bnb.nn.Linear4bit(16, 16, compute_dtype=compute_dtype(), quant_type="nf4",
                                      compress_statistics=True)
        layer.load_state_dict(dense.state_dict())
        layer = layer.to("cpu")  # quantizes the weight
        x = torch.randn(3, 16, requires_grad=True)
        out = layer(x)
        out.float().sum().backward()
        if x.grad is None or not torch.isfinite(out).all():
            return "the test layer gave no gradient or non-finite output"
        if (out.float() - dense(x)).abs().max().item() > 0.5:
            return "the test layer's output is far from the unquantized layer's"
    except Exception as exc:  # noqa: BLE001 - any failure means "no usable backend"
        first = (str(exc).splitlines() or [""])[0][:200]
        return f"{type(exc).__name__}: {first}"
    return None


def int8_layer(in_features: int, out_features: int, bias: bool = True):
    """bitsandbytes' 8-bit Linear with the settings transformers uses for load_in_8bit."""
    import bitsandbytes as bnb

    return bnb.nn.Linear8bitLt(in_features, out_features, bias, has_fp16_weights=False, threshold=6.0)


def slow_path_note(mode: str) -> str | None:
    """bitsandbytes runs on every CPU, but without these instructions it falls back to plain
    PyTorch code that de-quantizes each weight per call: correct, and several times slower."""
    import torch

    if mode == "8bit" and torch.backends.cpu.get_cpu_capability() != "AVX512":
        return ("this CPU has no AVX-512, so bitsandbytes multiplies int8 weights in its slow "
                "PyTorch fallback; expect training slower than with model.quantization: none")
    if mode == "4bit":
        from bitsandbytes.functional import has_avx512bf16

        if not has_avx512bf16():
            return ("this CPU has no AVX-512 BF16, so bitsandbytes de-quantizes 4-bit weights in "
                    "its slow PyTorch fallback; expect training slower than with 8bit or none")
    return None


class _QuietBitsandbytes(logging.Filter):
    """bitsandbytes 0.50 logs two messages that peftkit tones down:
    - on import, on CPUs with AVX-512 BF16: it could not load a 4-bit kernel from the Hugging Face
      hub, "pip install kernels". That package only downloads the kernel from the hub (unreachable
      offline), and bitsandbytes then uses its own compiled CPU kernel, so the advice misleads;
      peftkit's check_backend reports real backend problems. Dropped.
    - on every forward of every 8-bit layer: inputs are cast to float16 for quantization. True and
      harmless (int8 row-wise scaling), but thousands of lines per epoch. Shown once."""

    DROP = ("Failed to load CPU gemm_4bit_forward",)
    ONCE = ("MatMul8bitLt: inputs will be cast",)

    def __init__(self):
        super().__init__()
        self.shown: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        if msg.startswith(self.DROP):
            return False
        for prefix in self.ONCE:
            if msg.startswith(prefix):
                if prefix in self.shown:
                    return False
                self.shown.add(prefix)
        return True


def quiet_bitsandbytes() -> None:
    """Install the filter before bitsandbytes is first imported (peft imports it too)."""
    for name in ("bitsandbytes.backends.cpu.ops", "bitsandbytes.autograd._functions"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _QuietBitsandbytes) for f in log.filters):
            log.addFilter(_QuietBitsandbytes())


# ---------------------------------------------------------------- after loading

def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False))


@contextlib.contextmanager
def own_adapters_accepted(model):
    """transformers' Trainer refuses a quantized model that is not a peft model ("cannot perform
    fine-tuning on purely quantized models"). peftkit's own adapter and prefix modules are trainable
    adapters on top of the frozen quantized base, so while the Trainer is built the model says it
    carries adapters (the flag transformers sets when peft adapters are loaded into a model).
    A quantized model with nothing to train still gets transformers' own error."""
    mark = (is_quantized(model) and not hasattr(model, "peft_config")
            and not getattr(model, "_hf_peft_config_loaded", False)
            and any(p.requires_grad for p in model.parameters()))
    if mark:
        model._hf_peft_config_loaded = True
    try:
        yield model
    finally:
        if mark:
            del model._hf_peft_config_loaded


def memory_footprint(model) -> int:
    """Bytes of the model's parameters and buffers, as stored (int8 = 1 byte, packed NF4 = half a
    byte per weight), like transformers' get_memory_footprint(). Counted on the outermost module so
    that a peft wrapper's own parameters (prompt embeddings, modules_to_save copies) are included."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.nelement() * t.element_size()
    return total
