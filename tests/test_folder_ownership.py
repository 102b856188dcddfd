"""Issue 17, parts 2, 3 and 5: peftkit deletes only its own folders, one writer at a time, and a
finished run is not "resumed" under another recipe.

Before the fix any folder holding a common name (model/, checkpoints/, labels.json) counted as a
run folder: `--overwrite` deleted a thesis folder, and another tool's checkpoints/ was deleted
without any flag; a bench variant named `..` deleted the whole --out folder on a rerun.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from peftkit import rundir
from peftkit.bench.suite import SuiteError, load_suite
from peftkit.cli import main
from peftkit.errors import UsageError
from peftkit.pipeline import prepare_folder
from peftkit.recipe import build_recipe
from peftkit.rundir import make_run_dir, prepare

from conftest import tiny_ner_recipe


def user_folder(tmp_path: Path) -> Path:
    """Somebody's work that happens to hold names a run folder has."""
    folder = tmp_path / "thesis"
    (folder / "src").mkdir(parents=True)
    (folder / "model").mkdir()
    (folder / "thesis.tex").write_text("\\chapter{Results}")
    (folder / "src" / "train.py").write_text("print('mine')")
    return folder


# ---------------------------------------------------------------- part 2: only our folders

def test_overwrite_never_deletes_a_folder_peftkit_did_not_mark(tmp_path):
    folder = user_folder(tmp_path)
    for overwrite, resume in ((True, False), (False, False), (False, True)):
        with pytest.raises(UsageError, match=r"not empty \(model, src, thesis.tex\).*never deletes"):
            prepare(folder, overwrite=overwrite, resume=resume)
    assert (folder / "thesis.tex").exists() and (folder / "src" / "train.py").exists()


def test_the_run_command_refuses_the_folder_before_loading_anything(tmp_path, write_recipe,
                                                                   tiny_bert_dir):
    folder = user_folder(tmp_path)
    recipe = write_recipe(tiny_ner_recipe(tiny_bert_dir, folder))
    result = CliRunner().invoke(main, ["run", str(recipe), "--out", str(folder), "--overwrite"])
    assert result.exit_code == 2 and "thesis.tex" in result.output, result.output
    assert sorted(p.name for p in folder.iterdir()) == ["model", "src", "thesis.tex"]  # no lock file


def test_another_tools_checkpoints_are_not_cleaned_up(tmp_path):
    folder = tmp_path / "other-tool"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "epoch9.ckpt").write_text("nine epochs of work")
    with pytest.raises(UsageError, match=r"not empty \(checkpoints\)"):
        prepare(folder, overwrite=False, resume=False)
    assert (folder / "checkpoints" / "epoch9.ckpt").exists()


def test_a_run_folder_of_an_older_peftkit_is_read_but_never_deleted(tmp_path):
    old = tmp_path / "old-run"
    old.mkdir()
    (old / "recipe.yaml").write_text("task: token-classification\n")
    (old / "result.json").write_text("{}")
    with pytest.raises(UsageError, match="older peftkit.*remove it yourself"):
        prepare(old, overwrite=True, resume=False)
    assert (old / "result.json").exists()


def test_a_marked_folder_is_ours_to_replace(tmp_path):
    run = tmp_path / "run"
    make_run_dir(run)
    (run / "result.json").write_text("{}")
    (run / "model").mkdir()
    assert prepare(run, overwrite=True, resume=False) == "new"
    assert [p.name for p in run.iterdir()] == [rundir.MARKER]


def test_the_marker_is_written_when_a_run_starts(tmp_path):
    assert prepare(tmp_path / "new", overwrite=False, resume=False) == "new"
    assert rundir.is_ours(tmp_path / "new")


@pytest.mark.parametrize("name", ["..", ".", "", "a..b"])
def test_bench_variant_names_that_leave_their_folder_are_refused(tmp_path, name):
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"base": {"model": {"name": "minilm-l6"}},
                                     "variants": [{"name": name, "strategy": {"name": "lora"}}]}))
    with pytest.raises(SuiteError, match="variant name"):
        load_suite(str(suite))


def test_a_bench_suite_named_dot_dot_is_refused(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "..", "variants": ["lora"]}))
    with pytest.raises(SuiteError, match="usable as a folder name"):
        load_suite(str(suite))


