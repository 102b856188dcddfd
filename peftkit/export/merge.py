"""Fold adapters into the base weights and save a plain Hugging Face model.

    merge_run:      run ──load_run(quantization="none")──▶ strategy.merge ──▶ save
    merge_weighted: runs ─▶ one full-precision base + each run's adapter ─▶ peft add_weighted_adapter
                    ─▶ merge_and_unload ─▶ task heads combined with the same weights ─▶ save
    save: fmt "safetensors" ─▶ save_merged (a transformers folder); "onnx" ─▶ onnx_export.save_onnx

The base is always reloaded in full precision (an 8-bit run's too): merging into int8 weights
would round the delta away. Each call rebuilds the model from the run folder, so repeating a
merge gives the same folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from peftkit.errors import PeftkitError, UsageError
from peftkit.export.card import model_card
from peftkit.export.folder import (MERGED, ONNX, check_out, label_config, staged, without_code,
                                   write_meta)
from peftkit.export.onnx_export import FORMATS, check_onnx, save_onnx
from peftkit.rundir import seal_weights
from peftkit.strategies import all_strategies

DTYPES = ("float32", "bfloat16", "float16")
# Whether a strategy merges, why not, and which weighted combinations it has: the strategy says
# (Strategy.can_merge, merge_refusal, weighted_methods, weighted_refusal, weighted_kwargs).
NEEDS_DENSITY = ("ties", "dare", "magnitude_prune")


# ---------------------------------------------------------------- one run

def merge_run(run_dir, out, dtype: str = "float32", overwrite: bool = False,
              trust_remote_code: bool = False, fmt: str = "safetensors") -> Path:
    """Merge one run's adapter into its base (a full fine-tune is saved as it is).
    `trust_remote_code`: the command's flag (the run folder's recipe never decides it).
    `fmt`: safetensors (a transformers folder) or onnx."""
    run = RunInfo(Path(run_dir), trust_remote_code)
    check_mergeable(run)
    check_format(run.recipe, dtype, fmt)
    out = check_out(Path(out), overwrite, [run.dir])
    merged, tokenizer, recipe, labels = merged_model(run)
    sources = [{"run": str(run.dir), "weight": 1.0}]
    save(fmt, merged, tokenizer, out, recipe, labels, dtype, sources, [run.result],
         trust_remote_code=trust_remote_code)
    return out


def check_format(recipe, dtype: str, fmt: str) -> None:
    """Everything about the output format that can be refused before a model is loaded."""
    check_dtype(dtype)
    if fmt == ONNX:
        check_onnx(recipe, dtype)
    elif fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")


def save(fmt: str, model, tokenizer, out: Path, recipe, labels, dtype: str, sources: list[dict],
         results: list, method: str | None = None, trust_remote_code: bool = False) -> None:
    if fmt == ONNX:
        save_onnx(model, tokenizer, out, recipe, labels, base_label(recipe), sources, results,
                  method=method, trust_remote_code=trust_remote_code)
    else:
        save_merged(model, tokenizer, out, recipe, labels, dtype, sources, results, method=method,
                    trust_remote_code=trust_remote_code)


def merged_model(run: "RunInfo"):
    """(plain merged model, tokenizer, recipe, labels) of one run, its base in full precision."""
    from peftkit.rundir import load_run

    model, tokenizer, recipe, labels, _ = load_run(run.dir, quantization="none", recipe=run.recipe,
                                                   trust_remote_code=run.trust_remote_code)
    return recipe.strategy_impl.merge(model), tokenizer, recipe, labels


def check_mergeable(run: "RunInfo") -> None:
    strategy = run.recipe.strategy_impl
    if strategy.can_merge:
        return
    raise PeftkitError(f"{run.dir}: a {strategy.name} run cannot be merged into the base weights: "
                       f"{strategy.merge_refusal}. "
                       "`peftkit merge` folds weight deltas only (lora, dora, adalora, ia3). Write the "
                       f"adapter-only format instead: peftkit export {run.dir} --out DIR "
                       "(peftkit predict / eval load it).")


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")


# ---------------------------------------------------------------- several runs

def merge_weighted(run_dirs, weights: list[float] | None, out, method: str = "linear",
                   dtype: str = "float32", overwrite: bool = False, density: float | None = None,
                   svd_rank: int | None = None, trust_remote_code: bool = False,
                   fmt: str = "safetensors") -> Path:
    """Combine the adapters of runs on one base with peft's add_weighted_adapter, then merge.

    Task heads (peft's modules_to_save: every run trains its own) are combined as sum(w_i * head_i),
    and so is any other non-adapter tensor a run saved (trained biases).
    """
    runs = [RunInfo(Path(d), trust_remote_code) for d in run_dirs]
    weights = list(weights) if weights is not None else [1.0 / len(runs)] * len(runs)
    check_weighted(runs, weights, method, density)
    check_format(runs[0].recipe, dtype, fmt)
    out = check_out(Path(out), overwrite, [r.dir for r in runs])
    model, tokenizer, recipe, labels = combined_model(runs, weights, method, density, svd_rank)
    sources = [{"run": str(r.dir), "weight": w} for r, w in zip(runs, weights)]
    save(fmt, model, tokenizer, out, recipe, labels, dtype, sources, [r.result for r in runs],
         method=method, trust_remote_code=trust_remote_code)
    return out


def check_weighted(runs: list["RunInfo"], weights: list[float], method: str, density) -> None:
    if len(weights) != len(runs):
        raise UsageError(f"--weights has {len(weights)} values for {len(runs)} runs; give one per run")
    first = runs[0]
    for run in runs[1:]:
        for what, a, b in (("task", first.recipe.task, run.recipe.task),
                           ("base model", first.base_key, run.base_key),
                           ("labels", first.labels, run.labels),
                           ("strategy", first.recipe.strategy_name, run.recipe.strategy_name)):
            if a != b:
                raise UsageError(f"cannot combine {first.dir} and {run.dir}: they differ in {what} "
                                 f"({a} vs {b}). A weighted merge adds adapters trained for the same "
                                 "task on the same base model; merge each run on its own instead.")
    strategy, name = first.recipe.strategy_impl, first.recipe.strategy_name
    if not strategy.weighted_methods:
        detail = strategy.weighted_refusal or f"{name} is not a LoRA-family weight delta"
        supported = [s.name for s in all_strategies() if s.weighted_methods]
        raise UsageError(f"weighted merge of {name} runs: {detail}. Supported: "
                         f"{', '.join(supported)}; merge a single run with `peftkit merge RUN --out DIR`.")
    if any(getattr(r.recipe.strategy, "use_dora", False) for r in runs):
        raise UsageError("weighted merge of DoRA runs: peft's add_weighted_adapter combines the A/B "
                         "matrices but not DoRA's magnitude vectors, so the result would be wrong; "
                         "merge each DoRA run on its own")
    if method not in strategy.weighted_methods:
        raise UsageError(f"--method {method}: {name} adapters combine with "
                         f"{', '.join(strategy.weighted_methods)} only")
    if density is None and any(k in method for k in NEEDS_DENSITY):
        raise UsageError(f"--method {method} prunes the deltas: give --density (share kept, 0..1)")


def combined_model(runs, weights, method, density, svd_rank):
    """A full-precision base with every run's adapter, combined by peft and merged."""
    import torch
    from peft import PeftConfig, get_peft_model, load_peft_weights, set_peft_model_state_dict

    from peftkit import remote_code
    from peftkit.models import load_model, source_of
    from peftkit.rundir import checked_weights, load_tokenizer_from, weights_dir
    from peftkit.tasks import get_task

    recipe = runs[0].recipe.with_quantization("none")  # trust_remote_code: the command's (RunInfo)
    task = get_task(recipe.task)
    for run in runs:
        checked_weights(run.dir)
    source = source_of(recipe)
    code_dirs = [Path(source.path)] if source.kind == "folder" else []
    remote_code.announce(code_dirs, recipe.model.trust_remote_code)
    with remote_code.refusing_code(code_dirs):
        model = load_model(source, recipe, task, runs[0].labels)
    names = [f"run{i}" for i in range(len(runs))]
    others: dict[str, torch.Tensor] = {}
    for name, run, w in zip(names, runs, weights):
        folder = weights_dir(run.dir)
        cfg = PeftConfig.from_pretrained(str(folder))
        # Heads are combined below: peft refuses weighted merges of adapters that each carry a
        # modules_to_save copy, and a task-specific PeftModel would add the head back.
        cfg.modules_to_save, cfg.task_type, cfg.inference_mode = None, None, True
        # The base is the recipe's, loaded above; the config's portable name for it (export's
        # describe_run_weights) would only make peft warn that the two names differ.
        cfg.base_model_name_or_path = None
        if name == names[0]:
            model = get_peft_model(model, cfg, adapter_name=name)
        else:
            model.add_adapter(name, cfg)
        tensors = load_peft_weights(str(folder), device="cpu")
        prefix = model.base_model.prefix            # "lora_" / "ia3_": the adapter's own tensors
        adapter = {k: v for k, v in tensors.items() if prefix in k}
        loaded = set_peft_model_state_dict(model, adapter, adapter_name=name)
        if getattr(loaded, "unexpected_keys", None):
            raise PeftkitError(f"{folder}: adapter tensors the model does not have: "
                               f"{loaded.unexpected_keys[:3]}")
        rest = {k: v for k, v in tensors.items() if prefix not in k}
        if name != names[0] and rest.keys() != others.keys():
            raise UsageError(f"cannot combine {runs[0].dir} and {run.dir}: they saved different "
                             f"non-adapter tensors ({sorted(rest.keys() ^ others.keys())[:3]}); "
                             "train them with the same strategy settings (bias, heads)")
        for k, v in rest.items():
            others[k] = others.get(k, 0) + w * v.float()
    kwargs = recipe.strategy_impl.weighted_kwargs(method, density, svd_rank)
    try:
        model.add_weighted_adapter(names, list(weights), "combined", **kwargs)
    except (ValueError, TypeError) as exc:
        hint = " (--method cat or svd combine different ranks)" if "same r" in str(exc) else ""
        raise UsageError(f"peft cannot combine these adapters with --method {method}: {exc}{hint}") \
            from None
    merged = model.merge_and_unload(adapter_names=["combined"])
    load_others(merged, others)
    tokenizer = load_tokenizer_from(weights_dir(runs[0].dir), recipe.model.trust_remote_code)
    return merged, tokenizer, recipe, runs[0].labels


def load_others(model, tensors: dict) -> None:
    """Put the combined heads (saved as base_model.model.<name>) into the merged plain model."""
    if not tensors:
        return
    state = {k.removeprefix("base_model.model."): v for k, v in tensors.items()}
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise PeftkitError(f"saved tensors {unknown[:3]} have no place in the merged model")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)


