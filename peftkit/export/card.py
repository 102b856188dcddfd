"""Model cards (README.md) for merged and exported folders: where the model came from, how it was
trained, what it scored, and how to load it — with the Hub's YAML front matter."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from peftkit.export.folder import ADAPTER, MERGED, ONNX
from peftkit.rundir import LABELS

PIPELINE_TAG = {"token-classification": "token-classification",
                "sequence-classification": "text-classification", "causal-lm": "text-generation"}
AUTO_CLASS = {"token-classification": "AutoModelForTokenClassification",
              "sequence-classification": "AutoModelForSequenceClassification",
              "causal-lm": "AutoModelForCausalLM"}


def model_card(kind: str, out, recipe, labels, results: list[dict | None], sources: list[dict],
               extra: dict | None = None) -> str:
    """kind: merged | adapter. `results` holds each source run's result.json (or None). The base
    is named as a user elsewhere would load it (portable_base), as everything else in a card."""
    base_label = portable_base(recipe)
    parts = [f"---\n{front_matter(kind, out, recipe, results)}\n---\n",
             f"# {out.name}\n",
             intro(kind, recipe, base_label, sources),
             training_table(recipe, base_label, labels, sources, extra or {}),
             metrics_section(recipe, results, kind),
             how_to_load(kind, out, recipe),
             "## Recipe\n\nThe resolved recipe of the run"
             + (" (first source run)" if len(sources) > 1 else "") + ":\n\n```yaml\n"
             + yaml.safe_dump(portable_recipe(recipe), sort_keys=False) + "```\n"]
    return "\n".join(parts)


def front_matter(kind: str, out, recipe, results: list[dict | None]) -> str:
    """The Hub's card metadata (huggingface_hub.ModelCardData): base model and its license, the
    data set, the test metrics as a model-index; names that mean something on another machine."""
    from huggingface_hub import EvalResult, ModelCardData

    library = "onnx" if kind == ONNX else "transformers" if whole_model(kind, recipe) else \
        "peft" if peft_owned(recipe) else "peftkit"
    task_type = PIPELINE_TAG.get(recipe.task, recipe.task)
    data, on_hub = dataset_name(recipe)
    result = results[0] if len(results) == 1 else None  # a weighted combination is unevaluated
    metrics = {k: v for k, v in ((result or {}).get("test") or {}).items()
               if isinstance(v, (int, float)) and not k.endswith(("runtime", "per_second", "epoch"))}
    evals = [EvalResult(task_type=task_type, dataset_type=data, dataset_name=data,
                        dataset_split=recipe.data.final_split_name,
                        metric_type=k, metric_value=v) for k, v in metrics.items()]
    card = ModelCardData(base_model=portable_base(recipe), license=base_license(recipe),
                         datasets=[data] if on_hub else None, library_name=library,
                         pipeline_tag=task_type, tags=["peftkit", recipe.strategy_name, kind],
                         model_name=out.name, eval_results=evals or None)
    return card.to_yaml()


def portable_recipe(recipe) -> dict:
    """The recipe as the card shows it: local paths (base, data, output) by their names only."""
    from peftkit.models_registry import ALIAS_HUB

    out = recipe.to_dict()
    if recipe.model.name not in ALIAS_HUB:
        out["model"]["name"] = portable_base(recipe)
    out["data"]["name"] = dataset_name(recipe)[0]
    if out["output"].get("dir"):
        out["output"]["dir"] = Path(out["output"]["dir"]).name
    return out


def portable_base(recipe) -> str:
    """The base as a user elsewhere loads it (models_registry.portable_name), never a local path."""
    from peftkit.errors import PeftkitError
    from peftkit.models import source_of
    from peftkit.models_registry import portable_name

    try:
        return portable_name(source_of(recipe))
    except PeftkitError:
        return Path(recipe.model.name).name


def base_license(recipe) -> str | None:
    from peftkit.models_registry import ALIAS_HUB

    return ALIAS_HUB.get(recipe.model.name, (None, None))[1]


def dataset_name(recipe) -> tuple[str, bool]:
    """(the data set's name, whether it is a hub id): a local folder by its name only."""
    from peftkit.data.registry import data_source

    try:
        kind = data_source(recipe).kind
    except Exception:  # a moved local folder: the card still names it
        kind = "local"
    return (recipe.data.name if kind != "local" else Path(recipe.data.name).name), kind == "hub"


def intro(kind: str, recipe, base_label: str, sources: list[dict]) -> str:
    if kind == ADAPTER and recipe.strategy_impl.saves_whole_model:
        return f"The fully fine-tuned model of a peftkit run on `{base_label}` (a whole model).\n"
    if kind == ADAPTER:
        return (f"The {recipe.strategy_name} adapter of a peftkit run on `{base_label}`, without the "
                "base weights.\n")
    if kind == ONNX:
        return onnx_intro(recipe, base_label, sources)
    if len(sources) > 1:
        runs = ", ".join(f"`{s['run']}` × {s['weight']:g}" for s in sources)
        return (f"A plain Hugging Face model: `{base_label}` with the {recipe.strategy_name} adapters "
                f"of several runs combined by peft's `add_weighted_adapter` ({runs}) and merged into "
                "its weights. Loading it needs neither peft nor peftkit.\n")
    how = "fully fine-tuned" if recipe.strategy_impl.saves_whole_model else \
        f"with its {recipe.strategy_name} adapter merged into the weights"
    return f"A plain Hugging Face model: `{base_label}` {how}. Loading it needs neither peft nor peftkit.\n"


def onnx_intro(recipe, base_label: str, sources: list[dict]) -> str:
    what = (f"the {recipe.strategy_name} adapters of {len(sources)} runs combined and merged into "
            "its weights" if len(sources) > 1 else "fully fine-tuned"
            if recipe.strategy_impl.saves_whole_model else
            f"with its {recipe.strategy_name} adapter merged into the weights")
    return (f"An ONNX graph of `{base_label}` {what}, exported by `torch.onnx.export`: ONNX Runtime "
            "runs it with the tokenizer beside it; neither torch, peft nor peftkit is needed.\n")


def training_table(recipe, base_label, labels, sources, extra: dict) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(recipe.strategy).items()
                         if v not in (None, [], {}))
    t = recipe.train
    rows = [("base model", f"`{base_label}`"
             + (f" (trained on a {recipe.model.quantization} base)" if recipe.model.quantized else "")),
            ("task", recipe.task),
            ("strategy", f"{recipe.strategy_name} ({settings})" if settings else recipe.strategy_name),
            ("data", f"`{recipe.data.name}` (train split `{recipe.data.train_split}`, "
                     f"max_length {recipe.data.max_length})"),
            ("training", f"{t.epochs:g} epochs" + (f" / max {t.max_steps} steps" if t.max_steps else "")
             + f", batch {t.batch_size}, learning rate {t.learning_rate:g}, seed {t.seed}"),
            ("source run" + ("s" if len(sources) > 1 else ""),
             ", ".join(f"`{Path(s['run']).name}`" for s in sources))]
    if labels:
        rows.append(("labels", ", ".join(f"`{x}`" for x in labels)))
    rows += [(k, str(v)) for k, v in extra.items()]
    return "## Training\n\n| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


