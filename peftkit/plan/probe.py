"""What the plan learns from the model's config alone: parameter counts on a meta-device model,
and the activations of one forward pass through a 1- and a 2-layer copy with random weights.

Both go through the run's own code: the task's Auto class, the recipe's Strategy.apply, the
run's collator (packed where `run` packs), its training loss (a causal LM's output layer on the
completion positions only) and its precision. Activations are counted without the parameters
themselves, in two ways: the tensors autograd saves for backward
(torch.autograd.graph.saved_tensors_hooks, once per storage: what a GPU's max_memory_allocated
holds), and the bytes each layer's forward allocates (a dispatch mode). On CPU a step's resident
peak is the saved tensors plus about two layers' allocations: when backward starts every saved
tensor is alive, and the gradients of one layer's activations are computed beside the chunks the
layer before freed (glibc keeps chunks below its mmap threshold, at most 32 MB, in the process).
Measured (benchmarks/RESULTS.md#plan): SmolLM2-135M LoRA, 8 x 113 tokens: 1,122 MB saved, 80 MB
a layer, 1,489 MB at the step's peak over weights and baseline. So whatever a strategy or an
architecture keeps (DoRA's norms, bf16 copies of frozen weights under autocast, dropout masks,
attention probabilities) is measured rather than assumed. Layers are alike, so N layers =
1 layer + (N - 1) x the second.
"""

from __future__ import annotations

import contextlib
import dataclasses

from peftkit.model_facts import LAYERS
from peftkit.plan.timing import linear_weights

INT8_BYTES = 1           # bitsandbytes LLM.int8: one byte per weight ...
INT8_ROW_SCALE_BYTES = 4  # ... and an fp32 scale per output row (SCB)


def load_config(parts):
    """The base model's config as load_model sees it: labels, pad token."""
    import transformers

    source, recipe = parts.source, parts.recipe
    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    if recipe.model.revision:
        kwargs["revision"] = recipe.model.revision
    try:
        config = transformers.AutoConfig.from_pretrained(
            source.path, trust_remote_code=recipe.model.trust_remote_code, **kwargs)
    except (OSError, ValueError) as exc:
        from peftkit.errors import UsageError

        raise UsageError(f"model.name: the plan needs the model's config and cannot read it from "
                         f"{source.path!r} ({str(exc).splitlines()[0][:160]}); use a local folder, "
                         "a packaged alias or a hub id in the local cache") from None
    if parts.labels is not None:
        config.num_labels = len(parts.labels)
        config.id2label = dict(enumerate(parts.labels))
        config.label2id = {name: i for i, name in enumerate(parts.labels)}
    if getattr(config, "pad_token_id", None) is None and getattr(config, "eos_token_id", None) is not None:
        eos = config.eos_token_id
        config.pad_token_id = eos[0] if isinstance(eos, list) else eos
    return config


def loaded_dtype(config, gguf: bool):
    """from_pretrained's dtype="auto": the config's dtype; GGUF is de-quantized to float32."""
    import torch

    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if gguf or dtype is None:
        return torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def build(parts, config, dtype, device: str):
    import torch
    import transformers

    auto = getattr(transformers, parts.task.auto_class)
    with torch.device(device):
        model = auto.from_config(config, dtype=dtype,
                                 trust_remote_code=parts.recipe.model.trust_remote_code)
    return model


def apply_strategy(parts, model):
    """The recipe's strategy on an unquantized model: what it trains does not depend on the
    base's storage (peft freezes every base weight either way)."""
    ctx = dataclasses.replace(parts.ctx, quantized=False)
    return parts.strategy.apply(model, parts.recipe.strategy, ctx)


@dataclasses.dataclass
class Counts:
    total: int
    trainable: int
    weight_bytes: int       # as loaded: dtype, 8-bit Linear weights at one byte
    trainable_bytes: int
    matmul_weights: int     # Linear weights as used per token (peftkit.plan.timing)
    trained_weights: int
    int8_weights: int = 0   # of them, stored in 8 bit


def count(parts, config, dtype) -> tuple[Counts, bool]:
    """Exact parameter counts of the model `run` trains, from a meta-device copy (no memory),
    and whether its training batches are packed (peftkit.packing asks the model's attention)."""
    from peftkit.packing import packing_applies
    from peftkit.strategies.base import count_parameters

    import torch

    model = build(parts, config, dtype, "meta")
    int8 = quantized_linears(model, parts.task) if parts.recipe.model.quantization == "8bit" else (0, 0)
    with torch.device("meta"):  # new adapter tensors born on meta: moving them there would make
        model = apply_strategy(parts, model)  # new Parameters, and lose requires_grad=False

    trainable, total = count_parameters(model)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    numel, rows = int8
    itemsize = dtype.itemsize if hasattr(dtype, "itemsize") else 4
    weight_bytes -= numel * (itemsize - INT8_BYTES) - rows * INT8_ROW_SCALE_BYTES
    counts = Counts(total, trainable, weight_bytes, trainable_bytes, *linear_weights(model), numel)
    return counts, packing_applies(parts.recipe, model)


