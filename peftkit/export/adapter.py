"""`peftkit export`: the adapter alone, in the format its ecosystem loads.

    out/
      adapter_config.json + adapter_model.safetensors   peft methods: PeftModel.from_pretrained(base, out)
      peftkit_adapter.json + adapter_model.safetensors  peftkit's own (adapter, prefix): see
                                                        peftkit.strategies.base.save_trainable
      config.json + model.safetensors                   full fine-tune: the whole model
      tokenizer files, README.md (model card)
      recipe.yaml, labels.json, result.json, peftkit.json   so peftkit predict / eval / load_run use it

Works for every strategy, including those that cannot be merged; nothing is loaded or converted,
the run's saved files are copied.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from peftkit import rundir
from peftkit.export.card import model_card, portable_base
from peftkit.export.folder import ADAPTER, check_out, staged, without_code, write_meta
from peftkit.export.merge import RunInfo, base_label

RUN_FILES = (rundir.RECIPE, rundir.LABELS, rundir.RESULT)


def describe_run_weights(run_dir: Path, recipe, result: dict, labels) -> None:
    """Make the run folder's own weights travel like an export: peft's adapter_config.json names
    the base by its portable name (peft writes this machine's path of it), and the card replaces
    peft's empty README.md template."""
    folder = rundir.weights_dir(run_dir)
    config = folder / "adapter_config.json"
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        data["base_model_name_or_path"] = portable_base(recipe)
        rundir.write_json(config, data)
    sources = [{"run": str(run_dir), "weight": 1.0}]
    card = model_card(ADAPTER, folder, recipe, labels, [result], sources)
    rundir.atomic_write_text(folder / "README.md", card)


def export_adapter(run_dir, out, overwrite: bool = False, trust_remote_code: bool = False) -> Path:
    """`trust_remote_code`: keep model code files (*.py, auto_map) the run's folder holds."""
    run = RunInfo(Path(run_dir), trust_remote_code)
    folder = rundir.checked_weights(run.dir)  # a corrupt file is refused, not copied on
    out = check_out(Path(out), overwrite, [run.dir])
    recipe, base = run.recipe, base_label(run.recipe)
    with staged(out) as tmp:
        shutil.copytree(folder, tmp, dirs_exist_ok=True)
        without_code(tmp, trust_remote_code)
        for name in RUN_FILES:
            if (run.dir / name).is_file():
                shutil.copy2(run.dir / name, tmp / name)
        sources = [{"run": str(run.dir), "weight": 1.0}]
        card = model_card(ADAPTER, out, recipe, run.labels, [run.result], sources)
        (tmp / "README.md").write_text(card, encoding="utf-8")   # replaces peft's empty template
        write_meta(tmp, {"kind": ADAPTER, "task": recipe.task, "labels": run.labels,
                         "strategy": recipe.strategy_name, "base_model": base,
                         "sources": sources, "recipe": recipe.to_dict(),
                         "metrics": (run.result or {}).get("test")})
    return out
