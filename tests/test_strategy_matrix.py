"""Every strategy on every task: ONE list of (strategy, task) cases through shared checks.

Each case runs the pipeline's own pieces (recipe -> load_raw -> encode -> load_model ->
strategy.apply -> build_trainer -> Trainer.train -> strategy.save / strategy.load) on the tiny
BERT / Llama models of conftest.py, with a handful of optimizer steps on 16 examples.
Checks: only the intended parameters train, in the number the strategy's formula gives; step 0
reproduces the base where the method's init promises it; training changes outputs and lowers
the loss; padding never changes the real tokens' outputs; save -> load in a fresh model gives
identical outputs; merging folds the trained update exactly (or refuses with a clear error);
causal-LM loss covers completion tokens only and left-padded batched generation works through
every strategy; AdaLoRA's kept ranks follow its budget schedule down to target_r.
Sequence classification uses the tiny BERT with sharpened attention (see sharp_bert_dir).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
import torch

from peftkit.strategies import get_strategy
from peftkit.strategies.base import ApplyContext, count_parameters

TOK, SEQ, CLM = "token-classification", "sequence-classification", "causal-lm"
DATA = {TOK: "demo-ner", SEQ: "demo-sentiment", CLM: "demo-gen"}
STEPS = 12


@dataclass(frozen=True)
class Case:
    id: str
    strategy: str
    task: str
    lr: float
    settings: dict = field(default_factory=dict, hash=False)
    identity: bool = False      # the method's init leaves the base model's outputs unchanged

    def __str__(self):
        return f"{self.id}-{self.task.split('-')[0]}"


ADALORA = {"init_r": 6, "target_r": 2, "tinit": 2, "tfinal": 3, "deltaT": 1}
HOULSBY = {"placement": "houlsby", "bottleneck_size": 4}
PFEIFFER = {"placement": "pfeiffer", "bottleneck_size": 4}
PREFIX = {"num_virtual_tokens": 3, "reparameterize": True, "hidden_size": 8}
CASES = [
    Case("full", "full", TOK, 1e-3, identity=True),
    Case("full", "full", CLM, 1e-3, identity=True),
    *[Case("lora", "lora", t, 1e-2, {"r": 4}, identity=True) for t in (TOK, SEQ, CLM)],
    *[Case("dora", "lora", t, 1e-2, {"r": 4, "use_dora": True}, identity=True) for t in (TOK, CLM)],
    *[Case("adalora", "adalora", t, 2e-2 if t != CLM else 5e-2, ADALORA, identity=True)
      for t in (TOK, SEQ, CLM)],
    *[Case("adapter_houlsby", "adapter", t, 1e-2, HOULSBY, identity=True) for t in (TOK, SEQ, CLM)],
    Case("adapter_pfeiffer", "adapter", TOK, 1e-2, PFEIFFER, identity=True),
    *[Case("prefix", "prefix", t, 1e-2, PREFIX) for t in (TOK, SEQ, CLM)],
    # a random tiny Llama predicts near-uniformly (loss ~ ln 400): scaling vectors and soft prompts
    # need a larger step there to move it measurably in 12 steps (and 3 soft tokens a larger one
    # than 1e-2 to move the sharpened BERT's [CLS])
    *[Case("ia3", "ia3", t, 3e-2 if t != CLM else 2e-1, identity=True) for t in (TOK, SEQ, CLM)],
    *[Case("prompt", "prompt", t, {TOK: 1e-2, SEQ: 3e-2, CLM: 2e-1}[t], {"num_virtual_tokens": 3})
      for t in (TOK, SEQ, CLM)],
]
# trainable parameter names per strategy (task heads match HEAD)
HEAD = re.compile(r"(^|\.)(classifier|score)(\.|$)")
TRAINS = {"lora": r"\.lora_(A|B|magnitude_vector)\.", "adalora": r"\.lora_(A|B|E)\.",
          "adapter": r"\.adapter\.(down|up)\.",
          "prefix": r"(prefix_key|prefix_value|peftkit_prefix_encoder\.)",
          "ia3": r"\.ia3_l\.", "prompt": r"^prompt_encoder\.", "full": r"."}


# ---------------------------------------------------------------- building blocks

class TaskEnv:
    """Data, tokenizer and labels of one task, encoded once per session by the pipeline's code."""

    def __init__(self, task_name: str, model_dir):
        from peftkit.data.readers import load_raw
        from peftkit.models import load_tokenizer, source_of
        from peftkit.tasks import get_task

        self.model_dir = model_dir
        recipe = self.recipe(Case("lora", "lora", task_name, 1e-2))
        self.task = get_task(task_name)
        raw = load_raw(recipe, self.task)
        self.labels = self.task.label_names(raw, recipe)
        self.source = source_of(recipe)
        self.tokenizer = load_tokenizer(self.source, recipe)
        self.encoded, _ = self.task.encode(raw, self.tokenizer, recipe, self.labels)
        self.collate = self.task.collator(self.tokenizer)
        self.batch = self.collate([self.encoded["train"][i] for i in range(8)])

    def recipe(self, case: Case):
        from peftkit.recipe import build_recipe

        return build_recipe({
            "task": case.task, "model": {"name": str(self.model_dir)},
            "strategy": {"name": case.strategy, **case.settings},
            "data": {"name": DATA[case.task], "max_length": 48, "max_train_samples": 16,
                     "max_eval_samples": 8, "max_test_samples": 8},
            "train": {"max_steps": STEPS, "batch_size": 8, "learning_rate": case.lr, "warmup": 0,
                      "lr_scheduler": "constant", "precision": "fp32", "eval_every": "no",
                      "logging_steps": 1, "group_by_length": False, "save_steps": 10 * STEPS},
            "eval": {"max_new_tokens": 5}})

    def base_model(self, recipe, path=None):
        from peftkit.models import load_model

        torch.manual_seed(0)   # the same fresh head every time
        return load_model(self.source, recipe, self.task, self.labels, path=path)


