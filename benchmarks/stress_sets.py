"""Stress data sets derived from ../shared/data at bench time (issue 15), never committed.

Each set stresses one default the way a new user's data does:

    conll-1k       CoNLL-2003, 1,000 training sentences (a seeded sample): little data
    conll-sparse   CoNLL-2003, 1,500 sentences, only MISC kept, other entities O (98% of tokens O)
    sst2-500       SST-2, 500 training sentences
    sst2-imbalanced SST-2, 900 positive + 100 negative training sentences (90/10), balanced test
    e2e-food       1,000 E2E NLG references labelled with their meaning representation's food (7 classes)
    e2e-small      E2E NLG, 300 references for causal LM

    python benchmarks/stress_sets.py OUT_DIR [--data ../shared/data]    # writes OUT_DIR/<set>/

Validation sets are drawn from the training file (never from the test split); test sets are the
shipped dev/test files, sampled with a fixed seed where they are large.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
from pathlib import Path

SEED = 13
NER, CLS, GEN = "token-classification", "sequence-classification", "causal-lm"


def read_conll(path: Path) -> list[list[tuple[str, str]]]:
    sentences, current = [], []
    for line in path.read_text(encoding="utf-8").split("\n"):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if current:
                sentences.append(current)
                current = []
            continue
        current.append((parts[0], parts[-1]))
    if current:
        sentences.append(current)
    return sentences


def write_conll(path: Path, sentences) -> None:
    path.write_text("".join("".join(f"{w} {t}\n" for w, t in s) + "\n" for s in sentences),
                    encoding="utf-8")


def keep_only(sentences, kind: str):
    return [[(w, t if t[2:] == kind else "O") for w, t in s] for s in sentences]


def sample(rows: list, n: int, rng: random.Random) -> list:
    return rng.sample(rows, n) if n < len(rows) else list(rows)


def conll_sets(data: Path, out: Path) -> dict:
    rng = random.Random(SEED)
    train = read_conll(data / "conll2003" / "train.txt")
    test = sample(read_conll(data / "conll2003" / "test.txt"), 800, rng)
    rng.shuffle(train)
    made = {}
    for name, tr, dev, te in (
            ("conll-1k", train[:1000], train[1000:1300], test),
            ("conll-sparse", keep_only(train[:1500], "MISC"), keep_only(train[3000:3400], "MISC"),
             keep_only(test, "MISC"))):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for split, rows in (("train", tr), ("validation", dev), ("test", te)):
            write_conll(folder / f"{split}.txt", rows)
        tokens = [t for s in tr for _, t in s]
        made[name] = {"task": NER, "train": len(tr), "o_share": tokens.count("O") / len(tokens)}
    return made


def read_sst2(path: Path) -> list[tuple[str, int]]:
    with open(path, encoding="utf-8", newline="") as f:
        return [(r["sentence"].strip(), int(r["label"]))
                for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def sst2_sets(data: Path, out: Path) -> dict:
    rng = random.Random(SEED)
    names = ["negative", "positive"]
    train = read_sst2(data / "sst2" / "train.tsv")
    rng.shuffle(train)
    test = [{"sentence": s, "label": names[y]} for s, y in read_sst2(data / "sst2" / "dev.tsv")]
    pos = [r for r in train if r[1] == 1]
    neg = [r for r in train if r[1] == 0]
    made = {}
    for name, tr, dev in (("sst2-500", train[:500], train[500:800]),
                          ("sst2-imbalanced", pos[:900] + neg[:100], pos[900:1170] + neg[100:130])):
        rng.shuffle(tr)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for split, rows in (("train", tr), ("validation", dev)):
            write_jsonl(folder / f"{split}.jsonl", [{"sentence": s, "label": names[y]} for s, y in rows])
        write_jsonl(folder / "test.jsonl", test)
        made[name] = {"task": CLS, "train": len(tr),
                      "majority_share": max(sum(y for _, y in tr), sum(1 - y for _, y in tr)) / len(tr)}
    return made


def read_e2e(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return [(r["mr"], r["ref"]) for r in csv.DictReader(f)]


def attribute(mr: str, key: str) -> str | None:
    found = re.search(rf"{re.escape(key)}\[([^\]]*)\]", mr)
    return found.group(1) if found else None


def e2e_sets(data: Path, out: Path) -> dict:
    rng = random.Random(SEED)
    train, test = read_e2e(data / "e2e_nlg" / "trainset.csv"), read_e2e(data / "e2e_nlg" / "testset_w_refs.csv")
    made = {}
    labelled = [(ref, attribute(mr, "food")) for mr, ref in train if attribute(mr, "food")]
    rng.shuffle(labelled)
    test_food = sample([(ref, attribute(mr, "food")) for mr, ref in test if attribute(mr, "food")], 600, rng)
    folder = out / "e2e-food"
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", labelled[:1000]), ("validation", labelled[2000:2300]), ("test", test_food)):
        write_jsonl(folder / f"{split}.jsonl", [{"sentence": s, "label": y} for s, y in rows])
    made["e2e-food"] = {"task": CLS, "train": 1000, "classes": len({y for _, y in labelled[:1000]})}
    # causal LM: 300 training references, 40 held-back references, 24 test meaning representations
    rng.shuffle(train)
    mrs = sorted({mr for mr, _ in test})
    test_mrs = set(rng.sample(mrs, 24))
    folder = out / "e2e-small"
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train[:300]), ("validation", train[300:340]),
                        ("test", [(mr, ref) for mr, ref in test if mr in test_mrs])):
        write_jsonl(folder / f"{split}.jsonl", [{"mr": mr, "ref": ref} for mr, ref in rows])
    made["e2e-small"] = {"task": GEN, "train": 300}
    return made


def build(out: Path, data: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    made = {**conll_sets(data, out), **sst2_sets(data, out), **e2e_sets(data, out)}
    (out / "sets.json").write_text(json.dumps(made, indent=2) + "\n")
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    for name, facts in build(args.out, args.data).items():
        print(name, facts)


if __name__ == "__main__":
    main()
