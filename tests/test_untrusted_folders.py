"""Issue 17, parts 1 and 4: a folder handed to predict / eval / merge / export is data, not code.

The attack: a run folder whose recipe.yaml says `model.trust_remote_code: true` and whose base
model's config.json has an `auto_map` pointing at Python code. Before the fix, predict, eval and
merge imported that code (here: it creates the file PWNED) and merge copied it into its output.
Now only the command's `--trust-remote-code` runs it. Weight files are checked against the
SHA-256 manifest written beside them.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from peftkit.cli import main
from peftkit.errors import UsageError
from peftkit.export import export_adapter, merge_run
from peftkit.pipeline import run_recipe
from peftkit.recipe import build_recipe

from conftest import tiny_ner_recipe

EVIL_CODE = '''
from pathlib import Path
Path({mark!r}).write_text("the folder's code ran")
from transformers import BertConfig, BertForTokenClassification

class EvilConfig(BertConfig):
    model_type = "evilbert"

class EvilModel(BertForTokenClassification):
    config_class = EvilConfig
'''


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert_dir) -> Path:
    """A finished LoRA run on a copy of the tiny BERT (two steps)."""
    root = tmp_path_factory.mktemp("trained")
    base = root / "base"
    shutil.copytree(tiny_bert_dir, base)
    raw = tiny_ner_recipe(base, root / "run", max_steps=2, eval_every="no")
    raw["data"]["max_test_samples"] = 4
    run_recipe(build_recipe(raw))
    return root / "run"


def evil_base(where: Path, tiny_bert_dir: Path, needs_code: bool) -> tuple[Path, Path]:
    """(a BERT folder whose config.json names evil.py, the file evil.py creates when it runs).
    needs_code: its model_type is one only evil.py defines (transformers cannot load it without)."""
    folder, mark = where / "evil-base", where / "PWNED"
    shutil.copytree(tiny_bert_dir, folder)
    (folder / "evil.py").write_text(EVIL_CODE.format(mark=str(mark)))
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig",
                          "AutoModelForTokenClassification": "evil.EvilModel"}
    if needs_code:
        config["model_type"] = "evilbert"
    (folder / "config.json").write_text(json.dumps(config))
    return folder, mark


def malicious_run(tmp_path: Path, trained: Path, base: Path, name: str | None = None) -> Path:
    """A copy of the trained run whose recipe now trusts remote code and points at `base`."""
    run = tmp_path / "handed-over-run"
    shutil.copytree(trained, run)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["model"].update(name=name or str(base), trust_remote_code=True)
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return run


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ---------------------------------------------------------------- part 1: code in folders

def test_predict_eval_merge_ignore_the_folders_trust_remote_code(tmp_path, trained, tiny_bert_dir):
    base, mark = evil_base(tmp_path, tiny_bert_dir, needs_code=False)
    run = malicious_run(tmp_path, trained, base)
    out = tmp_path / "merged"
    for args in (["predict", run, "John lives in Paris"], ["eval", run, "--max-samples", 2],
                 ["merge", run, "--out", out]):
        result = cli(*args)
        assert result.exit_code == 0, result.output
        assert not mark.exists(), f"{args[0]} ran the folder's code"
    assert "not running the model code" in result.output and "evil.py" in result.output
    assert not list(out.rglob("*.py"))  # merge never carries the code on
    assert "auto_map" not in json.loads((out / "config.json").read_text())
    assert cli("predict", out, "John lives in Paris").exit_code == 0 and not mark.exists()


def test_a_model_that_needs_its_code_is_refused_naming_the_flag(tmp_path, trained, tiny_bert_dir):
    base, mark = evil_base(tmp_path, tiny_bert_dir, needs_code=True)
    run = malicious_run(tmp_path, trained, base)
    for args in (["predict", run, "John lives in Paris"], ["eval", run],
                 ["merge", run, "--out", tmp_path / "merged"]):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        assert "--trust-remote-code" in result.output and "evil.py" in result.output
        assert "Traceback" not in result.output
        assert not mark.exists()
    assert not (tmp_path / "merged").exists()


def test_the_code_runs_only_with_the_command_line_flag(tmp_path, trained, tiny_bert_dir):
    base, mark = evil_base(tmp_path, tiny_bert_dir, needs_code=True)
    run = malicious_run(tmp_path, trained, base)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}  # transformers copies code
    done = subprocess.run([sys.executable, "-m", "peftkit", "predict", str(run), "John",
                           "--trust-remote-code"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "warning: --trust-remote-code" in done.stderr and "evil.py" in done.stderr
    assert mark.exists()


def test_relative_model_paths_resolve_against_the_run_folder_not_the_cwd(
        tmp_path, trained, tiny_bert_dir, monkeypatch):
    evil, mark = evil_base(tmp_path, tiny_bert_dir, needs_code=False)
    (tmp_path / "x").mkdir()
    run = malicious_run(tmp_path / "x", trained, evil, name="base")
    shutil.move(str(evil), tmp_path / "base")  # "base" now names the evil folder in the cwd only
    monkeypatch.chdir(tmp_path)
    result = cli("predict", run, "John")
    assert result.exit_code == 2 and str(run / "base") in result.output, result.output
    shutil.copytree(tiny_bert_dir, run / "base")  # the run folder's own base is the one used
    assert cli("predict", run, "John").exit_code == 0
    assert not mark.exists()


def test_export_leaves_code_files_out_unless_the_flag_says(tmp_path, trained):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "adapter" / "tokenizer_helper.py").write_text("raise SystemExit('ran')\n")
    config = json.loads((run / "adapter" / "tokenizer_config.json").read_text())
    (run / "adapter" / "tokenizer_config.json").write_text(
        json.dumps({**config, "auto_map": {"AutoTokenizer": ["tokenizer_helper.Tok", None]}}))
    plain = export_adapter(run, tmp_path / "plain")
    assert not list(plain.rglob("*.py"))
    assert "auto_map" not in json.loads((plain / "tokenizer_config.json").read_text())
    kept = export_adapter(run, tmp_path / "kept", trust_remote_code=True)
    assert (kept / "tokenizer_helper.py").is_file()


# ---------------------------------------------------------------- part 4: weight files

def test_weight_files_are_0644_and_listed_with_their_sha256(trained):
    from peftkit.weight_files import file_mode, sha256

    weights = trained / "adapter" / "adapter_model.safetensors"
    everywhere = [p for p in trained.rglob("*.safetensors")]  # the checkpoints' too
    assert len(everywhere) >= 2
    assert {stat.S_IMODE(p.stat().st_mode) for p in everywhere} == {file_mode()}  # 0644, umask 022
    listed = (trained / "adapter" / "SHA256SUMS").read_text()
    assert f"{sha256(weights)}  adapter_model.safetensors\n" in listed


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_corrupt_weight_file_is_refused_in_one_line(tmp_path, trained, damage):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    weights = run / "adapter" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        data = data[:len(data) // 2]
    else:
        data[-10] ^= 0x01  # one bit of one weight: safetensors would load it without complaint
    weights.write_bytes(bytes(data))
    for args in (["predict", run, "John"], ["eval", run], ["merge", run, "--out", tmp_path / "m"],
                 ["export", run, "--out", tmp_path / "e"]):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        assert "corrupt weight file" in result.output and "Traceback" not in result.output
        # one line of error; a note about other peftkit runs sharing the cores may precede it
        said = [line for line in result.output.splitlines() if line.strip()]
        assert len([line for line in said if not line.startswith("note:")]) == 1, result.output
    assert not (tmp_path / "m").exists() and not (tmp_path / "e").exists()


def test_merged_folders_are_sealed_and_checked_too(tmp_path, trained):
    merged = merge_run(trained, tmp_path / "merged")
    weights = merged / "model.safetensors"
    assert "model.safetensors" in (merged / "SHA256SUMS").read_text()
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(UsageError, match="corrupt weight file"):
        from peftkit.predict import predict_texts

        predict_texts(merged, ["John"])
