"""peftkit: parameter-efficient fine-tuning recipes on top of transformers and peft.

Importing this package is cheap on purpose: torch, transformers and peft are imported
only inside the functions that need them, so `peftkit --help` and `peftkit validate`
start instantly.
"""

__version__ = "0.1.0"

from peftkit.quantization import quiet_bitsandbytes  # noqa: E402 - logging only, no torch

quiet_bitsandbytes()  # before anything imports bitsandbytes (peft does): see quantization.py
