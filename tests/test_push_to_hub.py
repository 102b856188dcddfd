"""`peftkit export / merge --push-to-hub REPO` against a fake Hub on 127.0.0.1 (tests/fake_hub.py).

Each push is a real `python -m peftkit` process, configured only the ways a user configures
huggingface_hub (HF_ENDPOINT, HF_TOKEN, HF_HOME), so the endpoint and token are resolved by
huggingface_hub itself. HF_HUB_DISABLE_XET=1: the fake Hub serves LFS, not Xet (fake_hub.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from peftkit.cli import main
from peftkit.pipeline import run_recipe
from peftkit.recipe import build_recipe

from conftest import tiny_ner_recipe
from fake_hub import FakeHub

TOKEN = "hf_test_write_token"


@pytest.fixture(scope="module")
def lora_run(tiny_bert_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("push") / "lora_ner"
    raw = tiny_ner_recipe(tiny_bert_dir, run_dir, {"name": "lora", "r": 4}, max_steps=2,
                          eval_every="no")
    run_recipe(build_recipe(raw))
    return run_dir


@pytest.fixture
def hub():
    with FakeHub(TOKEN) as server:
        yield server


def peftkit(args: list[str], tmp_path: Path, endpoint: str, token: str | None = TOKEN):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_XET="1",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    if token is not None:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "peftkit", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_export_pushes_every_file_with_its_content(lora_run, hub, tmp_path):
    out = tmp_path / "adapter"
    proc = peftkit(["export", str(lora_run), "--out", str(out), "--push-to-hub", "me/tiny-ner",
                    "--private"], tmp_path, hub.url)
    assert proc.returncode == 0, proc.stderr
    repo = hub.repos["me/tiny-ner"]
    assert repo.private is True
    assert repo.files == files_of(out)          # every file, byte for byte
    assert "adapter_model.safetensors" in repo.files and "README.md" in repo.files
    lfs = [r for r in hub.requests if r.startswith("PUT /lfs/")]
    assert lfs, "the weights went inline, not by LFS"
    (commit,) = repo.commits
    assert commit["summary"] == "peftkit adapter of run lora_ner (lora, token-classification)"
    assert "pushed to me/tiny-ner" in proc.stdout


def test_merge_pushes_the_merged_folder_into_an_existing_repo(lora_run, hub, tmp_path):
    hub.create({"organization": "me", "name": "merged"})   # exist_ok: pushing again works
    out = tmp_path / "merged"
    proc = peftkit(["merge", str(lora_run), "--out", str(out), "--push-to-hub", "me/merged"],
                   tmp_path, hub.url)
    assert proc.returncode == 0, proc.stderr
    repo = hub.repos["me/merged"]
    assert repo.files == files_of(out) and "config.json" in repo.files
    assert repo.commits[0]["summary"].startswith("peftkit merged model of run lora_ner")


def test_a_refused_token_exits_2_and_keeps_the_folder(lora_run, hub, tmp_path):
    out = tmp_path / "adapter"
    proc = peftkit(["export", str(lora_run), "--out", str(out), "--push-to-hub", "me/x"],
                   tmp_path, hub.url, token="hf_wrong")
    assert proc.returncode == 2
    assert "refused the token (401" in proc.stderr and f"kept at {out}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (out / "adapter_model.safetensors").is_file() and not hub.repos


def test_no_token_is_refused_before_any_work(lora_run, hub, tmp_path):
    out = tmp_path / "adapter"
    proc = peftkit(["export", str(lora_run), "--out", str(out), "--push-to-hub", "me/x"],
                   tmp_path, hub.url, token=None)
    assert proc.returncode == 2
    assert "no Hugging Face token found" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() and not hub.repos


def test_an_unreachable_endpoint_exits_1_and_keeps_the_folder(lora_run, tmp_path):
    with socket.socket() as s:      # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "adapter"
    proc = peftkit(["export", str(lora_run), "--out", str(out), "--push-to-hub", "me/x"],
                   tmp_path, f"http://127.0.0.1:{port}")
    assert proc.returncode == 1
    assert "cannot reach" in proc.stderr and "Traceback" not in proc.stderr
    assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("args, message", [
    (["--private"], "--private applies to --push-to-hub"),
    (["--push-to-hub", "not a/repo id"], "not a repo id"),
])
def test_bad_push_options_are_usage_errors(lora_run, tmp_path, args, message):
    out = tmp_path / "adapter"
    result = CliRunner().invoke(main, ["export", str(lora_run), "--out", str(out), *args])
    assert result.exit_code == 2 and message in result.output
    assert not out.exists()
