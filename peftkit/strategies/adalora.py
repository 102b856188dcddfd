r"""AdaLoRA (Zhang et al. 2023, arXiv:2303.10512) through peft: LoRA in SVD form whose ranks shrink.

    x ──▶ W (frozen) ──────────────────────────────────┐
      └─▶ dropout ─▶ A (r×d) ─▶ ⊙ E (r singular values) ─▶ B (d×r) ─▶ × alpha/r ─▶ + ─▶ y

    budget (sum of kept ranks over all adapted matrices)
      init_r·n ┤‾‾‾‾‾‾\                      cubic decay between tinit and total_step - tfinal;
               │       ‾‾\_                  every deltaT steps the least important singular
     target_r·n┤           ‾‾‾‾‾‾‾‾‾‾‾‾      values (|w·grad| smoothed, times its uncertainty)
               └──tinit─────────tfinal──▶    are zeroed so that the kept total equals the budget

The allocator needs the gradients of the step just taken, so `update_and_allocate` runs from the
Trainer's `on_optimizer_step` event: after `optimizer.step()`, before `model.zero_grad()` (the
order in transformers' Trainer inner loop, and the call site in peft's AdaLoRA docstring/example).

Checkpoints (peftkit.callbacks.CheckpointExtras asks the strategy): the allocator's importance
averages and the rank pattern are training state the Trainer does not save, so they go into
peftkit_state.pt. peft saves an AdaLoRA adapter with a rank pattern set *resized* to the kept
ranks, which the resumed (full-size) model cannot load; while the Trainer writes a checkpoint the
pattern is set aside, so the checkpoint holds the full-size masked weights, and put back after.
"""

from __future__ import annotations

from peftkit.errors import PeftkitError
from peftkit.output import warn
from peftkit.strategies.peft_base import PeftStrategy, heads_to_save, target_modules, task_type


def schedule_steps(value: float, total: int) -> int:
    """tinit / tfinal: a value below 1 is a share of the run's steps, otherwise a step count."""
    return int(round(value * total)) if value < 1 else int(round(value))


ALLOCATOR_STATE = ("ipt", "exp_avg_ipt", "exp_avg_unc")  # RankAllocator's importance averages


