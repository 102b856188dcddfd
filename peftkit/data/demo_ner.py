"""A small, embedded named-entity-recognition data set that peftkit generates itself.

Why: the demo recipe (`peftkit run recipes/lora_ner.yaml`) must run anywhere, offline, in a
few minutes on two CPU cores, and still report an F1 score that means something. So no
download: sentences are built from peftkit's own templates and name lists (all invented or
common-knowledge names written here), tagged with IOB2 labels for PER, ORG, LOC and MISC.

What keeps it from being trivial:
  * Context decides the type. Surfaces such as "Jordan", "Washington", "Paris", "Ford" or
    "Amazon" appear as a person, a place, a team, a company or a product depending on the
    sentence ("Jordan scored twice" vs "flew to Jordan"). About a fifth of all sentences
    contain one of these ambiguous names, so a lookup table cannot solve the task.
  * Names nest inside other entities ("University of Lima", "Kenya Airways", "Berlin
    Marathon"), so a city token is not always B-LOC.
  * Part of every plain name list is held out of training: validation and test draw from it
    often, measuring generalisation to unseen names.

Determinism: every split uses its own `random.Random`, seeded from a string built from the
seed and the split name (string seeds are hashed with SHA-512, independent of
PYTHONHASHSEED); only lists and tuples are iterated, never sets or dicts keyed by hash order.
This module imports only the standard library; `datasets` is imported inside
`demo_ner_dataset` alone.
"""

from __future__ import annotations

import functools
import random

ENTITY_TYPES = ("LOC", "MISC", "ORG", "PER")
DEMO_LABELS = sorted(["O"] + [f"{p}-{t}" for t in ENTITY_TYPES for p in ("B", "I")])
DEFAULT_SIZES = {"train": 3000, "validation": 500, "test": 500}
AMBIGUOUS_RATE = 0.22  # share of sentences that get one ambiguous name (if a slot allows it)
HELDOUT_RATE = 0.4  # in validation/test: chance a plain name comes from the held-out part


def _names(text: str) -> tuple[str, ...]:
    """'New York|Paris' -> ('New York', 'Paris'); each item is split into tokens later."""
    return tuple(item.strip() for item in text.split("|") if item.strip())


# --- plain name lists: every 4th item is held out of training ------------------------------
FIRST = _names("James|Maria|Ahmed|Yuki|Olga|Carlos|Fatima|Liam|Chen|Priya|Lars|Amara|Diego|"
               "Sofia|Kwame|Ingrid|Mateo|Aisha|Pierre|Hana|Tomasz|Leila|Rahul|Elena|Kenji|"
               "Nadia|Oscar|Zanele|Marco|Ines|Dmitri|Grace|Omar|Freya|Luis|Mei|Tariq|Astrid|"
               "Pablo|Chiara|Samuel|Yara|Felix|Noura|Viktor|Lucia|Emeka|Hannah")
LAST = _names("Smith|Garcia|Kowalski|Tanaka|Okafor|Mueller|Rossi|Nguyen|Haddad|Johansson|"
              "Petrov|Silva|Kim|Patel|Dubois|Moreno|Novak|Schmidt|Lindqvist|Mensah|Costa|"
              "Ivanova|Hughes|Fischer|Yilmaz|Santos|Chowdhury|Bakker|Romano|Andersen|Kaplan|"
              "Ortiz|Nakamura|Osei|Horvat|Brennan|Achterberg|Mwangi|Fernandes|Lehmann|Sato|"
              "Rahman|Castillo|Weber|Kovacs|Murphy|Adeyemi|Larsen")
CITY = _names("London|Berlin|Tokyo|Nairobi|Madrid|Toronto|Mumbai|Cairo|Lagos|Oslo|Lima|Seoul|"
              "Rome|Vienna|Prague|Lisbon|Dublin|Manila|Istanbul|Athens|Bogota|Warsaw|Hanoi|"
              "Melbourne|Chicago|Denver|Marseille|Munich|Milan|Osaka|New York|Los Angeles|"
              "San Francisco|Buenos Aires|Hong Kong|Rio de Janeiro|Kuala Lumpur|Cape Town|"
              "Mexico City|Tel Aviv|St. Petersburg|Abu Dhabi")
