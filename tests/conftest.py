"""Shared fixtures: tiny models built from configs and saved to folders (real loading code,
no network), and a helper that writes small recipes around them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if SHARED_DATA.is_dir():  # CoNLL-2003, SST-2 and E2E beside the checkout (never copied into it)
    os.environ.setdefault("PEFTKIT_DATA_DIR", str(SHARED_DATA))


def corpus_lines(train: int = 400) -> list[str]:
    from peftkit.data.demo_ner import generate_demo_ner

    demo = generate_demo_ner(sizes={"train": train, "validation": 10, "test": 10})
    return [" ".join(ex["tokens"]) for ex in demo["train"]]


def wordpiece_vocab(lines: list[str], size: int = 1000) -> list[str]:
    """A WordPiece vocabulary that is the same in every process: special tokens, every character
    (alone and as a "##" continuation), then the most frequent words, ties broken by spelling.
    (tokenizers' WordPiece trainer breaks frequency ties in hash order, which differs per
    process: every test on the tiny BERT then saw different token ids from run to run.)"""
    from collections import Counter

    words = Counter(w for line in lines for w in line.lower().split())
    chars = sorted({c for w in words for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars)]
    ranked = sorted((w for w in words if w not in vocab), key=lambda w: (-words[w], w))
    return vocab + ranked[:max(0, size - len(vocab))]


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32) with a WordPiece vocabulary built from demo sentences."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = {w: i for i, w in enumerate(wordpiece_vocab(corpus_lines(train=3000)))}
    wp = BertWordPieceTokenizer(vocab, lowercase=True)
    tok = BertTokenizerFast(tokenizer_object=wp._tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                            cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    tok.save_pretrained(folder)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)
    import torch

    torch.manual_seed(0)
    BertForMaskedLM(config).bert.save_pretrained(folder)  # base weights only, like a real encoder
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden 32, grouped-query attention) with a small byte-level BPE tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-llama")
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus_lines(), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                  pad_token="</s>")
    tok.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture
def write_recipe(tmp_path):
    """write_recipe(dict) -> path of a recipe file in tmp_path (sections merged over defaults)."""

    def write(recipe: dict, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return path

    return write


def tiny_ner_recipe(model_dir: Path, run_dir: Path, strategy: dict | None = None, **train) -> dict:
    """A recipe for a few seconds of NER training on a slice of the demo set."""
    return {
        "task": "token-classification",
        "model": {"name": str(model_dir)},
        "strategy": strategy or {"name": "lora", "r": 4},
        "data": {"name": "demo-ner", "max_length": 48, "max_train_samples": 64,
                 "max_eval_samples": 16, "max_test_samples": 16},
        "train": {"epochs": 1, "batch_size": 16, "learning_rate": 5e-3, "precision": "fp32",
                  "logging_steps": 1, **train},
        # a few steps of a tiny model learn little: the runs here test the pipeline, not learning
        # (tests/test_health.py tests the collapse exit code)
        "eval": {"fail_on_collapse": False},
        "output": {"dir": str(run_dir)},
    }


def perturb_adapter(run_dir: Path) -> Path:
    """Noise on every tensor of a run's saved adapter (LoRA and head), resealed: a few steps of a
    tiny model predict only the majority label, and a perturbed one predicts entities too."""
    import torch
    from safetensors.torch import load_file, save_file

    from peftkit.rundir import seal_weights

    path = run_dir / "adapter" / "adapter_model.safetensors"
    g = torch.Generator().manual_seed(0)
    state = {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in load_file(str(path)).items()}
    save_file(state, str(path), metadata={"format": "pt"})
    seal_weights(path.parent)  # changed on purpose: its SHA-256 line too
    return run_dir