# ---------------------------------------------------------------- saving

def save_merged(model, tokenizer, out: Path, recipe, labels, dtype: str, sources: list[dict],
                results: list, method: str | None = None, trust_remote_code: bool = False) -> None:
    """safetensors weights, config (id2label/label2id), tokenizer, generation config, card, meta."""
    import torch

    model = model.to(getattr(torch, dtype)).eval()
    label_config(model, labels)
    if model.can_generate():
        generation_defaults(model, tokenizer, recipe)
    base = base_label(recipe)
    extra = {"output dtype": dtype}
    if method:
        extra["combination"] = f"peft add_weighted_adapter, {method}"
    with staged(out) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        without_code(tmp, trust_remote_code)
        seal_weights(tmp)
        card = model_card(MERGED, out, recipe, labels, results, sources, extra)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        write_meta(tmp, {"kind": MERGED, "task": recipe.task, "labels": labels,
                         "strategy": recipe.strategy_name, "base_model": base, "dtype": dtype,
                         "method": method, "sources": sources, "recipe": recipe.to_dict(),
                         "metrics": results[0].get("test") if len(results) == 1 and results[0] else None})


def generation_defaults(model, tokenizer, recipe) -> None:
    """Generate as the run evaluated: same token budget and beams, a pad token set."""
    gen = model.generation_config
    gen.max_new_tokens = recipe.eval.max_new_tokens
    gen.num_beams = recipe.eval.num_beams
    if gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id


