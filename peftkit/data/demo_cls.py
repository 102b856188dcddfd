"""A small, embedded sentiment-classification set that peftkit generates itself (`demo-sentiment`).

Why: `peftkit run recipes/lora_sentiment.yaml` must run offline in minutes on two CPU cores and
still report an accuracy that means something. Reviews are built from peftkit's own templates and
word lists; every sentence is labelled "negative" or "positive".

What keeps it from being a word-lookup task:
  * Negation flips a word's polarity ("was not great", "hardly reliable").
  * Contrast decides by the second clause ("the screen was sharp, but the battery was awful";
    "although the plot was dull, the acting was superb"), so both polarities occur in one sentence.
  * Every 4th sentiment word is held out of training; validation and test draw from the held-out
    part often, measuring how far a pretrained encoder generalises to unseen words.
  * The label is drawn first (balanced classes), then a sentence that expresses it.

Determinism: each split has its own `random.Random` seeded with a string; only tuples are iterated.
Standard library only; `datasets` is imported inside `demo_sentiment_dataset`.
"""

from __future__ import annotations

import random

LABELS = ("negative", "positive")
DEFAULT_SIZES = {"train": 2000, "validation": 300, "test": 300}
HELDOUT_RATE = 0.4


def _words(text: str) -> tuple[str, ...]:
    return tuple(w.strip() for w in text.split("|") if w.strip())


POSITIVE = _words("great|excellent|wonderful|superb|delightful|reliable|charming|brilliant|"
                  "fantastic|lovely|impressive|friendly|solid|pleasant|outstanding|enjoyable|"
                  "terrific|flawless|gorgeous|generous|tasty|smooth|fresh|sharp")
NEGATIVE = _words("awful|terrible|dull|disappointing|broken|rude|bland|horrible|mediocre|"
                  "sloppy|noisy|boring|clumsy|poor|dreadful|unreliable|tedious|stale|flimsy|"
                  "overpriced|greasy|slow|cramped|annoying")
SUBJECTS = _words("the battery|the service|the film|the soundtrack|the staff|the pasta|the screen|"
                  "the plot|the hotel room|the acting|the camera|the coffee|the delivery|the app|"
                  "the keyboard|the ending|the waiter|the dessert|the sound|the design|the seats|"
                  "the menu|the ticket price|the support team")
PRODUCTS = _words("phone|restaurant|movie|laptop|hotel|album|game|cafe|headset|show")
INTENSIFIERS = _words("|really|very|truly|quite|absolutely|rather")
NEGATORS = _words("not|never|hardly|not at all")  # "not at all" is placed before the adjective too
OPENERS = _words("|Honestly ,|Overall ,|To be fair ,|In short ,|Sadly ,|Luckily ,")

# templates: {S}=subject, {A}=adjective carrying the label, {B}=adjective of opposite polarity,
# {N}=negator, {I}=intensifier, {P}=product. The flag says whether {A}'s polarity is negated.
TEMPLATES = (
    ("{S} was {I} {A} .", False),
    ("I found {S} {I} {A} .", False),
    ("{S} is {A} and {S} is {I} {A} .", False),
    ("{S} was {N} {A} .", True),
    ("{S} is {N} {I} {A} , to be honest .", True),
    ("{S} was {B} , but {S} was {I} {A} .", False),
    ("although {S} was {B} , {S} was {A} .", False),
    ("I expected {S} to be {B} , but it was {A} .", False),
    ("{S} looked {B} at first , yet it turned out {A} .", False),
    ("this {P} is {A} .", False),
    ("what a {A} {P} .", False),
    ("the {P} was {N} {A} , and {S} was {N} {A} either .", True),
)
RECOMMEND = (("I would definitely recommend this {P} .", "positive"),
             ("I would never recommend this {P} .", "negative"),
             ("I can not recommend this {P} enough .", "positive"),
             ("I will not come back to this {P} .", "negative"),
             ("I would buy this {P} again .", "positive"),
             ("I want my money back for this {P} .", "negative"))


def _pools(items: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(train part, held-out part): every 4th word is held out of training."""
    return (tuple(x for i, x in enumerate(items) if i % 4 != 3),
            tuple(x for i, x in enumerate(items) if i % 4 == 3))


class _Sampler:
    def __init__(self, rng: random.Random, split: str):
        self.rng, self.eval = rng, split != "train"

    def word(self, polarity: str) -> str:
        seen, held = _pools(POSITIVE if polarity == "positive" else NEGATIVE)
        if self.eval and self.rng.random() < HELDOUT_RATE:
            return self.rng.choice(held)
        return self.rng.choice(seen)

    def fill(self, template: str, a_polarity: str) -> str:
        other = LABELS[1 - LABELS.index(a_polarity)]
        out = []
        for token in template.split():
            out.append({"{S}": lambda: self.rng.choice(SUBJECTS), "{A}": lambda: self.word(a_polarity),
                        "{B}": lambda: self.word(other), "{I}": lambda: self.rng.choice(INTENSIFIERS),
                        "{N}": lambda: self.rng.choice(NEGATORS),
                        "{P}": lambda: self.rng.choice(PRODUCTS)}.get(token, lambda: token)())
        return " ".join(w for w in " ".join(out).split())


def _sentence(rng: random.Random, sampler: _Sampler) -> dict[str, str]:
    label = rng.choice(LABELS)
    if rng.random() < 0.1:
        template = rng.choice([t for t, lab in RECOMMEND if lab == label])
        text = sampler.fill(template, label)
    else:
        template, negated = rng.choice(TEMPLATES)
        a_polarity = LABELS[1 - LABELS.index(label)] if negated else label
        text = sampler.fill(template, a_polarity)
    opener = rng.choice(OPENERS)
    text = f"{opener} {text}".strip()
    return {"sentence": text[0].upper() + text[1:], "label": label}


def generate_demo_sentiment(seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, list[dict]]:
    """{"train"|"validation"|"test": [{"sentence", "label"}]}; each split has its own stream."""
    unknown = sorted(set(sizes or {}) - set(DEFAULT_SIZES))
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; expected {list(DEFAULT_SIZES)}")
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    out = {}
    for split in DEFAULT_SIZES:
        rng = random.Random(f"peftkit-demo-sentiment/{seed}/{split}")
        sampler = _Sampler(rng, split)
        out[split] = [_sentence(rng, sampler) for _ in range(sizes[split])]
    return out


def demo_sentiment_dataset(seed: int = 0, sizes: dict[str, int] | None = None):
    import datasets

    features = datasets.Features({"sentence": datasets.Value("string"), "label": datasets.Value("string")})
    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows, features=features)
                                 for name, rows in generate_demo_sentiment(seed, sizes).items()})
