"""`peftkit merge RUN --format onnx`: the merged model as an ONNX graph that ONNX Runtime runs.

    merged model (merge_run / merge_weighted, full precision)
        ──torch.onnx.export(dynamo=True: torch.export + onnxscript)──▶ out/model.onnx
             inputs: the tokenizer's (input_ids, attention_mask[, token_type_ids]),
             axes batch and sequence dynamic; output: logits
        ──checked: ONNX Runtime's logits against the model's, on batches of other shapes
    out/ also: config.json (id2label), tokenizer files, README.md, peftkit.json, SHA256SUMS
               (model.onnx in it: predict / eval refuse a changed graph)

Only tasks whose model is one forward pass from token ids to logits (Task.exports_onnx). The
graph is torch's exporter's; optimum's ONNX exporter would add nothing for these tasks and pins
transformers < 4.58.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

from peftkit.errors import PeftkitError, UsageError
from peftkit.export.card import model_card
from peftkit.export.folder import ONNX, label_config, staged, without_code, write_meta
from peftkit.export.onnx_runtime import GRAPH, OUTPUT, require
from peftkit.output import verbose
from peftkit.rundir import seal_weights

FORMATS = ("safetensors", ONNX)    # `peftkit merge --format`
# Example batch of the export: torch.export fixes an axis whose example size is 1, so two rows
# of different lengths (padding in the mask). The check adds a row alone and three rows.
EXAMPLES = ["peftkit exports this model to ONNX .",
            "Two sentences of different lengths , so that the batch holds padding ."]
CHECKS = [EXAMPLES[:1], EXAMPLES + ["A third , longer sentence : its tokens make every row "
                                    "of this batch longer than the example batch was ."]]
# |onnx - torch| <= ATOL + RTOL * |torch| on every logit: float32 kernels that add in another
# order differ by ~1e-6 of the logits' size; a wrong graph differs by far more
ATOL = RTOL = 1e-4


def check_onnx(recipe, dtype: str) -> None:
    """Before any model is loaded: the task exports, float32, the extra is installed."""
    from peftkit.tasks import get_task

    task = get_task(recipe.task)
    if not task.exports_onnx:
        raise UsageError(f"--format onnx: a {recipe.task} run cannot be exported to ONNX: "
                         f"{task.onnx_refusal}. Write a transformers folder instead (leave out "
                         "--format)")
    if dtype != "float32":
        raise UsageError(f"--format onnx --dtype {dtype}: the graph holds float32 weights (what "
                         "ONNX Runtime's CPU kernels compute in); leave out --dtype")
    require()


def save_onnx(model, tokenizer, out: Path, recipe, labels, base: str, sources: list[dict],
              results: list, method: str | None = None, trust_remote_code: bool = False) -> None:
    """The graph, its check, config (id2label), tokenizer, card, peftkit.json and SHA256SUMS.
    `base`: the base model as result.json names it."""
    model = model.float().eval()
    label_config(model, labels)
    with staged(out) as tmp:
        export_graph(model, tokenizer, tmp / GRAPH)
        worst = check_graph(model, tokenizer, tmp / GRAPH)
        model.config.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        without_code(tmp, trust_remote_code)
        seal_weights(tmp)
        extra = {"format": f"ONNX (`{GRAPH}`), float32, dynamic batch and sequence axes",
                 "largest logit difference from PyTorch": f"{worst:.2g} (checked at export)"}
        if method:
            extra["combination"] = f"peft add_weighted_adapter, {method}"
        card = model_card(ONNX, out, recipe, labels, results, sources, extra)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        write_meta(tmp, {"kind": ONNX, "task": recipe.task, "labels": labels,
                         "strategy": recipe.strategy_name, "base_model": base,
                         "dtype": "float32", "method": method, "sources": sources,
                         "onnx": {"graph": GRAPH, "inputs": input_names(tokenizer),
                                  "output": OUTPUT, "max_abs_logit_diff": worst},
                         "recipe": recipe.to_dict(),
                         "metrics": results[0].get("test") if len(results) == 1 and results[0] else None})


def input_names(tokenizer) -> list[str]:
    return list(tokenizer(EXAMPLES[:1]).keys())


def export_graph(model, tokenizer, path: Path) -> None:
    import torch

    inputs = dict(tokenizer(EXAMPLES, padding=True, return_tensors="pt"))
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with warnings.catch_warnings(), quiet_exporter_log():
        # every input shares the two axes: torch notes once per input that it keeps one name
        warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used")
        try:
            program = torch.onnx.export(
                model, (), kwargs=inputs, input_names=list(inputs), output_names=[OUTPUT],
                dynamic_shapes={name: {0: batch, 1: sequence} for name in inputs}, dynamo=True,
                verbose=False)  # no progress lines on stdout
        except Exception as exc:  # torch.export's and onnxscript's errors have no common class
            raise PeftkitError(f"torch.onnx.export could not export this {type(model).__name__}: "
                               f"{str(exc).strip().splitlines()[0][:300]}. Write a transformers "
                               "folder instead (leave out --format)") from None
    program.save(str(path))  # weights above 2 GiB go to model.onnx.data beside it (torch decides)


@contextlib.contextmanager
def quiet_exporter_log():
    """torch.onnx logs through its own stderr handler (route_libraries does not reach it): below
    -v, only its errors. Its warnings here say that torchvision's operators are not registered."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    if not verbose():
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def check_graph(model, tokenizer, path: Path) -> float:
    """ONNX Runtime's logits against the model's on batches of other sizes and lengths than the
    example (the axes are really dynamic); the largest difference, or an error above tolerance.
    On the CPU: the graph is checked, not a GPU's float32 mode."""
    import numpy as np
    import torch

    from peftkit.export.onnx_runtime import session

    graph = session(path, providers=("CPUExecutionProvider",))
    names = [i.name for i in graph.get_inputs()]
    worst = 0.0
    for texts in CHECKS:
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            want = model(**enc).logits.numpy()
        got = graph.run([OUTPUT], {n: enc[n].numpy() for n in names})[0]
        if got.shape != want.shape or not np.allclose(got, want, rtol=RTOL, atol=ATOL):
            raise PeftkitError(f"the exported ONNX graph computes other logits than the model on "
                               f"{len(texts)} sentence(s) (shape {got.shape} against {want.shape}, "
                               f"tolerance {ATOL} + {RTOL} x |logit|); write a transformers folder "
                               "instead (leave out --format)")
        worst = max(worst, float(np.abs(got - want).max()))
    return worst
