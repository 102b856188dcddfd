"""The model peftkit predict / eval run for an ONNX folder: an ONNX Runtime session behind the
forward() the tasks call (see export/onnx_runtime.py). Imports torch: loaded by onnx_model() only."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from peftkit.errors import PeftkitError


@dataclass
class OnnxOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class OnnxModel(torch.nn.Module):
    """Quacks like the transformers model the graph was exported from, for what peftkit asks of
    one: forward(**tokenizer output) -> .logits (and .loss given labels), .device, .config."""

    accepts_loss_kwargs = False  # the Trainer passes num_items_in_batch only to models that take it

    def __init__(self, session, config, task, output: str = "logits"):
        super().__init__()
        self.session, self.config, self.task, self.output = session, config, task, output
        self.input_names = [i.name for i in session.get_inputs()]

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # inputs go in as host arrays; the provider copies them

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        given = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "token_type_ids": token_type_ids}
        missing = [name for name in self.input_names if given.get(name) is None]
        if missing:
            raise PeftkitError(f"the ONNX graph takes {', '.join(self.input_names)}, but "
                               f"{', '.join(missing)} was not given")
        feeds = {name: given[name].to(torch.int64).cpu().numpy() for name in self.input_names}
        logits = torch.from_numpy(self.session.run([self.output], feeds)[0])
        loss = None if labels is None else self.task.logits_loss(logits, labels, self.config)
        return OnnxOutput(loss=loss, logits=logits)
