"""Running under torchrun / accelerate launch: one writer for the run folder, collectives, and
saving sharded weights.

peftkit never implements its own distribution. The Trainer (through accelerate) wraps the model in
DDP, or FSDP / DeepSpeed from an accelerate config, shards the training batches and gathers the
evaluation outputs (dropping the samples repeated to even out the last batch). What is left here
is keeping the run folder single-writer:

    every rank                                   rank 0 (main)
    ─────────────────────────────────────        ──────────────────────────────────────────
    init(): process group up before the Trainer
    main_first(prepare) · · · waits · · ·  ───▶  check / create / clean the run folder,
          ◀─── state + checkpoint (or the error) choose the checkpoint to resume
    data, model, strategy                        recipe.yaml
    Trainer: train + evaluate (collectives)      metrics.jsonl, checkpoints (the Trainer's rank 0)
    barrier() · · · waits · · · · · · · · · ◀──  adapter/, labels.json, result.json
    return                                       print the summary

Who is who (rank, world size) is peftkit.env's; starting the processes (`--nproc`) is
peftkit.launch's. Torch is imported inside the functions that need it.
"""

from __future__ import annotations

import pickle
from datetime import timedelta

from peftkit import rundir
from peftkit.env import is_main, world_size
from peftkit.errors import UsageError

DDP_TIMEOUT = timedelta(seconds=1800)  # TrainingArguments.ddp_timeout's default


def _ready() -> bool:
    if world_size() < 2:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def init() -> None:
    """Start the process group now, as the Trainer would later (accelerate's PartialState: gloo on
    CPU, NCCL on GPUs, DeepSpeed's when accelerate launch says so), so the ranks can coordinate
    before the Trainer exists. The Trainer then finds it initialised and uses it."""
    if world_size() < 2:
        return
    import torch
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available(), timeout=DDP_TIMEOUT)
    if not is_main():  # one progress display, not one per process
        import datasets

        datasets.disable_progress_bars()


def main_first(fn):
    """fn() on the main process only; every rank returns its value, or raises its error (on the
    other ranks marked `relayed`, so the CLI prints it once)."""
    if not _ready():
        return fn()
    import torch.distributed as dist

    box = [None]
    if is_main():
        try:
            box[0] = ("ok", fn())
        except Exception as exc:  # noqa: BLE001 - every rank must learn of it, or they hang
            box[0] = ("error", exc if picklable(exc) else RuntimeError(f"{type(exc).__name__}: {exc}"))
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        value.relayed = True
        raise value
    return value


def picklable(obj) -> bool:
    """Survives the trip to the other processes (an exception with a custom __init__ may not)."""
    try:
        pickle.loads(pickle.dumps(obj))
    except Exception:  # noqa: BLE001 - any failure means "send a plain copy instead"
        return False
    return True


def barrier() -> None:
    """Wait for every rank (here: until the main process has finished writing the run folder)."""
    if _ready():
        import torch.distributed as dist

        dist.barrier()


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum over the ranks (token counts of each rank's share of the batches)."""
    if not _ready():
        return list(values)
    import torch
    import torch.distributed as dist

    device = (torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl"
              else torch.device("cpu"))  # NCCL reduces CUDA tensors only
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


# ---------------------------------------------------------------- sharded engines (accelerate config)

def sharded(trainer) -> bool:
    """FSDP, or DeepSpeed ZeRO-3: each process holds only a shard of every weight. (DDP and
    ZeRO-1/2 keep whole weights in every process.)"""
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return getattr(trainer, "is_deepspeed_enabled", False) and getattr(plugin, "zero_stage", 0) == 3


def check_engine(trainer, strategy) -> None:
    """Before training: strategies saved in peftkit's own format read their parameters one by one,
    which FSDP / ZeRO-3 have cut into shards; they are small, so DDP is the engine for them."""
    if sharded(trainer) and not strategy.saved_by_save_pretrained:
        raise UsageError(f"strategy {strategy.name!r} under FSDP / DeepSpeed ZeRO-3 is not "
                         "supported: its adapter is saved from the unsharded parameters. Launch it "
                         "with DDP (recipes/accelerate/ddp_gpu.yaml, or --nproc) or ZeRO-2")


def save_weights(trainer, run_dir, strategy, tokenizer, labels, cfg=None):
    """adapter/ (or model/) written by the main process; returns its path there, None elsewhere.

    Under FSDP / ZeRO-3 every process first takes part in gathering the full state dict (as the
    Trainer's own save_model does: FSDP needs fsdp_state_dict_type FULL_STATE_DICT, ZeRO-3
    stage3_gather_16bit_weights_on_model_save), then the main process writes it."""
    if not sharded(trainer):
        return (rundir.save_weights(run_dir, strategy, trainer.model, tokenizer, labels, cfg)
                if is_main() else None)
    engine = trainer.deepspeed if getattr(trainer, "is_deepspeed_enabled", False) else trainer.model
    state_dict = trainer.accelerator.get_state_dict(engine)  # collective: every process
    if not is_main():
        return None
    model = trainer.accelerator.unwrap_model(trainer.model)
    # the full state dict gathered from every process (save_pretrained takes it as `state_dict`)
    def write(folder):
        model.save_pretrained(str(folder), state_dict=state_dict)

    return rundir.save_weights(run_dir, strategy, model, tokenizer, labels, write=write)
