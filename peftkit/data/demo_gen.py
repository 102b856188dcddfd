"""A small, embedded data-to-text set that peftkit generates itself (`demo-gen`), shaped like E2E NLG.

Why: `peftkit run recipes/lora_gen.yaml` must fine-tune the packaged SmolLM2-135M offline in minutes
and report BLEU / ROUGE-L that mean something. Each example turns a meaning representation (MR)
about an invented restaurant into one sentence or two:

    mr:  name[The Copper Kettle], eatType[pub], food[Italian], area[riverside], familyFriendly[no]
    ref: The Copper Kettle is an Italian pub in the riverside area. It is not family-friendly.

Like E2E, every MR has several references (two phrasings) and each (mr, ref) pair is one row, so
evaluation groups rows by `mr` and scores a generation against all references of its MR. Part of
the restaurant and landmark names is held out of training (the model must copy unseen names), and
attribute subsets vary (3 to 7 of 8 attributes), so memorising MRs does not help.

Determinism: each split has its own `random.Random` seeded with a string; only tuples are iterated.
Standard library only; `datasets` is imported inside `demo_gen_dataset`.
"""

from __future__ import annotations

import random

DEFAULT_SIZES = {"train": 300, "validation": 20, "test": 40}   # MRs; rows = 2 x MRs


def _words(text: str) -> tuple[str, ...]:
    return tuple(w.strip() for w in text.split("|") if w.strip())


NAMES = _words("The Copper Kettle|Blue Heron|The Olive Grove|Golden Lantern|The Red Fox|Saffron House|"
               "The Mill|Little Harbour|The Wild Thyme|Cotton Tree|The Lemon Tree|Silver Spoon|"
               "The Brass Anchor|Green Door|The Oak Barrel|Maple Corner|The Salt Cellar|Juniper|"
               "The Stone Bridge|Fig and Honey|The Iron Gate|Amber Room|The Velvet Pig|Rosemary|"
               "The Crooked Spire|Pepper Mill|The Tin Cup|Willow Bank|The Night Owl|Cedar Hall|"
               "The Cherry Orchard|Bramble")
NEAR = _words("the Town Hall|Riverside Park|the Old Library|St. Mary's Church|the Museum of Art|"
              "the Central Station|the Market Square|Clifton Bridge|the Botanic Garden|the Castle")
EAT_TYPES = _words("restaurant|pub|coffee shop")
FOODS = _words("Italian|French|Chinese|Indian|Japanese|English|Mexican|Thai")
PRICES = _words("cheap|moderate|high")
AREAS = _words("city centre|riverside")
RATINGS = _words("low|average|high")
FIELDS = ("name", "eatType", "food", "priceRange", "area", "familyFriendly", "near", "customer rating")


def _pools(items):
    return (tuple(x for i, x in enumerate(items) if i % 4 != 3),
            tuple(x for i, x in enumerate(items) if i % 4 == 3))


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def _mr(rng: random.Random, split: str) -> dict[str, str]:
    def pick(items):
        seen, held = _pools(items)
        return rng.choice(held) if split != "train" and rng.random() < 0.5 else rng.choice(seen)

    mr = {"name": pick(NAMES), "eatType": rng.choice(EAT_TYPES)}
    optional = {"food": rng.choice(FOODS), "priceRange": rng.choice(PRICES), "area": rng.choice(AREAS),
                "familyFriendly": rng.choice(("yes", "no")), "near": pick(NEAR),
                "customer rating": rng.choice(RATINGS)}
    keep = rng.sample(FIELDS[2:], rng.randint(1, len(optional)))
    mr.update({k: optional[k] for k in FIELDS[2:] if k in keep})
    return mr


def mr_text(mr: dict[str, str]) -> str:
    return ", ".join(f"{k}[{mr[k]}]" for k in FIELDS if k in mr)


def _head(mr: dict[str, str]) -> str:
    """'a cheap Italian pub' from priceRange, food and eatType."""
    price = {"cheap": "cheap", "moderate": "moderately priced", "high": "expensive"}.get(mr.get("priceRange"))
    words = [w for w in (price, mr.get("food"), mr["eatType"]) if w]
    return f"{_article(words[0])} {' '.join(words)}"


def _references(mr: dict[str, str]) -> tuple[str, str]:
    """Two phrasings of the same facts: a description, and a recommendation-style variant."""
    name, head = mr["name"], _head(mr)
    where = f" in the {mr['area']} area" if "area" in mr else ""
    near = f" near {mr['near']}" if "near" in mr else ""
    score = mr.get("customer rating")
    rating = f" with {_article(score)} {score} customer rating" if score else ""
    friendly = mr.get("familyFriendly")
    family = {"yes": "It is family-friendly.", "no": "It is not family-friendly."}.get(friendly, "")
    first = f"{name} is {head}{where}{near}{rating}. {family}".strip()
    kids = {"yes": " and welcomes children", "no": " and does not welcome children"}.get(friendly, "")
    place = f"{near or where}".strip()
    if place:
        second = f"Located {place}, {name} is {head}{rating}{kids}."
    else:
        second = f"There is {head} called {name}{rating}{kids}."
    return first, second


def generate_demo_gen(seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, list[dict]]:
    """{"train"|"validation"|"test": [{"mr", "ref"}]}: two rows (references) per MR."""
    unknown = sorted(set(sizes or {}) - set(DEFAULT_SIZES))
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; expected {list(DEFAULT_SIZES)}")
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    out = {}
    for split in DEFAULT_SIZES:
        rng = random.Random(f"peftkit-demo-gen/{seed}/{split}")
        rows = []
        for _ in range(sizes[split]):
            mr = _mr(rng, split)
            rows += [{"mr": mr_text(mr), "ref": ref} for ref in _references(mr)]
        out[split] = rows
    return out


def demo_gen_dataset(seed: int = 0, sizes: dict[str, int] | None = None):
    import datasets

    features = datasets.Features({"mr": datasets.Value("string"), "ref": datasets.Value("string")})
    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows, features=features)
                                 for name, rows in generate_demo_gen(seed, sizes).items()})