class AdaLoraStrategy(PeftStrategy):
    name = "adalora"
    can_merge = True
    weighted_refusal = "peft has no weighted combination of AdaLoRA adapters"
    plot_markers = {"adalora": "^"}

    def adds_to_model_loss(self, cfg) -> bool:
        return cfg.orth_reg_weight > 0   # peft adds it to outputs.loss only

    def peft_config(self, model, cfg, ctx):
        from peft import AdaLoraConfig

        total = cfg.total_step or ctx.total_steps
        if total < 2:
            raise PeftkitError("adalora: the run has fewer than 2 optimizer steps, so there is no "
                               "budget schedule; train longer or set strategy.total_step")
        tinit, tfinal = schedule_steps(cfg.tinit, total), schedule_steps(cfg.tfinal, total)
        if tinit + tfinal >= total:
            raise PeftkitError(f"adalora: strategy.tinit ({tinit} steps) + strategy.tfinal ({tfinal} "
                               f"steps) leave no budgeting phase in {total} steps; lower them (values "
                               "below 1 are shares of the run, e.g. tinit: 0.1, tfinal: 0.4)")
        return AdaLoraConfig(task_type=task_type(ctx), init_r=cfg.init_r, target_r=cfg.target_r,
                             lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                             target_modules=target_modules(cfg.target_modules), tinit=tinit,
                             tfinal=tfinal, deltaT=cfg.deltaT, beta1=cfg.beta1, beta2=cfg.beta2,
                             orth_reg_weight=cfg.orth_reg_weight, total_step=total,
                             modules_to_save=heads_to_save(model, ctx))

    def callbacks(self, model, cfg, ctx) -> list:
        return [budget_callback(model)]

    def save(self, model, folder, cfg=None) -> None:
        if cfg is not None:  # the budget callback zeroed it for the final evaluation
            model.peft_config[model.active_adapter].orth_reg_weight = cfg.orth_reg_weight
        import warnings

        with warnings.catch_warnings():
            # peft prunes the saved A/B/E to the kept ranks (rank_pattern); a matrix whose every
            # rank was pruned is saved 0-sized, which peft's check for ungathered ZeRO-3 / FSDP
            # shards takes for one (peftkit saves gathered weights: distributed.save_weights)
            warnings.filterwarnings("ignore", message=r"Adapter .*LoRA tensor\(s\) have invalid shape")
            super().save(model, folder)

    def load(self, load_base, folder, cfg, ctx):
        import warnings

        with warnings.catch_warnings():
            # peft checks AdaLoRA's rank_pattern keys (`...query.lora_E`) against module names as if
            # they were LoRA's, warns that they "did not match", then resizes by them correctly
            warnings.filterwarnings("ignore", message="The following rank_pattern keys")
            model = super().load(load_base, folder, cfg, ctx)
        # peft reads trainable_adapter_name in every forward with labels, but sets it only when an
        # adapter is trainable; an inference-only model needs no regulariser in its loss
        model.base_model.trainable_adapter_name = model.active_adapter
        model.peft_config[model.active_adapter].orth_reg_weight = 0.0
        return model

    def report(self, model) -> dict:
        ranks = effective_ranks(model)
        config = model.peft_config[model.active_adapter]
        return {"adalora": {"init_r": config.init_r, "target_r": config.target_r,
                            "total_step": config.total_step, "budget": sum(ranks.values()),
                            "init_budget": config.init_r * len(ranks),
                            "target_budget": config.target_r * len(ranks), "ranks": ranks}}

    # ---- checkpoints (module docstring)

    def set_aside_for_checkpoint(self, model):
        config = training_config(model)
        if config is None or config.rank_pattern is None:
            return None
        pattern, config.rank_pattern = config.rank_pattern, None
        return pattern

    def put_back_after_checkpoint(self, model, taken) -> None:
        config = training_config(model)
        if config is not None:
            config.rank_pattern = taken

    def checkpoint_state(self, model) -> dict | None:
        config = training_config(model)
        if config is None:
            return None
        alloc = model.base_model.rankallocator
        return {"rank_pattern": config.rank_pattern, **{k: getattr(alloc, k) for k in ALLOCATOR_STATE}}

    def restore_checkpoint_state(self, model, saved, folder) -> None:
        config = training_config(model)
        if config is None:
            return
        if saved is None:
            warn(f"{folder} has no peftkit_state.pt; AdaLoRA's importance scores restart "
                  "from zero, so the resumed run will differ slightly from an uninterrupted one")
            return
        alloc = model.base_model.rankallocator
        device = next(model.parameters()).device
        for key in ALLOCATOR_STATE:
            setattr(alloc, key, {n: t.to(device) for n, t in saved[key].items()})
        config.rank_pattern = saved["rank_pattern"]


def training_config(model):
    """The peft config of an AdaLoRA model being trained (it has a rank allocator), else None."""
    tuner = getattr(model, "base_model", None)
    if model is None or not hasattr(tuner, "rankallocator"):
        return None
    return model.peft_config[tuner.trainable_adapter_name]


def effective_ranks(model) -> dict[str, int]:
    """Kept rank of every adapted matrix: the non-zero singular values E (pruned ones are zeroed)."""
    name = model.active_adapter
    return {n.replace(f".lora_E.{name}", "").removeprefix("base_model.model."):
            int((p.detach() != 0).sum())
            for n, p in model.named_parameters() if f"lora_E.{name}" in n}


def budget_callback(model):
    """A TrainerCallback that runs AdaLoRA's rank allocation after every optimizer step."""
    from transformers import TrainerCallback

    class AdaLoraBudget(TrainerCallback):
        def __init__(self):
            self.history: list[tuple[int, int, int]] = []  # (step, scheduled budget, kept ranks)

        def on_optimizer_step(self, args, state, control, **kwargs):
            # state.global_step is still the index of the step just taken (0-based), as in peft's
            # example loop: optimizer.step(); update_and_allocate(global_step); zero_grad(); += 1
            tuner = model.base_model
            tuner.update_and_allocate(state.global_step)
            budget, _ = tuner.rankallocator.budget_schedule(state.global_step)
            self.history.append((state.global_step, budget, sum(effective_ranks(model).values())))

        def on_train_end(self, args, state, control, **kwargs):
            # the final evaluation reports the task's loss (perplexity!), not loss + regulariser;
            # save(model, folder, cfg) puts the recipe's weight back into the adapter config
            model.peft_config[model.active_adapter].orth_reg_weight = 0.0
            if state.is_world_process_zero and not any(effective_ranks(model).values()):
                # peft prunes every triplet whose score ties the threshold: on a very short run
                # the scores are all still zero, and the adapter ends empty (only the head trains)
                warn("adalora pruned every rank, so the adapter is empty and only the "
                      "head learned; train longer (more steps) or lower strategy.tinit")

    return AdaLoraBudget()


STRATEGY = AdaLoraStrategy()