def outputs(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits.float()


def loss_of(model, batch) -> float:
    """The task loss (AdaLoRA's peft wrapper would add its orthogonality regulariser)."""
    model.eval()
    if type(getattr(model, "base_model", None)).__name__ == "AdaLoraModel":
        model = model.base_model.model
    with torch.no_grad():
        return float(model(**batch).loss)


@dataclass
class Trained:
    case: Case
    env: TaskEnv
    recipe: object
    ctx: ApplyContext
    model: object
    base: torch.Tensor          # base model outputs on env.batch
    step0: torch.Tensor         # outputs right after apply
    trainable_at_apply: int
    names_at_apply: list
    loss_before: float
    loss_after: float
    callbacks: list


_ENVS: dict = {}
_TRAINED: dict = {}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run several times faster on one thread than on two busy shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sharp_bert_dir(tiny_bert_dir, tmp_path_factory):
    """The tiny BERT with sharpened attention, for sequence classification.

    Random init gives near-uniform attention, so [CLS] (all a classifier sees, through the frozen
    pooler) hardly depends on the sentence: its spread over inputs is ~1e-3 and no method learns in
    a few steps. Query/key x30 and value/output x8 make [CLS] read the input (spread ~0.2), and an
    identity pooler passes that on, as a pretrained encoder and pooler do.
    """
    from transformers import AutoTokenizer, BertModel

    folder = tmp_path_factory.mktemp("sharp-bert")
    torch.manual_seed(0)
    model = BertModel.from_pretrained(tiny_bert_dir)   # with a pooler, which the fixture lacks
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("query.weight", "key.weight")):
                p.mul_(30)
            elif name.endswith(("value.weight", "attention.output.dense.weight")):
                p.mul_(8)
        model.pooler.dense.weight.copy_(torch.eye(model.config.hidden_size))
        model.pooler.dense.bias.zero_()
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(folder)
    return folder


@pytest.fixture
def trained(request, tiny_bert_dir, sharp_bert_dir, tiny_llama_dir, tmp_path_factory):
    """The case trained for STEPS optimizer steps through the Trainer (cached per session)."""
    case: Case = request.param
    if case not in _TRAINED:
        if case.task not in _ENVS:
            model_dir = {TOK: tiny_bert_dir, SEQ: sharp_bert_dir, CLM: tiny_llama_dir}[case.task]
            _ENVS[case.task] = TaskEnv(case.task, model_dir)
        _TRAINED[case] = train_case(case, _ENVS[case.task], tmp_path_factory.mktemp(str(case)))
    return _TRAINED[case]