def test_merge_overwrite_never_deletes_a_folder_merge_did_not_write(tmp_path):
    from peftkit.export.folder import check_out

    folder = user_folder(tmp_path)
    with pytest.raises(UsageError, match=r"thesis.tex.*no peftkit.json.*never deletes"):
        check_out(folder, overwrite=True, sources=[tmp_path / "run"])
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "peftkit.json").write_text("{}")
    assert check_out(tmp_path / "merged", overwrite=True, sources=[]) == (tmp_path / "merged")


def test_a_failed_bench_variant_writes_nothing_into_a_foreign_folder(tmp_path, tiny_bert_dir):
    from peftkit.bench.runner import run_one
    from peftkit.bench.suite import Variant

    folder = user_folder(tmp_path)
    recipe = build_recipe(tiny_ner_recipe(tiny_bert_dir, folder))
    outcome = run_one(Variant("v", "v", 42, {}, recipe), folder)
    assert outcome.startswith("FAILED") and "thesis.tex" in outcome
    assert sorted(p.name for p in folder.iterdir()) == ["model", "src", "thesis.tex"]


# ---------------------------------------------------------------- part 3: one writer

HOLD = ("import sys, time; from pathlib import Path; from peftkit import rundir; "
        "lock = rundir.{how}; print('held', flush=True); time.sleep(120)")


def holder(folder: Path, how: str) -> subprocess.Popen:
    """Another process holding the folder's lock (as a run or a bench would)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(how=how)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_in_the_same_folder_is_refused_naming_the_first(tmp_path, write_recipe,
                                                                     tiny_bert_dir):
    run = tmp_path / "run"
    first = holder(run, f"claim(Path({str(run)!r}))")
    try:
        with pytest.raises(UsageError, match=rf"in use by another peftkit process \(pid {first.pid}"):
            rundir.claim(run)
        recipe = write_recipe(tiny_ner_recipe(tiny_bert_dir, run))
        done = subprocess.run([sys.executable, "-m", "peftkit", "run", str(recipe), "--overwrite"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and f"pid {first.pid}" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    finally:
        first.kill()
        first.wait()
    # the kernel dropped the dead process's lock: nothing stale blocks the next run
    rundir.claim(run).release()


def test_a_second_bench_in_the_same_folder_is_refused(tmp_path):
    from peftkit.bench.runner import run_suite
    from peftkit.bench.suite import Suite

    out = tmp_path / "bench"
    out.mkdir()
    first = holder(out, f"lock_folder(Path({str(out)!r}), 'bench')")
    try:
        with pytest.raises(UsageError, match=rf"bench folder .*\(pid {first.pid}"):
            run_suite(Suite("s", "s.yaml", "", []), out)
    finally:
        first.kill()
        first.wait()


def test_the_lock_is_held_for_the_whole_run(tmp_path, monkeypatch):
    """While training runs (here: a stand-in that checks), the folder cannot be claimed."""
    from peftkit import pipeline

    seen = []

    def train_in(run_dir, recipe, checkpoint, callbacks=()):
        probe = subprocess.run([sys.executable, "-c", "from pathlib import Path; from peftkit "
                                f"import rundir; rundir.claim(Path({str(run_dir)!r}))"],
                               capture_output=True, text=True, timeout=120)
        seen.append(probe.stderr)
        return {}

    monkeypatch.setattr(pipeline, "train_in", train_in)
    monkeypatch.setattr(pipeline, "absolute_paths", lambda recipe: recipe)
    pipeline.run_recipe(build_recipe({}), run_dir=tmp_path / "run")
    assert "in use by another peftkit process" in seen[0]
    rundir.claim(tmp_path / "run").release()  # released when the run returns


# ---------------------------------------------------------------- part 5: resume a finished run

def test_resume_of_a_finished_run_with_another_recipe_says_what_differs(tmp_path):
    run = tmp_path / "run"
    make_run_dir(run)
    rundir.write_recipe(run, build_recipe({"train": {"learning_rate": 1e-3}}))
    (run / "result.json").write_text('{"metric": "f1"}')
    with pytest.raises(UsageError, match=r"train.learning_rate: 0.001 -> 0.0005"):
        prepare_folder(run, build_recipe({"train": {"learning_rate": 5e-4}}), False, True)
    state, _ = prepare_folder(run, build_recipe({"train": {"learning_rate": 1e-3}}), False, True)
    assert state == "finished"  # the same recipe: the saved result stands
