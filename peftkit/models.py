"""Load the base model with the task's head, and its tokenizer."""

from __future__ import annotations

from pathlib import Path

from peftkit.errors import UsageError
from peftkit.models_registry import ModelSource, alias_list, model_source
from peftkit.weight_files import graph_only


def source_of(recipe) -> ModelSource:
    try:
        return model_source(recipe)
    except LookupError as exc:
        raise UsageError(f"model.name: {exc}") from None


def load_tokenizer(source: ModelSource, recipe):
    from transformers import AutoTokenizer

    kwargs = hub_kwargs(source, recipe)
    tok = call_loader(AutoTokenizer.from_pretrained, source, recipe, **kwargs)
    if tok.pad_token is None:  # decoders ship without one; padding never reaches the loss
        tok.pad_token = tok.eos_token
    return tok


def load_model(source: ModelSource, recipe, task, labels: list[str] | None, path: str | None = None):
    """The base model with the task head. `path` loads a saved full model instead of the base."""
    import transformers

    auto = getattr(transformers, task.auto_class)
    kwargs = hub_kwargs(source, recipe) if path is None else \
        {"trust_remote_code": recipe.model.trust_remote_code}  # said, never left to a prompt
    if labels is not None:
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={name: i for i, name in enumerate(labels)})
    quant = quantization_config(recipe, task)
    if quant is not None:
        kwargs["quantization_config"] = quant
    elif source.gguf_file and path is None:  # unpack GGUF blocks into plain float weights
        kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True)
    if path is not None:
        return auto.from_pretrained(path, **kwargs)
    model = call_loader(auto.from_pretrained, source, recipe, **kwargs)
    if source.gguf_file:
        plain_gguf(model)
    if model.config.pad_token_id is None and getattr(model.config, "eos_token_id", None) is not None:
        eos = model.config.eos_token_id
        model.config.pad_token_id = eos[0] if isinstance(eos, list) else eos
    return model


def init_head_bias(model, head_names: list[str], prior: list[float]) -> int:
    """Start the new classification head at the training labels' prior: bias = log(share).

    A zero bias predicts every class equally. On data where one label dominates (98% `O` on a
    sparse NER set, 90/10 classes) the first steps' gradient then says little but "predict the
    majority more"; at a learning rate that suits balanced data this drives the whole network into
    always-`O` before anything else is learned (measured, benchmarks/RESULTS.md#robustness: LoRA
    at 2e-3 on CoNLL with one sparse entity type, test F1 0.00 from a zero bias, 0.70 from the
    prior). Starting at the prior, the loss already sits at the labels' entropy and the gradients
    carry what tells the classes apart: the "prior probability" initialisation of Lin et al.
    2017 (Focal Loss, section 4.1). Returns the number of heads set (0: the head has no bias).
    """
    import math

    import torch

    bias = torch.tensor([math.log(p) for p in prior])
    done = 0
    for name, module in model.named_modules():
        if (name.rsplit(".", 1)[-1] in head_names and isinstance(module, torch.nn.Linear)
                and module.bias is not None and module.out_features == len(prior)):
            with torch.no_grad():
                module.bias.copy_(bias - bias.mean())
            done += 1
    return done


def plain_gguf(model) -> None:
    """A de-quantized GGUF model is a plain float model, but transformers leaves its GGUF quantizer
    attached, and Trainer then refuses to train it ("quantized with GGUF ... do not support
    training"). Detach it, so that training, saving and merging treat it as what it is."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)   # transformers' own undo: config, flags
        model.config._is_quantized = False


def hub_kwargs(source: ModelSource, recipe) -> dict:
    kwargs = {"trust_remote_code": recipe.model.trust_remote_code}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    if recipe.model.revision:
        kwargs["revision"] = recipe.model.revision
    return kwargs


def call_loader(loader, source: ModelSource, recipe, **kwargs):
    """from_pretrained with 'not found / offline' turned into one clear message."""
    import pickle

    if source.kind == "folder" and graph_only(Path(source.path)):
        raise UsageError(f"model.name: {source.path} holds an ONNX graph (peftkit merge --format "
                         "onnx), which transformers cannot load to train or merge; name the base "
                         "model it came from (base_model in its peftkit.json)")
    try:
        return loader(source.path, **kwargs)
    except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) met more than tensors
        found = [line for line in str(exc).splitlines() if "GLOBAL" in line] or [""]
        raise UsageError(f"model.name: refusing the pickled weights in {source.path}: they hold "
                         f"code or objects, not only tensors ({found[0][:120]}). "
                         "Use a model saved as safetensors, or convert this one where you trust "
                         "its source") from None
    except OSError as exc:
        if source.kind != "hub":
            raise
        raise UsageError(f"model.name: cannot load {source.path!r} ({str(exc).splitlines()[0][:160]}). "
                         f"Offline? Use a packaged alias or a local folder. Packaged aliases: "
                         f"{alias_list()}") from None


def quantization_config(recipe, task):
    """bitsandbytes settings; the task head stays in full precision (peft copies it to train it)."""
    mode = recipe.model.quantization
    if mode == "none":
        return None
    from peftkit.quantization import bnb_config

    return bnb_config(mode, task)