def quantized_linears(model, task) -> tuple[int, int]:
    """(weights, output rows) of the Linear layers bitsandbytes turns into 8-bit: every Linear
    whose name does not contain a skipped module (the task head, the LM head)."""
    from peftkit.quantization import int8_linears

    linears = [linear for _, _, linear in int8_linears(model, task)]
    return sum(linear.weight.numel() for linear in linears), sum(linear.out_features for linear in linears)


def num_layers(config) -> tuple[str, int]:
    for key in LAYERS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return key, value
    raise ValueError(f"{type(config).__name__} names no layer count ({', '.join(LAYERS)})")


def with_layers(config, n: int):
    config = config.__class__.from_dict(config.to_dict())
    key, _ = num_layers(config)
    setattr(config, key, n)
    if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention kinds
        config.layer_types = config.layer_types[:n]
    return config


@dataclasses.dataclass
class Forward:
    saved_bytes: int        # tensors saved for backward, parameters excluded
    allocated_bytes: int    # every tensor the forward pass allocated (saved or not)
    logits_numel: int       # the most output logits the training loss holds at once
    logits_bytes: int       # per element
    logits_last: int        # the output head's width (classes, vocabulary)
    layer_bytes: int = 0    # what one layer's forward allocates (2-layer copy minus 1-layer)


def activations(parts, config, dtype, features: list[dict], precision: str) -> tuple[Forward, Forward]:
    """(the full-depth model's forward, the 1-layer forward) on `features` (one batch)."""
    one = forward(parts, with_layers(config, 1), dtype, features, precision)
    two = forward(parts, with_layers(config, 2), dtype, features, precision)
    _, layers = num_layers(config)

    def deep(a: int, b: int) -> int:
        return a + (layers - 1) * max(0, b - a)

    full = dataclasses.replace(one, saved_bytes=deep(one.saved_bytes, two.saved_bytes),
                               allocated_bytes=deep(one.allocated_bytes, two.allocated_bytes),
                               layer_bytes=max(0, two.allocated_bytes - one.allocated_bytes))
    return full, one


def forward(parts, config, dtype, features, precision: str) -> Forward:
    import torch
    from transformers import set_seed

    from peftkit.tasks.completion_loss import first_row
    from peftkit.train import training_loss_of

    set_seed(parts.recipe.train.seed)
    model = apply_strategy(parts, build(parts, config, dtype, "cpu"))
    model.train()
    batch = collate(parts, model, features)
    loss = training_loss_of(parts.recipe, parts.task)
    if loss is not None:  # it checks the model on its first batch (logits_are_plain): not counted
        with torch.no_grad():
            train_forward(model, first_row(batch), loss)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved, allocated = Storages(params), Storages(params)
    head = HeadOutputs(model)
    try:
        with torch.autograd.graph.saved_tensors_hooks(saved.add, saved.get), \
                Allocations(allocated), autocast(precision):
            out = train_forward(model, batch, loss)
        return Forward(saved.bytes, allocated.bytes, *head.logits(out))
    finally:
        saved.release()
        head.remove()


@dataclasses.dataclass
class EvalRow:
    """One evaluation row's forward (eval mode, no gradients), scaled to the full depth."""
    logits_numel: int
    other_bytes: int        # what else the model returns: its key/value cache, hidden states
    working_bytes: int = 0  # what the layers hold at once for the whole batch (working.py)


def eval_row(parts, config, dtype, feature: dict, precision: str, rows: int = 1) -> EvalRow:
    """The forward of one row as wide as the largest evaluation batch (its longest example), and
    the layers' working memory for `rows` such rows. That does not grow with depth (each layer's
    temporaries die before the next runs), so it comes from the 1-layer copy."""
    one = eval_forward(parts, with_layers(config, 1), dtype, feature, precision, rows)
    two = eval_forward(parts, with_layers(config, 2), dtype, feature, precision)
    _, layers = num_layers(config)
    per_layer = max(0, two.other_bytes - one.other_bytes)
    return dataclasses.replace(one, other_bytes=one.other_bytes + (layers - 1) * per_layer)


def eval_forward(parts, config, dtype, feature: dict, precision: str, rows: int = 0) -> EvalRow:
    """One row's forward; with `rows`, also the working memory of that many (working.py)."""
    import torch

    from peftkit.plan.working import quantize_int8, working_bytes

    model = build(parts, config, dtype, "cpu")
    if rows and parts.recipe.model.quantization == "8bit" and not torch.cuda.is_available():
        # bitsandbytes' CPU matmul makes its own copies of each input and output (quantized,
        # int32, de-quantized): the 8-bit layers themselves, not the fp32 ones, are measured
        model = quantize_int8(model, parts.task) or model
    model = apply_strategy(parts, model)
    model.eval()
    collate = parts.task.collator(parts.tokenizer)
    with torch.no_grad(), autocast(precision):
        out = model(**collate([feature]))
        working = working_bytes(model, lambda n: collate([feature] * n), rows) if rows else 0
    logits = out["logits"]
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    other = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
             for key, value in out.items() if key not in ("loss", "logits")
             for t in tensors_in(value) if t.untyped_storage().data_ptr() not in params}
    return EvalRow(logits.numel(), sum(other.values()), working)