def train_case(case: Case, env: TaskEnv, run_dir) -> Trained:
    from peftkit.train import build_trainer, total_train_steps

    recipe = env.recipe(case)
    strategy = get_strategy(case.strategy)
    ctx = ApplyContext(task=env.task, head_names=env.task.head_names, tokenizer=env.tokenizer,
                       total_steps=total_train_steps(recipe, len(env.encoded["train"])))
    model = env.base_model(recipe)
    base = outputs(model, env.batch)
    torch.manual_seed(2)   # adapter inits draw from the global RNG: the same whatever ran before
    model = strategy.apply(model, recipe.strategy, ctx)
    step0 = outputs(model, env.batch)
    trainable = count_parameters(model)[0]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    before = loss_of(model, env.batch)
    callbacks = strategy.callbacks(model, recipe.strategy, ctx)
    trainer = build_trainer(recipe, model, env.tokenizer, env.task, env.encoded, env.labels, run_dir,
                            "fp32", callbacks)
    trainer.train()
    assert trainer.state.global_step == STEPS
    return Trained(case, env, recipe, ctx, model, base, step0, trainable, names, before,
                   loss_of(model, env.batch), callbacks)


def expected_trainable(case: Case, config, n_labels: int) -> int:
    """The parameter count each method's paper / peft's layer code implies, from the config alone."""
    h, n, inner = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    kv_dim = kv * h // config.num_attention_heads        # width of k_proj / v_proj outputs
    head = 0 if case.task == CLM else h * n_labels + n_labels
    s = case.settings
    targets = [(h, h), (h, kv_dim)]                      # peft defaults: query/value, q_proj/v_proj
    if case.id in ("lora", "dora"):
        per = sum(s["r"] * (i + o) + (o if s.get("use_dora") else 0) for i, o in targets)
    elif case.strategy == "adalora":
        per = sum(s["init_r"] * (i + o + 1) for i, o in targets)   # A, B and the singular values E
    elif case.strategy == "adapter":
        b = s["bottleneck_size"]
        per = (2 if s["placement"] == "houlsby" else 1) * (h * b + b + b * h + h)
    elif case.strategy == "ia3":
        per = 2 * kv_dim + inner                         # keys, values, feed-forward inner activation
    elif case.strategy == "prefix":
        p, m, d = s["num_virtual_tokens"], s["hidden_size"], n * 2 * kv_dim
        return p * h + (h * m + m) + (m * d + d) + head  # embedding + reparameterisation MLP
    elif case.strategy == "prompt":
        return s["num_virtual_tokens"] * h + head
    else:
        raise AssertionError(case)
    return n * per + head


# ---------------------------------------------------------------- shared checks

@pytest.mark.parametrize("trained", CASES, ids=str, indirect=True)
def test_only_intended_parameters_train_and_count_matches_formula(trained):
    case, model = trained.case, trained.model
    if case.strategy == "full":
        assert trained.trainable_at_apply == count_parameters(model)[1]
        return
    pattern = re.compile(TRAINS[case.strategy])
    wrong = [n for n in trained.names_at_apply if not (pattern.search(n) or HEAD.search(n))]
    assert not wrong, f"unexpected trainable parameters: {wrong[:5]}"
    config = trained.env.base_model(trained.recipe).config
    n_labels = len(trained.env.labels or [])
    assert trained.trainable_at_apply == expected_trainable(case, config, n_labels)