def metrics_section(recipe, results: list[dict | None], kind: str) -> str:
    if len(results) > 1:
        lines = ["## Metrics\n",
                 "This weighted combination has not been evaluated; the source runs scored:\n"]
        for r in results:
            if r:
                lines.append(f"- `{Path(r.get('run_dir', '?')).name}`: test {r['metric']} {fmt(r['test'].get(r['metric']))}")
        lines.append("\nEvaluate the combination with `peftkit eval THIS_FOLDER --data NAME_OR_PATH`.\n")
        return "\n".join(lines)
    result = results[0]
    if not result:
        return "## Metrics\n\nThe run folder holds no result.json.\n"
    test = result.get("test", {})
    skip = ("runtime", "per_second", "epoch")
    rows = "".join(f"| {k} | {fmt(v)} |\n" for k, v in test.items()
                   if isinstance(v, (int, float)) and not k.endswith(skip))
    split = recipe.data.final_split_name
    note = ("" if kind == ADAPTER or recipe.strategy_impl.saves_whole_model else
            "\nMeasured on the run's unmerged model; the merged weights compute the same function "
            "(up to float rounding, and the output dtype).\n")
    return (f"## Metrics\n\nSplit `{split}` of `{recipe.data.name}`"
            f" ({result.get('examples', {}).get('test', '?')} examples), "
            f"main metric **{result['metric']} = {fmt(test.get(result['metric']))}**, evaluated in "
            f"{result.get('precision', '?')}" + (" (bf16 autocast: an fp32 evaluation may differ in the "
            "last digits)" if result.get("precision") == "bf16" else "") + ".\n\n"
            f"| metric | value |\n|---|---|\n{rows}{note}")