COUNTRY = _names("France|Germany|Kenya|Brazil|Japan|Canada|Mexico|Italy|Spain|Egypt|India|"
                 "Nigeria|Argentina|Peru|Norway|Poland|Turkey|Vietnam|Chile|Morocco|Ghana|"
                 "Portugal|Sweden|Indonesia|Ukraine|Ireland|New Zealand|South Africa|"
                 "United States|Saudi Arabia|Costa Rica|Sri Lanka|South Korea|Czech Republic|"
                 "United Kingdom|Ethiopia")
RIVER = _names("Nile|Danube|Rhine|Thames|Mekong|Yangtze|Volga|Ganges|Zambezi|Seine|Loire|"
               "Orinoco|Niger|Mississippi|Tagus|Indus")
COMPANY = _names("Microsoft|Toyota|Nestle|Samsung|Unilever|Nokia|Volkswagen|Intel|Heineken|"
                 "Vodafone|Renault|Sony|Barclays|IKEA|Airbus|Pfizer|Nintendo|Huawei|Carrefour|"
                 "Maersk")
STEM = _names("Norvex|Kaltra|Brightwater|Zenara|Halvorsen|Orbital|Redstone|Bluepeak|Silverline|"
              "Tamarind|Corvel|Meridian|Aldwych|Quantex|Velora|Stonebridge|Arkwave|Lumora|"
              "Granitex|Helion")
SUFFIX = _names("Corp|Group|Holdings|Bank|Motors|Energy|Systems|Partners|Pharmaceuticals|Inc")
AIRLINE = _names("Lufthansa|Qantas|Emirates|Ryanair|KLM|Aeroflot|Iberia|Finnair")
TEAM = _names("Arsenal|Juventus|Ajax|Celtic|Benfica|Galatasaray|Bayern Munich|Real Madrid|"
              "AC Milan|Boca Juniors|Lazio|Feyenoord|Anderlecht|Olympiacos|Flamengo|Rangers|"
              "Everton|Napoli|Leeds United|Aston Villa|Borussia Dortmund|Sporting Lisbon|"
              "Red Star Belgrade|Inter Milan")
PAPER = _names("New York Times|Financial Times|Le Monde|Der Spiegel|Asahi Shimbun|El Pais|"
               "Times of India|Globe and Mail|Wall Street Journal|Reuters|Associated Press|"
               "Daily Nation")
GOV = _names("United Nations|European Union|NATO|World Bank|Red Cross|International Monetary "
             "Fund|World Health Organization|Interpol|UNESCO|African Union|OPEC|Greenpeace|"
             "World Trade Organization|Amnesty International")
NAT = _names("German|French|Brazilian|Japanese|Kenyan|Canadian|Mexican|Italian|Spanish|Dutch|"
             "Swedish|Polish|Turkish|Egyptian|Indian|Chinese|Russian|Nigerian|Argentine|"
             "Australian|Irish|Greek|Korean|Vietnamese|Chilean|Norwegian|Peruvian|Moroccan")
LANG = _names("English|Spanish|Mandarin|Swahili|Arabic|Hindi|Portuguese|Russian|Japanese|"
              "Korean|Turkish|Bengali|Urdu|Tagalog|Hebrew|Finnish|Catalan|Basque|Welsh|Yoruba")
EVENT = _names("World Cup|Olympic Games|Tour de France|Super Bowl|Champions League|Davis Cup|"
               "Ryder Cup|Venice Biennale|Eurovision Song Contest|Cannes Film Festival|"
               "Africa Cup of Nations|Paralympic Games")
PRODUCT = _names("iPhone|Kindle|PlayStation|Xbox|Walkman|Galaxy Note|ThinkPad|Corolla|Prius|"
                 "Game Boy|Windows|Android|Airbus A380|Pentium|Model S|Golf GTI")
MODEL = _names("X5|Pro|One|Nova|Ultra|Max|Air|Mini")
MONTH = _names("January|February|March|April|May|June|July|August|September|October|"
               "November|December")
DAY = _names("Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday")