def base_label(recipe) -> str:
    """The base as result.json names it (a packaged alias rather than its install path)."""
    from peftkit.models import source_of

    try:
        return source_of(recipe).label
    except PeftkitError:
        return recipe.model.name


# ---------------------------------------------------------------- reading a run cheaply

class RunInfo:
    """What a run folder says about itself, read without loading any model."""

    def __init__(self, run_dir: Path, trust_remote_code: bool = False):
        from peftkit import rundir

        self.dir = run_dir.resolve()
        self.trust_remote_code = trust_remote_code  # the command's flag, never the folder's
        if not (self.dir / rundir.RECIPE).is_file():
            raise UsageError(f"{run_dir} is not a peftkit run folder (no {rundir.RECIPE}); "
                             "give the folder `peftkit run` wrote")
        self.recipe = self.load_recipe()
        labels = self.dir / rundir.LABELS
        self.labels = json.loads(labels.read_text()) if labels.is_file() else None
        result = self.dir / rundir.RESULT
        self.result = json.loads(result.read_text()) if result.is_file() else None
        m = self.recipe.model
        self.base_key = f"{m.name}" + (f" ({m.gguf_file})" if m.gguf_file else "") \
            + (f" @ {m.revision}" if m.revision else "")

    def load_recipe(self):
        from peftkit import rundir

        return rundir.read_run_recipe(self.dir, self.trust_remote_code)
