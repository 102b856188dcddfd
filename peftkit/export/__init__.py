"""From a finished run to something other programs load.

    run folder ──merge_run──────▶ merged/   plain Hugging Face model: config.json (id2label),
    run A, B … ──merge_weighted─▶             model.safetensors, tokenizer, generation config,
                                              README.md (model card), peftkit.json
    run folder ──export_adapter─▶ adapter/  the adapter alone: peft's adapter_config.json +
                                              adapter_model.safetensors (PeftModel.from_pretrained)
                                              or peftkit's own format; README.md, peftkit.json,
                                              recipe.yaml, labels.json (peftkit predict/eval load it)

Every model is rebuilt from the run folder through `peftkit.rundir.load_run` (the same model
loading as training), and every output is written to a temporary folder and renamed into place.
Modules here import torch, transformers and peft only inside functions.
"""

from peftkit.export.adapter import export_adapter
from peftkit.export.merge import merge_run, merge_weighted

__all__ = ["export_adapter", "merge_run", "merge_weighted"]