@pytest.mark.parametrize("trained", [c for c in CASES if c.identity], ids=str, indirect=True)
def test_step_zero_reproduces_the_base_model(trained):
    torch.testing.assert_close(trained.step0, trained.base, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("trained", CASES, ids=str, indirect=True)
def test_training_changes_outputs_and_lowers_the_loss(trained):
    after = outputs(trained.model, trained.env.batch)
    assert not torch.allclose(after, trained.step0, atol=1e-4)
    assert trained.loss_after < trained.loss_before - 2e-3, (trained.loss_before, trained.loss_after)


@pytest.mark.parametrize("trained", CASES, ids=str, indirect=True)
def test_padding_does_not_change_real_token_outputs(trained):
    env = trained.env
    long = env.encoded["test"][0]
    half = len(long["input_ids"]) // 2   # the same example cut in half: sure to be shorter
    short = {k: (v[:half] if isinstance(v, list) and len(v) == len(long["input_ids"]) else v)
             for k, v in long.items()}
    alone = outputs(trained.model, env.collate([short]))[0]
    padded = outputs(trained.model, env.collate([short, long]))[0]
    if env.task.name != SEQ:   # per-token outputs, right-padded: the first positions are the real ones
        padded = padded[:alone.shape[0]]
    torch.testing.assert_close(padded, alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("trained", CASES, ids=str, indirect=True)
def test_save_then_load_in_a_fresh_model_gives_identical_outputs(trained, tmp_path):
    strategy = get_strategy(trained.case.strategy)
    strategy.save(trained.model, tmp_path / "saved")
    expected = outputs(trained.model, trained.env.batch)   # after save (prefix folds its MLP there)
    fresh_base = lambda path=None: trained.env.base_model(trained.recipe, path)  # noqa: E731
    reloaded = strategy.load(fresh_base, tmp_path / "saved", trained.recipe.strategy, trained.ctx)
    torch.testing.assert_close(outputs(reloaded, trained.env.batch), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("trained", [c for c in CASES if c.task == CLM], ids=str, indirect=True)
def test_causal_lm_loss_covers_completion_tokens_only_and_generation_works(trained):
    from peftkit.tasks.causal_lm import IGNORE, generate

    env, model = trained.env, trained.model
    batch = env.batch
    labels = batch["labels"]
    prompt_lengths = [r["prompt_length"] for r in (env.encoded["train"][i] for i in range(8))]
    assert all((labels[i, :n] == IGNORE).all() for i, n in enumerate(prompt_lengths))
    model.eval()
    with torch.no_grad():
        out = model(**batch)
        logits = out.logits[:, -labels.shape[1]:].float()   # prompt tuning prepends virtual positions
        manual = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                   labels[:, 1:].reshape(-1), ignore_index=IGNORE)
        extra = 0.0
        if trained.case.strategy == "adalora":   # peft adds the orthogonality regulariser to the loss
            extra = float(out.loss) - float(model.base_model.model(**batch).loss)
    assert float(out.loss) - extra == pytest.approx(float(manual), rel=1e-5)

    rows = [env.encoded["test"][i] for i in range(3)]
    prompts = [r["input_ids"][:r["prompt_length"]] for r in rows]
    together = generate(model, env.tokenizer, prompts, trained.recipe)        # left-padded batch
    apart = [generate(model, env.tokenizer, [p], trained.recipe)[0] for p in prompts]
    assert together == apart and all(isinstance(t, str) for t in together)


@pytest.mark.parametrize("trained", [c for c in CASES if c.strategy == "adalora"], ids=str, indirect=True)
def test_adalora_ranks_shrink_on_the_budget_schedule(trained):
    (callback,) = trained.callbacks
    report = get_strategy("adalora").report(trained.model)["adalora"]
    init_r, target_r = ADALORA["init_r"], ADALORA["target_r"]
    assert report["total_step"] == STEPS
    assert all(r <= init_r for r in report["ranks"].values())
    assert report["budget"] == report["target_budget"] == target_r * len(report["ranks"])
    assert report["target_budget"] < report["init_budget"]
    tinit, final = ADALORA["tinit"], STEPS - ADALORA["tfinal"]
    budgets = [b for _, b, _ in callback.history]
    assert [s for s, _, _ in callback.history] == list(range(STEPS))   # once per optimizer step
    assert budgets == sorted(budgets, reverse=True) and budgets[0] == report["init_budget"]
    for step, budget, kept in callback.history:
        if step <= tinit:            # warm-up: nothing pruned yet
            assert kept == report["init_budget"]
        else:                        # every step here is an allocation step (deltaT = 1)
            assert kept == budget, (step, budget, kept)
        if step >= final:
            assert budget == report["target_budget"]


@pytest.mark.parametrize("trained", CASES, ids=str, indirect=True)
def test_merge_folds_the_trained_update_exactly_or_refuses_clearly(trained):
    import copy

    from peftkit.errors import PeftkitError

    strategy = get_strategy(trained.case.strategy)
    model = copy.deepcopy(trained.model)   # merging rewrites weights; keep the cached model intact
    expected = outputs(model, trained.env.batch)
    if not (strategy.can_merge or strategy.name == "full"):
        with pytest.raises(PeftkitError, match="cannot be merged"):
            strategy.merge(model)
        return
    merged = strategy.merge(model)
    assert not [n for n, _ in merged.named_parameters() if re.search(r"lora_|ia3_l|modules_to_save", n)]
    torch.testing.assert_close(outputs(merged, trained.env.batch), expected, atol=1e-4, rtol=1e-4)
