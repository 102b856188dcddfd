"""`train.report_to`: the Trainer's logging integrations, checked before anything loads.

Torch-free (the recipe checks use it): each integration the Trainer knows (transformers'
INTEGRATION_TO_CALLBACK, kept equal by tests/test_recipe.py) with the module its availability
check looks for and the install command. tensorboard, mlflow and wandb are peftkit extras; the
others are installed on their own. kubeflow needs no package (an environment variable turns it on).
"""

from __future__ import annotations

import importlib.util

# name: (module sets, any one of which, all its modules found, makes it available; what to install)
REPORTERS: dict[str, tuple[tuple[tuple[str, ...], ...], str]] = {
    "tensorboard": ((("tensorboard",), ("tensorboardX",)), "pip install 'peftkit[tensorboard]'"),
    "mlflow": ((("mlflow",),), "pip install 'peftkit[mlflow]'"),
    "wandb": ((("wandb",),), "pip install 'peftkit[wandb]'"),
    "azure_ml": ((("azureml",),), "pip install azureml-core"),
    "comet_ml": ((("comet_ml",),), "pip install comet-ml"),
    "neptune": ((("neptune",),), "pip install neptune"),
    "trackio": ((("trackio",),), "pip install trackio"),
    "codecarbon": ((("codecarbon",),), "pip install codecarbon"),
    "clearml": ((("clearml",),), "pip install clearml"),
    "dagshub": ((("dagshub", "mlflow"),), "pip install dagshub mlflow"),
    "flyte": ((("flytekit",),), "pip install flytekit flytekitplugins-deck-standard"),
    "dvclive": ((("dvclive",),), "pip install dvclive"),
    "swanlab": ((("swanlab",),), "pip install swanlab"),
    "kubeflow": (((),), ""),
}


def missing(name: str) -> str | None:
    """The install command when integration `name` cannot run here, else None."""
    module_sets, install = REPORTERS[name]
    found = any(all(importlib.util.find_spec(m) is not None for m in ms) for ms in module_sets)
    return None if found else install