def tensors_in(value, depth: int = 4) -> list:
    """The tensors inside a model output's value: tuples, lists, dicts and objects such as a
    transformers Cache (layers of keys and values), a few levels deep."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if depth == 0 or value is None or isinstance(value, (str, int, float, bool)):
        return []
    if isinstance(value, dict):
        items = value.values()
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        items = vars(value).values() if hasattr(value, "__dict__") else ()
    return [t for item in items for t in tensors_in(item, depth - 1)]


class HeadOutputs:
    """What the output layer (a causal LM's vocabulary projection) returns during the probe: the
    model's forward calls it on every position or, under the task's loss (tasks/completion_loss.py),
    bypassed (hidden states out) and then for real on the labelled positions, chunk by chunk."""

    def __init__(self, model):
        from peftkit.tasks.completion_loss import output_head

        self.head = output_head(model)
        self.shapes: list[tuple[tuple, int]] = []
        self.handle = self.head.register_forward_hook(self.hook) if self.head is not None else None

    def hook(self, module, args, output):
        self.shapes.append((tuple(output.shape), output.element_size()))

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()

    def logits(self, out) -> tuple[int, int, int]:
        """(logits the loss holds at once, bytes per element, the head's width)."""
        import math

        from peftkit.tasks.completion_loss import vocab_size

        if not self.shapes:  # no output embeddings (classifiers): the model's logits
            logits = out["logits"] if isinstance(out, dict) else out[0]
            return logits.numel(), logits.element_size(), logits.shape[-1]
        vocab = vocab_size(self.head)  # the bypassed calls return hidden states: other widths
        numel, size = max(((math.prod(shape), size) for shape, size in self.shapes if shape[-1] == vocab),
                          default=(0, 4))
        return numel, size, vocab


class Storages:
    """Bytes of distinct tensor storages seen, parameters excluded (a view counts once)."""

    def __init__(self, params: set[int]):
        self.params, self.seen = params, {}
        self.kept = []  # the saved tensors, alive until release(): addresses are not reused

    def add(self, t):
        """saved_tensors_hooks' pack hook. It returns an index, not the tensor: an op that saves
        its own output (exp, softmax, ...) would otherwise hold it from its own graph node, a cycle
        no garbage collector sees, which kept ~700 MB of SmolLM2's probe alive through training."""
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.params:
            self.seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        self.kept.append(t)
        return len(self.kept) - 1

    def get(self, i: int):
        return self.kept[i]

    def release(self) -> None:
        self.kept.clear()

    def count(self, t) -> None:
        """Every allocation, even at an address an earlier, freed tensor had: what the allocator
        reuses depends on the process's history, so the count must not."""
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.params:
            self.seen[len(self.seen)] = storage.nbytes()

    @property
    def bytes(self) -> int:
        return sum(self.seen.values())


def Allocations(storages: Storages):
    """A dispatch mode that records the storage of every op's output tensors."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                      if isinstance(t, torch.Tensor) and t.device.type != "meta"}
            for t in tree_flatten(out)[0]:  # a new storage each (views and in-place ops: none)
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                    storages.count(t)
            return out

    return Mode()


def collate(parts, model, features):
    from peftkit.packing import collator, packing_applies

    if packing_applies(parts.recipe, model):
        return collator(parts.recipe, parts.tokenizer.pad_token_id)(features)
    return parts.task.collator(parts.tokenizer)(features)


def train_forward(model, batch: dict, loss=None):
    """The training forward: a sequence-classification packed batch gathers its examples' rows;
    the task's own loss (train.training_loss_of) stands in for the model's as in the Trainer."""
    from peftkit.pooled_packing import STARTS, forward_packed
    from peftkit.train import TaskLossModel

    if STARTS in batch:
        return forward_packed(model, batch)
    return TaskLossModel(model, model, loss)(**batch) if loss is not None else model(**batch)


def autocast(precision: str):
    import torch

    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=dtype)
    return contextlib.nullcontext()


def file_bytes(parts) -> int:
    """Bytes of the weight files `run` reads: their pages are resident while they load."""
    from pathlib import Path

    from peftkit.weight_files import WEIGHT_SUFFIXES

    folder = Path(parts.source.path)
    if parts.source.gguf_file:
        return (folder / parts.source.gguf_file).stat().st_size
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)