# --- ambiguous surfaces: the same words, different types; never held out ------------------
AMBIGUOUS = {
    "FIRST": _names("Jordan|Paris|Georgia|Chad|Florence|Austin|Sydney|Chelsea|Victoria|Dallas"),
    "LAST": _names("Jordan|Washington|Ford|Lincoln|Jackson|Dell|Disney|Ferrari|Porsche|Boeing|"
                   "Siemens|Morgan|Dallas"),
    "CITY": _names("Washington|Paris|Florence|Austin|Sydney|Dallas|Chelsea|Victoria|Lincoln|"
                   "Jackson"),
    "COUNTRY": _names("Jordan|Georgia|Chad"),
    "RIVER": _names("Amazon|Jordan"),
    "COMPANY": _names("Ford|Amazon|Dell|Disney|Ferrari|Porsche|Boeing|Siemens|Morgan|Lincoln"),
    "TEAM": _names("Washington|Chelsea|Dallas|Austin|Sydney|Paris Saint-Germain"),
    "PAPER": _names("Washington Post|Jordan Times|Sydney Morning Herald|Dallas Morning News"),
    "PRODUCT": _names("Ford Mustang|Boeing 747|Porsche 911|Air Jordan|Ferrari Testarossa"),
}
# single-token ambiguous names (every one also occurs as another type)
AMBIGUOUS_NAMES = sorted({name for group in ("FIRST", "LAST", "CITY", "COUNTRY", "RIVER", "COMPANY")
                          for name in AMBIGUOUS[group]})
SLOT_TYPE = {"PER": "PER", "FIRST": "PER", "LAST": "PER", "CITY": "LOC", "COUNTRY": "LOC",
             "RIVER": "LOC", "COMPANY": "ORG", "TEAM": "ORG", "PAPER": "ORG", "GOV": "ORG",
             "AIRLINE": "ORG", "UNIV": "ORG", "NAT": "MISC", "LANG": "MISC", "EVENT": "MISC",
             "PRODUCT": "MISC"}  # any other slot (NUM, YEAR, MONTH, DAY, SCORE, PCT) is O

# --- templates: {SLOT} is filled, everything else is an O token ----------------------------
TEMPLATES = _names("""
{FIRST} scored twice as {TEAM} beat {TEAM} {SCORE} on {DAY} .|
{TEAM} coach {PER} said his side deserved the win .|
{PER} , who joined {TEAM} from {TEAM} in {YEAR} , signed a new contract .|
{LAST} opened the scoring after {NUM} minutes but {TEAM} equalised late .|
{TEAM} will face {TEAM} in the semi-finals of the {EVENT} .|
{NAT} sprinter {PER} won gold at the {EVENT} in {CITY} .|
{LAST} finished third behind {PER} and {PER} .|
{TEAM} won {SCORE} at home on {DAY} .|
The delegation flew to {COUNTRY} on {MONTH} {NUM} for talks with officials in {CITY} .|
Heavy rain flooded parts of {CITY} and northern {COUNTRY} on {DAY} .|
{AIRLINE} will launch direct flights from {CITY} to {CITY} in {MONTH} .|
Thousands of tourists visit {CITY} every summer .|
The expedition travelled along the {RIVER} river for {NUM} days .|
{PER} was born in {CITY} , {COUNTRY} , in {YEAR} .|
The border between {COUNTRY} and {COUNTRY} was reopened on {DAY} .|
Fishermen on the {RIVER} reported record catches this year .|
Shares of {COMPANY} rose {PCT} percent after the company reported strong earnings .|
{COMPANY} agreed to buy {COMPANY} for {NUM} million dollars .|
{PER} , chief executive of {COMPANY} , told reporters in {CITY} that sales would grow .|
{COMPANY} unveiled the new {PRODUCT} at a press event in {CITY} on {DAY} .|
Analysts at {COMPANY} expect the {NAT} economy to grow by {PCT} percent in {YEAR} .|
{COMPANY} said it would cut {NUM} jobs at its plant near {CITY} .|
Mr. {LAST} founded the firm in {YEAR} with his brother .|
{LAST} , the company 's founder , stepped down in {YEAR} .|
{NAT} President {PER} met {PER} in {CITY} on {DAY} .|
According to the {PAPER} , {PER} plans to resign before {MONTH} .|
Speaking in {LANG} , {LAST} thanked the people of {COUNTRY} .|
The {NAT} foreign minister arrived in {COUNTRY} for a {NUM} day visit .|
{PER} told the {PAPER} that the talks with {COUNTRY} had stalled .|
Police in {CITY} arrested {NUM} people after protests on {DAY} .|
The {GOV} condemned the attack in {CITY} and called for calm .|
{GOV} officials said {COUNTRY} had met the conditions for a new loan .|
{PER} , a professor at {UNIV} , published the study on {DAY} .|
Researchers from {UNIV} and {COMPANY} built a new {LANG} translation system .|
{FIRST} studied {LANG} and history at {UNIV} before moving to {CITY} .|
The {EVENT} will be held in {CITY} in {YEAR} .|
More than {NUM} people attended the {EVENT} in {CITY} .|
The film , directed by {PER} , premiered at the {EVENT} .|
{FIRST} has lived in {CITY} since {YEAR} and speaks fluent {LANG} .|
Her novel was translated from {LANG} into {NUM} languages .|
{PER} and {FIRST} were married in {CITY} in {MONTH} {YEAR} .|
The {NAT} team arrived in {CITY} on {DAY} ahead of the {EVENT} .|
Many {NAT} fans travelled to {CITY} to watch {TEAM} .|
{FIRST} bought a new {PRODUCT} after her old one broke .|
{COMPANY} recalled {NUM} units of the {PRODUCT} .|
{PER} resigned on {DAY} .|
{LAST} denied the report on {DAY} .|
It rained in {CITY} again on {DAY} .|
{FIRST} thanked {FIRST} and the fans of {TEAM} .|
{FIRST} moved from {CITY} to {COUNTRY} to work for {COMPANY} .""")
PREFIXES = _names("Officials said that|According to the {PAPER} ,|Reports from {CITY} say that|"
                  "Sources close to {PER} said that|It emerged that|A statement from {COMPANY} "
                  "said that")  # tense-neutral lead-ins
