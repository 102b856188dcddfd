"""What `peftkit run` prints at each level (peftkit.output): normal shows peftkit's lines, the
progress bars and the summary; the libraries' load reports, warnings and raw log dicts go to the
run folder's run.log; -q prints the summary and warnings only; -v shows everything."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml
from conftest import tiny_ner_recipe

LIBRARY_NOISE = ("LOAD REPORT", "FutureWarning", "UserWarning", "{'loss'", "Loading weights",
                 "tokenizing")


def run(tiny_bert_dir, tmp_path, *flags):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_ner_recipe(tiny_bert_dir, tmp_path / "run")))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PEFTKIT_OUTPUT", None)
    proc = subprocess.run([sys.executable, "-m", "peftkit", *flags, "run", str(recipe)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, proc.stderr, (tmp_path / "run" / "run.log").read_text()


def test_normal_output_is_peftkit_bars_and_summary_with_the_libraries_in_run_log(tiny_bert_dir,
                                                                                  tmp_path):
    out, err, log = run(tiny_bert_dir, tmp_path)
    assert "labels: train:" in out and "test f1" in out and "it/s]" in err   # a progress bar
    assert not [n for n in LIBRARY_NOISE if n in out + err]
    assert "LOAD REPORT" in log  # the classifier head is new: transformers says so, in the log


def test_quiet_prints_the_result_and_warnings_only(tiny_bert_dir, tmp_path):
    out, err, _ = run(tiny_bert_dir, tmp_path, "-q")
    assert "test f1" in out and "labels: train:" not in out
    assert "it/s" not in err and not [n for n in LIBRARY_NOISE if n in out + err]
    assert "learned nothing useful" in err  # the tiny run collapses: warnings stay visible


def test_verbose_shows_what_the_libraries_say(tiny_bert_dir, tmp_path):
    out, err, _ = run(tiny_bert_dir, tmp_path, "-v")
    assert "{'loss'" in out and "LOAD REPORT" in err


def test_quiet_and_verbose_together_are_refused(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "peftkit", "-q", "-v", "recipes"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "contradict" in proc.stderr