def how_to_load(kind: str, out, recipe) -> str:
    """Code that loads the folder wherever it was copied to: named by its folder name, the base by
    its portable name."""
    auto = AUTO_CLASS.get(recipe.task, "AutoModel")
    out = Path(out.name)
    if kind == ONNX:
        return onnx_how_to_load(out)
    if whole_model(kind, recipe):
        use = ("inputs = tokenizer(\"Hello\", return_tensors=\"pt\")\n"
               "print(tokenizer.decode(model.generate(**inputs)[0]))" if recipe.task == "causal-lm"
               else "logits = model(**tokenizer(\"Some text\", return_tensors=\"pt\")).logits")
        return ("## How to load\n\n```python\n"
                f"from transformers import {auto}, AutoTokenizer\n\n"
                f"model = {auto}.from_pretrained(\"{out}\")\n"
                f"tokenizer = AutoTokenizer.from_pretrained(\"{out}\")\n{use}\n```\n\n"
                f"or with peftkit: `peftkit predict {out} \"Some text\"`.\n")
    head = ("labels = json.load(open(\"" + str(out / LABELS) + "\"))\n" if recipe.task != "causal-lm"
            else "")
    head_args = (", num_labels=len(labels),\n    id2label=dict(enumerate(labels)), "
                 "label2id={name: i for i, name in enumerate(labels)}" if head else "")
    with_peft = ("Load the base with the task head, then the adapter:\n\n```python\n"
                 f"import json\nfrom transformers import {auto}\nfrom peft import PeftModel\n\n{head}"
                 f"base = {auto}.from_pretrained({base_args(recipe)}{head_args})\n"
                 f"model = PeftModel.from_pretrained(base, \"{out}\")\n```\n\n")
    own = ("The weights are in peftkit's own adapter format (peft has no such method): "
           "`adapter_model.safetensors` holds the trained tensors by parameter name and "
           "`peftkit_adapter.json` the settings; peftkit rebuilds the modules and loads them.\n\n")
    return ("## How to load\n\n" + (with_peft if peft_owned(recipe) else own)
            + f"With peftkit: `peftkit predict {out} \"Some text\"`, `peftkit eval {out} --data ...`, "
            f"or `peftkit.rundir.load_run(\"{out}\")` in Python.\n")


def onnx_how_to_load(out: Path) -> str:
    return ("## How to load\n\n```python\n"
            "import onnxruntime\nfrom transformers import AutoConfig, AutoTokenizer\n\n"
            f"session = onnxruntime.InferenceSession(\"{out / 'model.onnx'}\")\n"
            f"tokenizer = AutoTokenizer.from_pretrained(\"{out}\")\n"
            f"id2label = AutoConfig.from_pretrained(\"{out}\").id2label\n"
            "inputs = tokenizer([\"Some text\"], return_tensors=\"np\")\n"
            "names = [i.name for i in session.get_inputs()]\n"
            "logits = session.run([\"logits\"], {n: inputs[n] for n in names})[0]\n```\n\n"
            f"or with peftkit: `peftkit predict {out} \"Some text\"`, "
            f"`peftkit eval {out} --data ...`.\n")


def base_args(recipe) -> str:
    """from_pretrained arguments that load this run's base on another machine: a packaged alias
    by its hub id (the same weights), a local folder or GGUF file by its name."""
    from peftkit.models_registry import ALIAS_HUB

    name = portable_base(recipe)
    if recipe.model.name in ALIAS_HUB:
        return repr(name)
    if name.endswith(".gguf"):  # transformers reads a GGUF file from its folder
        return f"\"path/to/its/folder\", gguf_file={name!r}"
    return repr(name) + (f", gguf_file={recipe.model.gguf_file!r}" if recipe.model.gguf_file else "")


def whole_model(kind: str, recipe) -> bool:
    """A plain transformers model: merged, or a full fine-tune (its "adapter" is the whole model)."""
    return kind == MERGED or recipe.strategy_impl.saves_whole_model


def peft_owned(recipe) -> bool:
    """Saved in peft's format (PeftModel.from_pretrained loads it)?"""
    return recipe.strategy_impl.peft_format


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