SUFFIXES = _names(", a spokesman said .|, the {PAPER} reported .|, officials in {CITY} said .|"
                  ", according to the {GOV} .|, {PER} told reporters .")
KEEP_CAPS = ("Mr.",)  # template openers kept capitalised when a lead-in phrase is added


@functools.lru_cache(maxsize=None)
def _pools(items: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split a name list into (train part, held-out part): every 4th item is held out."""
    return (tuple(x for i, x in enumerate(items) if i % 4 != 3),
            tuple(x for i, x in enumerate(items) if i % 4 == 3))


class _Filler:
    """Draws slot fillers for one split; held-out names only outside training."""

    def __init__(self, rng: random.Random, split: str):
        self.rng, self.eval = rng, split != "train"

    def pick(self, items: tuple[str, ...]) -> str:
        seen, held = _pools(items)
        if self.eval and held and self.rng.random() < HELDOUT_RATE:
            return self.rng.choice(held)
        return self.rng.choice(seen)

    def person(self) -> str:
        if self.rng.random() < 0.1:
            return f"{self.pick(FIRST)} {self.rng.choice('ABCDEHJKLMRST')}. {self.pick(LAST)}"
        return f"{self.pick(FIRST)} {self.pick(LAST)}"

    def company(self) -> str:
        if self.rng.random() < 0.5:
            return self.pick(COMPANY)
        return f"{self.pick(STEM)} {self.pick(SUFFIX)}"

    def plain(self, slot: str) -> str:
        """A non-ambiguous filler text for `slot`."""
        r, p = self.rng, self.pick
        table = {
            "PER": self.person,
            "FIRST": lambda: p(FIRST),
            "LAST": lambda: p(LAST),
            "CITY": lambda: p(CITY),
            "COUNTRY": lambda: p(COUNTRY),
            "RIVER": lambda: p(RIVER),
            "COMPANY": self.company,
            "TEAM": lambda: p(TEAM),
            "PAPER": lambda: p(PAPER),
            "GOV": lambda: p(GOV),
            "AIRLINE": lambda: r.choice([p(AIRLINE), f"{p(STEM)} Airlines",
                                         f"{p(COUNTRY)} Airways"]),
            "UNIV": lambda: r.choice([f"University of {p(CITY)}", f"{p(CITY)} University",
                                      f"{p(CITY)} Institute of Technology", f"{p(LAST)} College"]),
            "NAT": lambda: p(NAT),
            "LANG": lambda: p(LANG),
            "EVENT": lambda: r.choice([p(EVENT), p(EVENT), f"{p(CITY)} Marathon",
                                       f"{p(CITY)} Film Festival"]),
            "PRODUCT": lambda: r.choice([p(PRODUCT), f"{p(STEM)} {p(MODEL)}"]),
            "NUM": lambda: str(r.choice([r.randint(2, 60), r.randint(100, 9000)])),
            "YEAR": lambda: str(r.randint(1950, 2024)),
            "MONTH": lambda: p(MONTH),
            "DAY": lambda: r.choice(DAY),
            "SCORE": lambda: f"{r.randint(1, 5)} - {r.randint(0, 3)}",
            "PCT": lambda: f"{r.randint(1, 12)}.{r.randint(0, 9)}",
        }
        return table[slot]()

    def ambiguous(self, slot: str) -> str:
        """An ambiguous surface for `slot`; its type follows from the slot, not the word."""
        if slot == "PER":  # ambiguous first name or ambiguous surname inside a full name
            if self.rng.random() < 0.5:
                return f"{self.rng.choice(AMBIGUOUS['FIRST'])} {self.pick(LAST)}"
            return f"{self.pick(FIRST)} {self.rng.choice(AMBIGUOUS['LAST'])}"
        return self.rng.choice(AMBIGUOUS[slot])


def _tag(text: str, etype: str | None) -> tuple[list[str], list[str]]:
    tokens = text.split()
    if etype is None:
        return tokens, ["O"] * len(tokens)
    return tokens, [f"B-{etype}"] + [f"I-{etype}"] * (len(tokens) - 1)


def _skeleton(rng: random.Random) -> list[str]:
    """A template, sometimes with a lead-in phrase and/or a reporting clause attached."""
    words = rng.choice(TEMPLATES).split()
    if rng.random() < 0.2:
        words = words[:-1] + rng.choice(SUFFIXES).split()
    if rng.random() < 0.25:
        if not words[0].startswith("{") and words[0] not in KEEP_CAPS:
            words[0] = words[0].lower()
        words = rng.choice(PREFIXES).split() + words
    return words


def _sentence(rng: random.Random, filler: _Filler) -> dict[str, list[str]]:
    words = _skeleton(rng)
    slots = [i for i, w in enumerate(words) if w.startswith("{")]
    ambiguous_at = -1
    if rng.random() < AMBIGUOUS_RATE:
        candidates = [i for i in slots if words[i][1:-1] in AMBIGUOUS or words[i] == "{PER}"]
        ambiguous_at = rng.choice(candidates) if candidates else -1
    tokens: list[str] = []
    tags: list[str] = []
    for i, word in enumerate(words):
        if not word.startswith("{"):
            text, etype = word, None
        else:
            slot = word[1:-1]
            text = filler.ambiguous(slot) if i == ambiguous_at else filler.plain(slot)
            etype = SLOT_TYPE.get(slot)
        new_tokens, new_tags = _tag(text, etype)
        tokens += new_tokens
        tags += new_tags
    return {"tokens": tokens, "ner_tags": tags}


def generate_demo_ner(seed: int = 0,
                      sizes: dict[str, int] | None = None) -> dict[str, list[dict]]:
    """Generate the demo NER splits: {"train"|"validation"|"test": [{"tokens", "ner_tags"}]}.

    `sizes` overrides the number of sentences per split (defaults: DEFAULT_SIZES). Each split
    has its own random stream, so resizing one split leaves the others unchanged.
    """
    unknown = sorted(set(sizes or {}) - set(DEFAULT_SIZES))
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; expected {list(DEFAULT_SIZES)}")
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    out: dict[str, list[dict]] = {}
    for split in DEFAULT_SIZES:
        rng = random.Random(f"peftkit-demo-ner/{seed}/{split}")
        filler = _Filler(rng, split)
        out[split] = [_sentence(rng, filler) for _ in range(sizes[split])]
    return out


def demo_ner_dataset(seed: int = 0, sizes: dict[str, int] | None = None):
    """The demo splits as a `datasets.DatasetDict` with string columns tokens / ner_tags."""
    import datasets  # lazy: keep this module importable without the heavy stack

    seq = getattr(datasets, "List", datasets.Sequence)
    features = datasets.Features({"tokens": seq(datasets.Value("string")),
                                  "ner_tags": seq(datasets.Value("string"))})
    splits = generate_demo_ner(seed, sizes)
    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows, features=features)
                                 for name, rows in splits.items()})
