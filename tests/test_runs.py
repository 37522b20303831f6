"""Runs that nothing corrupts (issue 13), each situation reproduced with real processes and files.

One run per out-dir (two concurrent CLI runs; a lock left by a killed run taken over); a resume
checks what it resumes (changed flags, other weights of the same width, another class list) and
records what it may change; a split is kept only with the parameters that made it; SIGTERM and
SIGINT (to the whole process group, as a terminal or SLURM sends them) finish the step, save and
exit 143 / 130, and the resumed run ends bitwise where an uninterrupted one ends, under torchrun
too; a real full tmpfs during checkpoint writes and a real file-size limit (RLIMIT_FSIZE) during
log writes give one line naming the file and keep the previous good files; outputs get the
permissions of the user's umask. References are independent: uninterrupted runs of the same
command, the files' own bytes, `os.stat`.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import REPO, mounted_tmpfs, reference_run, tiny_weights, torchrun_command
from conftest import TINY_CONFIG as TINY
from conftest import one_line as _one_line

from pomp.cli import main
from pomp.data.synthetic import make_class_folders
from pomp.prompt import Prompt
from pomp.train import read_checkpoint_state

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(torch.get_num_threads()),
       "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


# --- helpers -----------------------------------------------------------------------------------
def pretrain_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--backbone", TINY, "--train-root", str(data / "images"), "--names", str(data / "names.txt"),
            "--shots", "4", "--val-per-class", "2", "--classes-per-step", "4", "--batch-size", "4", "--views", "2",
            "--epochs", "2", "--num-workers", "0", "--device", "cpu", "--out-dir", str(out), "--no-progress",
            "--lr", "0.05", *extra]


def start(argv: list[str], stderr_path: Path, **popen) -> subprocess.Popen:
    with open(stderr_path, "w") as err:
        return subprocess.Popen([sys.executable, "-m", "pomp.cli", *argv], cwd=REPO, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=err, **popen)


def run_cli(argv: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pomp.cli", *argv], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def wait_until(condition, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def log_lines(out: Path) -> int:
    try:
        return (out / "log.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def one_line(err: str, prefix: str) -> str:
    return _one_line(err, prefix, ignore="No pretrained weights")  # open_clip's warning, not ours


def step_records(out: Path) -> list[int]:
    lines = (out / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is whole JSON
    return [r["step"] for r in records if "loss" in r]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --- one run per out-dir -----------------------------------------------------------------------
@pytest.mark.slow
def test_two_concurrent_runs_one_is_refused_naming_the_holder(class_folders, tmp_path, capsys):
    out = tmp_path / "run"
    first_argv = pretrain_argv(class_folders, out, "--epochs", "40", "--batch-size", "1", "--no-validate",
                               "--log-every", "1", "--checkpoint-every", "2")
    first = start(first_argv, tmp_path / "first.txt")  # a real process holds the folder
    try:
        wait_until(lambda: (out / "checkpoint.safetensors").exists(), first, "the first run's checkpoint")
        config = (out / "config.json").read_bytes()
        rc = main(pretrain_argv(class_folders, out, "--lr", "0.5", "--seed", "2"))  # the second run, here
        line = one_line(capsys.readouterr().err, "pomp pretrain: error: ")
        assert rc == 2
        assert f"pid {first.pid} on {socket.gethostname()}" in line and "another run is using this --out-dir" in line
        assert (out / "config.json").read_bytes() == config  # the second run wrote nothing
        assert first.poll() is None
        first.send_signal(signal.SIGKILL)  # the holder dies: its lock file stays behind, the kernel's lock does not
    finally:
        first.kill()
        first.wait()
    assert (out / "run.lock").is_file() and str(first.pid) in (out / "run.lock").read_text()
    steps = step_records(out)
    assert steps == sorted(set(steps))  # one run's steps, each once

    # the stale lock is taken over: a resume runs (a few more steps: --max-steps may always change)
    done = read_checkpoint_state(out / "checkpoint.safetensors")["global_step"]
    assert main([*first_argv, "--resume", "--max-steps", str(done + 2)]) == 0, capsys.readouterr().err
    assert not (out / "run.lock").exists()  # released when the run ended
    steps = step_records(out)
    assert steps == list(range(len(steps))) and steps[-1] == done + 1  # no step logged twice, none missing
    resumes = json.loads((out / "config.json").read_text())["resumes"]
    assert resumes[-1]["step"] == done and resumes[-1]["changed"] == {"max_steps": [None, done + 2]}


# --- resume resumes the same run ---------------------------------------------------------------
def test_resume_with_changed_flags_is_refused_listing_each_difference(class_folders, tmp_path, capsys):
    weights = tiny_weights(tmp_path / "weights.pt", seed=1)
    out = tmp_path / "run"
    base = [*pretrain_argv(class_folders, out), "--pretrained", str(weights)]
    assert main([*base, "--max-steps", "2"]) == 0
    capsys.readouterr()
    before = snapshot(out)
    checkpoint = str(out / "checkpoint.safetensors")
    refused = [
        (["--batch-size", "8", "--lr", "0.5", "--seed", "2", "--no-local-correction"],
         ["batch_size 4 -> 8", "local_correction true -> false", "lr 0.05 -> 0.5", "seed 0 -> 2"]),
        (["--shots", "3", "--split-seed", "1"], ["shots 4 -> 3", "split_seed 0 -> 1"]),
        (["--classes-per-step", "3", "--views", "1"], ["classes_per_step 4 -> 3", "views 2 -> 1"]),
        (["--epochs", "3"], ["epochs 2 -> 3", "--allow-change epochs"]),
        (["--pretrained", str(tiny_weights(tmp_path / "other.pt", seed=2))], ["pretrained"]),
        # cached views are drawn once, the image tower's anew each epoch: another run, wherever the cache is
        (["--feature-cache", str(tmp_path / "cache")], ["feature_cache_used false -> true"]),
    ]
    for extra, needles in refused:
        rc = main([*base, "--resume", "--max-steps", "4", *extra])
        line = one_line(capsys.readouterr().err, "pomp pretrain: error: ")
        assert rc == 2 and checkpoint in line and "--resume would continue another run" in line, line
        for needle in needles:
            assert needle in line, (needle, line)
        assert snapshot(out) == before  # nothing written, the lock released

    # another backbone of the same width under the same name and file: its weights give it away
    tiny_weights(weights, seed=3)
    rc = main([*base, "--resume", "--max-steps", "4"])
    line = one_line(capsys.readouterr().err, "pomp pretrain: error: ")
    assert rc == 2 and "backbone_weights" in line, line
    tiny_weights(weights, seed=1)  # the run's own weights again (same seed: the same tensors)

    # what may change: how the run executes freely, the schedule's length when allowed; all recorded
    assert main([*base, "--resume", "--max-steps", "4", "--epochs", "3", "--allow-change", "epochs",
                 "--log-every", "3", "--checkpoint-every", "1"]) == 0
    capsys.readouterr()
    changed = {"allow_change": ["", "epochs"], "checkpoint_every": [200, 1], "epochs": [2, 3], "log_every": [10, 3],
               "max_steps": [2, 4]}
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 3 and [r["changed"] for r in config["resumes"]] == [changed]
    state = read_checkpoint_state(out / "checkpoint.safetensors")
    assert state["global_step"] == 4 and state["resumes"] == config["resumes"]
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"event"' in line]
    assert events == [{"event": "resume", **config["resumes"][0]}]
    assert json.loads((out / "prompt.json").read_text())["resumes"] == config["resumes"]


def _copy_tree(src: Path, dst: Path) -> None:
    """`cp -r` as a job script copies data to a node-local disk: new files, new modification times."""
    shutil.copytree(src, dst, copy_function=shutil.copy)


def test_resume_from_a_moved_copy_of_the_data_and_weights_is_the_same_run(class_folders, tmp_path, capsys):
    """A requeued SLURM job that copies its data and weights to node-local disk resumes with other paths:
    the same run (same weights, class list, files), warned and recorded, ending bitwise where an
    uninterrupted run ends. A copy that is not the same (a file missing, other weights) is refused."""
    weights = tiny_weights(tmp_path / "weights.pt", seed=1)
    full = [*pretrain_argv(class_folders, tmp_path / "full"), "--pretrained", str(weights), "--log-every", "1"]
    assert main(full) == 0
    expected = Prompt.load(tmp_path / "full" / "prompt.safetensors").ctx
    out = tmp_path / "run"
    argv = [a if a != str(tmp_path / "full") else str(out) for a in full]
    assert main([*argv, "--max-steps", "5"]) == 0
    capsys.readouterr()

    node = tmp_path / "node-local"
    _copy_tree(class_folders / "images", node / "images")
    shutil.copy(class_folders / "names.txt", node / "names.txt")
    shutil.copy(weights, node / "model.pt")
    moved = pretrain_argv(node, out, "--pretrained", str(node / "model.pt"), "--log-every", "1")

    # not the same: one training image missing from the copy, or other weights under the copy's name
    first_train_image = json.loads((out / "split.json").read_text())["train"][0][0]
    (node / "images" / first_train_image).rename(node / "images" / (first_train_image + ".moved"))
    assert main([*moved, "--resume"]) == 2
    assert "'train' images missing" in one_line(capsys.readouterr().err, "pomp pretrain: error: ")
    (node / "images" / (first_train_image + ".moved")).rename(node / "images" / first_train_image)
    tiny_weights(node / "model.pt", seed=2)
    assert main([*moved, "--resume"]) == 2
    line = one_line(capsys.readouterr().err, "pomp pretrain: error: ")
    assert "; pretrained \"..." in line and "/weights.pt\" -> \"..." in line and "node-local/model.pt\"; " in line, line
    assert "backbone_weights" in line, line
    shutil.copy(weights, node / "model.pt")

    with pytest.warns(UserWarning, match=r"--resume: --names .* -> .*; --pretrained .* -> .*model\.pt; --train-root "
                                         r".* -> .*node-local/images: taken as the same run"):
        assert main([*moved, "--resume"]) == 0
    assert torch.equal(Prompt.load(out / "prompt.safetensors").ctx, expected)
    assert step_records(out) == list(range(12))
    changed = json.loads((out / "config.json").read_text())["resumes"][0]["changed"]
    assert changed["train_root"] == [str(class_folders / "images"), str(node / "images")]
    assert changed["pretrained"] == [str(weights), str(node / "model.pt")]


def _as_written_before_stored_settings(out: Path) -> None:
    """The run folder as pomp wrote it before checkpoints stored their settings (commit 53c69e5): the state
    without `run`/`resumes` in the checkpoint header, config.json without the keys added since."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = out / "checkpoint.safetensors"
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        state = json.loads(f.metadata()["state"])
    old_keys = ("global_step", "best_val_acc1", "best_epoch", "bad_steps", "skipped_images", "history")
    save_file(tensors, str(path), metadata={"state": json.dumps({k: state[k] for k in old_keys})})
    config = json.loads((out / "config.json").read_text())
    for key in ("allow_change", "skipped_files", "resumes"):
        config.pop(key)
    (out / "config.json").write_text(json.dumps(config, indent=2))


def test_resume_of_a_run_from_before_stored_settings_checks_its_config(class_folders, tmp_path, capsys):
    """A checkpoint of an older pomp has no settings; the config.json that pomp wrote at the run's start has
    its recipe: a change is refused as for a new checkpoint, the same recipe resumes bitwise."""
    argv = pretrain_argv(class_folders, tmp_path / "full")
    assert main(argv) == 0
    out = tmp_path / "old"
    argv = [a if a != str(tmp_path / "full") else str(out) for a in argv]
    assert main([*argv, "--max-steps", "5"]) == 0
    _as_written_before_stored_settings(out)
    capsys.readouterr()
    assert main([*argv, "--resume", "--lr", "0.5", "--views", "1"]) == 2
    line = one_line(capsys.readouterr().err, "pomp pretrain: error: ")
    assert "--resume would continue another run (lr 0.05 -> 0.5; views 2 -> 1)" in line, line
    with pytest.warns(UserWarning, match="written by an older pomp without its settings; they were compared with "
                                         "its config.json, its weights and data cannot be"):
        assert main([*argv, "--resume"]) == 0
    assert torch.equal(Prompt.load(out / "prompt.safetensors").ctx,
                       Prompt.load(tmp_path / "full" / "prompt.safetensors").ctx)


@pytest.mark.slow
def test_resume_with_nothing_to_resume_starts_a_new_run_and_says_so(class_folders, tmp_path):
    done = run_cli([*pretrain_argv(class_folders, tmp_path / "typo"), "--resume", "--max-steps", "1"])
    assert done.returncode == 0, done.stderr[-2000:]
    warned = [line for line in done.stderr.splitlines() if line.startswith("pomp pretrain: warning: --resume")]
    assert warned == [f"pomp pretrain: warning: --resume: {tmp_path / 'typo'} holds no checkpoint.safetensors, "
                      f"nothing to resume: starting a new run"], done.stderr
    assert read_checkpoint_state(tmp_path / "typo" / "checkpoint.safetensors")["resumes"] == []


# --- the k-shot split belongs to its run -------------------------------------------------------
def _stop_after_the_split(argv: list[str], capsys, monkeypatch) -> None:
    """A run stopped before any checkpoint, after writing its split: SIGTERM (SLURM's preemption) arrives while
    its backbone loads. (A run refused there leaves nothing: `test_a_refused_pretrain_leaves_no_file`.)"""
    import pomp.train

    load = pomp.train.load_backbone

    def preempted_while_loading(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return load(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(pomp.train, "load_backbone", preempted_while_loading)
        rc = main(argv)
    assert rc == 143, capsys.readouterr().err
    capsys.readouterr()


def test_a_refused_pretrain_leaves_no_file(class_folders, tmp_path, capsys):
    """Refused after its split was written (the backbone cannot load): a new run's files go, a resumed run's stay
    byte for byte."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    bad = [*_pretrain_args(class_folders)[:-1], "no-such-model-xyz", "--out-dir", str(out)]
    assert main(bad) == 2
    assert "no-such-model-xyz" in one_line(capsys.readouterr().err, "pomp pretrain: error: ")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(pretrain_argv(class_folders, out, "--max-steps", "1")) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"split.json", "split_params.json", "checkpoint.safetensors", "config.json"} <= set(before)
    assert main([*bad, "--resume"]) == 2
    capsys.readouterr()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_stale_split_is_rebuilt_for_a_new_run(class_folders, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    _stop_after_the_split(pretrain_argv(class_folders, out, "--shots", "2"), capsys, monkeypatch)
    assert (out / "split.json").is_file() and not (out / "checkpoint.safetensors").exists()
    Prompt(torch.zeros(4, 48)).save(out / "prompt_best.safetensors")  # as if that run had ended an epoch
    with pytest.warns(UserWarning, match="replacing split.json, split_params.json, prompt_best.safetensors, "
                                         "prompt_best.json of an earlier run that stopped before its first checkpoint"):
        assert main(pretrain_argv(class_folders, out, "--shots", "4", "--max-steps", "1")) == 0
    assert not (out / "prompt_best.safetensors").exists()  # step 1 of 12: no epoch ended, no best prompt yet
    split = json.loads((out / "split.json").read_text())
    per_class = [sum(1 for _, label, _ in split["train"] if label == c) for c in range(6)]
    assert per_class == [4] * 6  # the new --shots, not the stale split's 2
    assert json.loads((out / "prompt.json").read_text())["recipe"]["shots"] == 4
    assert json.loads((out / "split_params.json").read_text())["shots"] == 4


def test_fixing_the_names_file_after_a_stopped_run_works(class_folders, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    names = class_folders / "names.txt"
    names.write_text(names.read_text().replace("golden retriever", "golden retreiver"))  # a typo
    _stop_after_the_split(pretrain_argv(class_folders, out), capsys, monkeypatch)
    names.write_text(names.read_text().replace("golden retreiver", "golden retriever"))  # fixed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(pretrain_argv(class_folders, out, "--max-steps", "1")) == 0
    assert json.loads((out / "split.json").read_text())["train"][0][2] == "golden retriever"

    # with a checkpoint, the same change is another run: refused on --resume, naming the class
    names.write_text(names.read_text().replace("golden retriever", "labrador"))
    rc = main(pretrain_argv(class_folders, out, "--resume", "--max-steps", "2"))
    line = one_line(capsys.readouterr().err, "pomp pretrain: error: ")
    assert rc == 2 and "class 0 is 'golden retriever' in the split, 'labrador' now" in line, line


def test_outputs_of_a_finished_run_without_checkpoint_are_not_overwritten(class_folders, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(pretrain_argv(class_folders, out, "--max-steps", "1")) == 0
    (out / "checkpoint.safetensors").unlink()
    prompt = (out / "prompt.safetensors").read_bytes()
    rc = main(pretrain_argv(class_folders, out))
    line = one_line(capsys.readouterr().err, "pomp pretrain: error: ")
    assert rc == 2 and "prompt.safetensors: output of a finished run" in line
    assert (out / "prompt.safetensors").read_bytes() == prompt


# --- signals -----------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.slow
def test_signal_saves_the_step_and_resume_equals_an_uninterrupted_run(class_folders, tmp_path, capsys, sig):
    argv = pretrain_argv(class_folders, tmp_path / "full", "--batch-size", "1", "--checkpoint-every", "1000",
                         "--log-every", "1", "--num-workers", "1")
    out = tmp_path / "stopped"
    expected, argv = reference_run(argv, tmp_path / "full", out)
    capsys.readouterr()
    # its own process group, signalled as a whole: the loader worker gets the signal too (Ctrl-C, SLURM)
    proc = start(argv, tmp_path / "stderr.txt", start_new_session=True)
    try:
        wait_until(lambda: log_lines(out) >= 3, proc, "training steps")
        os.killpg(proc.pid, sig)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = (tmp_path / "stderr.txt").read_text()
    assert rc == 128 + sig, err
    line = one_line(err, f"pomp pretrain: stopped by {sig.name} after step ")
    step = read_checkpoint_state(out / "checkpoint.safetensors")["global_step"]
    assert 3 <= step < 48  # 2 epochs x 24 steps: stopped mid-run
    assert line == (f"pomp pretrain: stopped by {sig.name} after step {step} of 48; checkpoint of step {step}: "
                    f"{out / 'checkpoint.safetensors'} (continue with --resume)")
    assert step_records(out)[-1] == step - 1  # the step it finished is logged, nothing after it
    assert not (out / "prompt.safetensors").exists()  # stopped, not finished

    assert main(argv + ["--resume"]) == 0
    assert torch.equal(Prompt.load(out / "prompt.safetensors").ctx, expected)
    assert step_records(out) == list(range(48))


@pytest.mark.slow
def test_hangup_and_scheduler_warnings_save_like_sigterm(class_folders, tmp_path, capsys):
    """A closed terminal (SIGHUP), SLURM's `--signal` / SGE's `-notify` warnings (SIGUSR1, SIGUSR2) and the
    CPU-time limit (SIGXCPU) kill a process by default: each must finish the step and save instead."""
    argv = pretrain_argv(class_folders, tmp_path / "full", "--batch-size", "1", "--checkpoint-every", "1000",
                         "--log-every", "1", "--num-workers", "1")
    out = tmp_path / "stopped"
    expected, argv = reference_run(argv, tmp_path / "full", out)
    capsys.readouterr()
    steps_before = 0
    for i, sig in enumerate((signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGXCPU)):
        proc = start(argv + (["--resume"] if i else []), tmp_path / "stderr.txt", start_new_session=True)
        try:
            wait_until(lambda: log_lines(out) >= steps_before + i + 3, proc, "training steps")  # + resume events
            os.killpg(proc.pid, sig)  # the process group: the loader worker gets it too
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err = (tmp_path / "stderr.txt").read_text()
        assert rc == 128 + sig, err
        step = read_checkpoint_state(out / "checkpoint.safetensors")["global_step"]
        assert one_line(err, "pomp pretrain: ") == (
            f"pomp pretrain: stopped by {sig.name} after step {step} of 48; checkpoint of step {step}: "
            f"{out / 'checkpoint.safetensors'} (continue with --resume)")
        assert step_records(out)[-1] == step - 1 and step < 48
        steps_before = step
    assert main(argv + ["--resume"]) == 0
    assert torch.equal(Prompt.load(out / "prompt.safetensors").ctx, expected)
    assert step_records(out) == list(range(48))


@pytest.mark.parametrize("launch", ["nohup", "background job of a script"])
@pytest.mark.slow
def test_a_signal_ignored_at_start_stays_ignored(class_folders, tmp_path, launch):
    """`nohup` ignores SIGHUP; a non-interactive shell starts `cmd &` with SIGINT ignored (so Ctrl-C on the
    script spares it). A run started that way must keep running through that signal, as Python itself does."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "pomp.cli", *pretrain_argv(class_folders, out, "--batch-size", "1", "--epochs", "1",
                                                             "--log-every", "1", "--num-workers", "1")]
    if launch == "nohup":
        command, sig = ["nohup", *argv], signal.SIGHUP
    else:
        command, sig = ["sh", "-c", " ".join(f"'{a}'" for a in argv) + " & wait"], signal.SIGINT
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
    try:
        wait_until(lambda: log_lines(out) >= 3, proc, "training steps")
        os.killpg(proc.pid, sig)  # the whole group, as a terminal does
        proc.wait(timeout=120)
        deadline = time.monotonic() + 120
        while not (out / "summary.json").exists() and (out / "run.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # `sh` itself may die of the SIGINT; the run it started goes on
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = (tmp_path / "stderr.txt").read_text()
    assert json.loads((out / "summary.json").read_text())["finished"], err[-2000:]
    assert "stopped by" not in err
    assert step_records(out) == list(range(24))  # 6 classes x 4 shots, one image per step


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


@pytest.mark.slow
def test_sigterm_to_one_torchrun_rank_stops_every_rank_at_the_same_step(class_folders, tmp_path):
    if not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists():
        pytest.skip("needs /proc/PID/task/PID/children to find the ranks")
    out = tmp_path / "ddp"
    args = pretrain_argv(class_folders, out, "--batch-size", "1", "--checkpoint-every", "1000", "--log-every", "1")
    env = {**ENV, "OMP_NUM_THREADS": "1"}

    def torchrun(*extra: str) -> list[str]:
        return torchrun_command([*args, *extra])

    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(torchrun(), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_until(lambda: log_lines(out) >= 3, proc, "training steps", timeout=180)
        ranks = _children(proc.pid)
        assert len(ranks) == 2, ranks
        os.kill(max(ranks), signal.SIGTERM)  # one rank only: the other learns it through the all-reduce
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = (tmp_path / "stderr.txt").read_text()
    lines = [line[line.index("pomp pretrain: "):] for line in err.splitlines() if "stopped by SIGTERM" in line]
    stopped = sorted(set(lines))
    step = read_checkpoint_state(out / "checkpoint.safetensors")["global_step"]
    assert len(lines) == 2, err[-3000:]
    assert stopped == [f"pomp pretrain: stopped by SIGTERM after step {step} of 24; checkpoint of step {step}: "
                       f"{out / 'checkpoint.safetensors'} (continue with --resume)"], err[-3000:]
    resumed = subprocess.run(torchrun("--resume"), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert step_records(out) == list(range(24))  # 24 images / (1 per rank x 2 ranks) x 2 epochs, each step once
    assert json.loads((out / "summary.json").read_text())["finished"]


# --- full disks and write limits ---------------------------------------------------------------
@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 2 MiB tmpfs (needs root and `mount`)."""
    with mounted_tmpfs(tmp_path / "tmpfs", "2m", "tests/test_reliability.py simulates ENOSPC") as mount:
        yield mount


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as err:
            assert err.errno == errno.ENOSPC
        try:
            while True:
                f.write(b"\0")
        except OSError as err:
            assert err.errno == errno.ENOSPC
    return filler


@pytest.mark.slow
def test_full_file_system_during_checkpoint_writes(class_folders, tmp_path, capsys, tiny_tmpfs):
    argv = pretrain_argv(class_folders, tmp_path / "full", "--batch-size", "1", "--checkpoint-every", "1",
                         "--log-every", "1000", "--epochs", "1", "--no-validate")
    out = tiny_tmpfs / "run"
    expected, argv = reference_run(argv, tmp_path / "full", out)
    capsys.readouterr()
    proc = start(argv, tmp_path / "stderr.txt")
    try:
        wait_until(lambda: (out / "checkpoint.safetensors").exists(), proc, "the first checkpoint")
        filler = _fill(tiny_tmpfs)  # the disk fills up mid-run
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = (tmp_path / "stderr.txt").read_text()
    line = one_line(err, "pomp pretrain: error: ")
    assert rc == 2
    assert line.startswith(f"pomp pretrain: error: {out / 'checkpoint.safetensors'}: could not be written (No space "
                           f"left on device); the previous version is unchanged"), line
    kept = read_checkpoint_state(out / "checkpoint.safetensors")["global_step"]
    assert kept >= 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    for record in (out / "log.jsonl").read_text().splitlines():
        json.loads(record)

    filler.unlink()  # space again: the run resumes from the last good checkpoint, ending where it would have
    assert main(argv + ["--resume"]) == 0
    assert torch.equal(Prompt.load(out / "prompt.safetensors").ctx, expected)


def test_a_run_that_made_its_feature_cache_resumes_bitwise(class_folders, tmp_path, capsys):
    """The first process of a run computes the cache, a resumed one reads it back: both must train on the
    same (stored, float16) features, or the resumed run ends elsewhere than an uninterrupted one. Where
    the cache folder is may change on resume (it moved here)."""
    full = pretrain_argv(class_folders, tmp_path / "full", "--feature-cache", str(tmp_path / "cache-full"))
    assert main(full) == 0
    stopped = pretrain_argv(class_folders, tmp_path / "stopped", "--feature-cache", str(tmp_path / "cache-stopped"))
    assert main([*stopped, "--max-steps", "5"]) == 0
    shutil.move(tmp_path / "cache-stopped", tmp_path / "cache-moved")
    assert main([*stopped, "--resume", "--feature-cache", str(tmp_path / "cache-moved")]) == 0
    assert not (tmp_path / "cache-stopped").exists() and len(list((tmp_path / "cache-moved" / "train").iterdir())) == 1
    capsys.readouterr()
    assert torch.equal(Prompt.load(tmp_path / "stopped" / "prompt.safetensors").ctx,
                       Prompt.load(tmp_path / "full" / "prompt.safetensors").ctx)


@pytest.fixture
def read_only_view(tmp_path):
    """`read_only_view(folder)`: the folder seen through a real read-only bind mount (needs root and `mount`)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a read-only bind mount needs root")
    mounted = []

    def make(folder: Path) -> Path:
        view = tmp_path / f"{folder.name}-read-only"
        view.mkdir()
        for cmd in (["mount", "--bind", str(folder), str(view)], ["mount", "-o", "remount,ro,bind", str(view)]):
            done = subprocess.run(cmd, capture_output=True)
            if done.returncode != 0:
                pytest.skip(f"cannot bind-mount read-only here: {done.stderr.decode(errors='replace').strip()}")
            if cmd[1] == "--bind":
                mounted.append(view)
        return view

    yield make
    for view in mounted:
        subprocess.run(["umount", "-l", str(view)], capture_output=True)


def test_a_shared_read_only_feature_cache_is_used_and_a_miss_refused(class_folders, tmp_path, capsys,
                                                                      read_only_view):
    """A team's cache folder on a read-only mount: a run whose features it holds uses it as it is (the same
    prompt as with the writable folder); one it does not hold is refused in one line before computing."""
    cache = tmp_path / "cache"
    argv = pretrain_argv(class_folders, tmp_path / "writer", "--feature-cache", str(cache), "--max-steps", "3")
    assert main(argv) == 0
    shared = read_only_view(cache)
    assert not os.access(shared, os.W_OK) or subprocess.run(["touch", str(shared / "x")]).returncode != 0
    reader = tmp_path / "reader"
    assert main([a if a != str(tmp_path / "writer") else str(reader) for a in argv[:-4]]
                + ["--feature-cache", str(shared), "--max-steps", "3"]) == 0
    capsys.readouterr()
    assert torch.equal(Prompt.load(reader / "prompt.safetensors").ctx,
                       Prompt.load(tmp_path / "writer" / "prompt.safetensors").ctx)

    rc = main(["eval", "--backbone", TINY, "--data", str(class_folders / "images"), "--baseline", "single",
               "--feature-cache", str(shared), "--out-dir", str(tmp_path / "eval"), "--device", "cpu"])
    line = one_line(capsys.readouterr().err, "pomp eval: error: ")
    assert rc == 2 and line == (f"pomp eval: error: {shared / 'images'}: feature cache folder holds no features of "
                                f"this backbone and data and is not writable (Read-only file system)"), line


def test_full_file_system_during_shard_and_cache_writes(class_folders, tmp_path, capsys, tiny_tmpfs):
    filler = _fill(tiny_tmpfs)
    names = str(class_folders / "names.txt")
    rc = main(["data", "shard", "--train-root", str(class_folders / "images"), "--names", names, "--out-dir",
               str(tiny_tmpfs / "shards"), "--no-progress"])
    line = one_line(capsys.readouterr().err, "pomp data: error: ")
    assert rc == 2 and line.startswith(f"pomp data: error: {tiny_tmpfs / 'shards' / 'train-000000.tar'}: could not "
                                       f"be written (No space left on device)"), line
    assert not (tiny_tmpfs / "shards").exists()  # no partial shard, and the folder the refused command made
    # a feature cache that cannot be published: one line naming the cache folder, nothing published
    os.truncate(filler, filler.stat().st_size - 2 * 4096)  # two free pages: features.npy and labels.npy fit, not meta
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["eval", "--backbone", TINY, "--baseline", "single", "--data", str(class_folders / "images"),
                   "--feature-cache", str(tiny_tmpfs / "cache"), "--out-dir", str(tmp_path / "eval"),
                   "--num-workers", "0", "--device", "cpu"])
    err = capsys.readouterr().err
    line = one_line(err.split("\r")[-1], "pomp eval: error: ")  # after the progress bar's redraws
    assert rc == 2 and f"{tiny_tmpfs / 'cache' / 'images'}/" in line and "No space left on device" in line, line
    assert "nothing was published" in line
    assert not list((tiny_tmpfs / "cache" / "images").iterdir())


def test_full_file_system_during_embedding_writes(tmp_path, capsys, tiny_tmpfs):
    """`pomp embed` on a full disk: one line naming the file and why it could not be written, nothing published."""
    filler = _fill(tiny_tmpfs)
    os.truncate(filler, filler.stat().st_size - 4096)  # one free page: the write probe fits, the embeddings do not
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("".join(f"class {i}\n" for i in range(200)))  # [200, D] float32: more than a page
    out = tiny_tmpfs / "embeddings"
    rc = main(["embed", "--backbone", TINY, "--classes", str(vocab), "--out-dir", str(out), "--device", "cpu"])
    line = one_line(capsys.readouterr().err, "pomp embed: error: ")
    assert rc == 2 and line.startswith(f"pomp embed: error: {out / 'class_embeddings.npy'}: could not be written (No "
                                       f"space left on device)"), line  # the errno's words, not numpy's byte counts
    assert not out.exists()  # nothing published, and the folder the refused command made is gone


def test_npy_written_through_python_is_numpys_own_file(tmp_path):
    """`pomp.io.write_npy` (Python's writes, so a full disk says why) gives the bytes `numpy.save` gives."""
    import io

    import numpy as np

    from pomp.io import write_npy

    for array in (np.arange(12, dtype=np.float16).reshape(3, 4), np.arange(5), np.zeros((0, 7), np.float32)):
        with open(tmp_path / "a.npy", "wb") as f:
            write_npy(f, array)
        reference = io.BytesIO()
        np.save(reference, array)
        assert (tmp_path / "a.npy").read_bytes() == reference.getvalue()
        assert np.array_equal(np.load(tmp_path / "a.npy"), array)


@pytest.mark.slow
def test_file_size_limit_during_a_log_write_leaves_no_partial_line(class_folders, tmp_path):
    out = tmp_path / "run"
    argv = pretrain_argv(class_folders, out, "--batch-size", "1", "--log-every", "1", "--checkpoint-every", "1000",
                         "--epochs", "4", "--no-validate")
    proc = start(argv, tmp_path / "stderr.txt")
    try:
        wait_until(lambda: log_lines(out) >= 5, proc, "log records")
        size = (out / "log.jsonl").stat().st_size
        limit = size + 30  # room for a third of the next record, as a nearly full disk would give
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: EFBIG
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = (tmp_path / "stderr.txt").read_text()
    line = one_line(err, "pomp pretrain: error: ")
    assert rc == 2
    assert line.startswith(f"pomp pretrain: error: {out / 'log.jsonl'}: could not be written (File too large)"), line
    data = (out / "log.jsonl").read_bytes()
    assert data.endswith(b"\n")  # the partial record was cut back
    steps = [json.loads(record)["step"] for record in data.decode().splitlines()]
    assert steps == list(range(len(steps)))


APPEND_UNDER_A_LIMIT = """
import resource, sys
from pomp.io import append_line
path = sys.argv[1]
size = len(open(path, "rb").read())
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10, size + 10))  # room for 10 bytes of the next line
try:
    append_line(path, '{"step": 2, "loss": 0.123456789, "note": "a record longer than ten bytes"}')
except OSError as err:
    print(err)
"""


def test_a_partial_append_is_cut_back(tmp_path):
    """A real short write: RLIMIT_FSIZE lets 10 bytes through, then EFBIG; the file is as before."""
    log = tmp_path / "log.jsonl"
    log.write_bytes(b'{"step": 0}\n{"step": 1}\n')
    done = subprocess.run([sys.executable, "-c", APPEND_UNDER_A_LIMIT, str(log)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == f"{log}: could not be written (File too large); the line was not added", done
    assert log.read_bytes() == b'{"step": 0}\n{"step": 1}\n'


def test_resume_repairs_a_torn_last_log_line(class_folders, tmp_path, capsys):
    out = tmp_path / "run"
    argv = pretrain_argv(class_folders, out, "--log-every", "1", "--checkpoint-every", "2", "--no-validate")
    assert main([*argv, "--max-steps", "3"]) == 0  # checkpoint at step 3
    with open(out / "log.jsonl", "ab") as f:  # records of a step after the checkpoint, the last one torn
        f.write(b'{"step": 3, "epoch": 0, "loss": 1.0, "lr": 1e-05, "images_per_s": 1.0}\n{"step": 4, "ep')
    assert main([*argv, "--resume"]) == 0
    capsys.readouterr()
    lines = (out / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records if "loss" in r] == list(range(12))
    assert [r["step"] for r in records if "event" in r] == [3]


# --- files readable like any other -------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_follow_the_umask(class_folders, tmp_path, umask):
    old = os.umask(umask)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main(pretrain_argv(class_folders, tmp_path / "run", "--max-steps", "1")) == 0
        reference = tmp_path / "made-by-open"
        reference.write_text("x")  # what any program gets under this umask
    finally:
        os.umask(old)
    expected = stat.S_IMODE(reference.stat().st_mode)
    assert expected == 0o666 & ~umask
    for name in ("prompt.safetensors", "prompt.json", "checkpoint.safetensors", "config.json", "split.json",
                 "log.jsonl", "summary.json"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == expected, name


# --- options checked before anything is written ------------------------------------------------
@pytest.mark.parametrize("extra,needle", [
    (["--classes-per-step", "1"], "--classes-per-step 1 leaves no negative class"),
    (["--split-file", "x.json"], "--train-root and --split-file: give one source of training data"),
    (["--ctx-init", " "], "--ctx-init must hold words"),
    (["--ctx-init", ""], "--ctx-init must hold words"),
    (["--image-root", "x"], "--image-root only applies with --split-file"),
    (["--val-shards", "v-{0..1}.tar"], "--val-shards only applies with --train-shards"),
    (["--allow-change", "lr"], "--allow-change 'lr': only device, epochs may be changed"),
])
def test_contradictory_or_useless_options_are_refused_before_anything(class_folders, tmp_path, capsys, extra,
                                                                      needle):
    out = tmp_path / "deep" / "run"
    rc = main(pretrain_argv(class_folders, out, *extra))
    line = one_line(capsys.readouterr().err, "pomp pretrain: error: ")
    assert rc == 2 and needle in line, line
    assert not (tmp_path / "deep").exists()


def test_validation_with_nothing_left_after_the_shots_is_refused(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", num_classes=3, per_class=4)
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(pretrain_argv(data, out, "--val-per-class", "50"))
    line = one_line(capsys.readouterr().err, "pomp pretrain: error: ")
    assert rc == 2 and "--val-per-class 50 leaves no validation image: no class holds more than --shots 4" in line
    assert not out.exists()
    rc = main(["data", "split", "--train-root", str(data / "images"), "--shots", "4", "--out", str(tmp_path / "s" /
                                                                                                  "split.json")])
    line = one_line(capsys.readouterr().err, "pomp data: error: ")
    assert rc == 2 and "--val-per-class 50 leaves no validation image" in line and not (tmp_path / "s").exists()


def test_pretrain_with_no_arguments_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain"]) == 2
    assert "give the training data" in one_line(capsys.readouterr().err, "pomp pretrain: error: ")
    assert list(tmp_path.iterdir()) == []


def _pretrain_args(data: Path) -> list[str]:
    """`pretrain_argv` without --out-dir (the refusal test adds its own) and with --backbone last."""
    argv = pretrain_argv(data, Path("unused"))
    i = argv.index("--out-dir")
    argv = argv[:i] + argv[i + 2:]
    i = argv.index("--backbone")
    return argv[:i] + argv[i + 2:] + ["--backbone", TINY]


def _refused_commands(data: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    vocab = tmp / "vocab.txt"
    vocab.write_text("cat\ndog\n")
    long_names = tmp / "long_names.txt"  # the last class's name is longer than the text context
    lines = (data / "names.txt").read_text().splitlines()
    long_names.write_text("\n".join(lines[:-1] + [lines[-1].split("\t")[0] + "\t" + " ".join(["tabby"] * 90)]) + "\n")
    missing = str(tmp / "missing")
    return {
        "eval-no-prompt": (["eval", "--backbone", TINY, "--data", str(data / "images")], "give --prompt"),
        "eval-missing-data": (["eval", "--backbone", TINY, "--baseline", "single", "--data", missing], "not found"),
        "eval-same-data-twice": (["eval", "--backbone", TINY, "--baseline", "single", "--data", str(data / "images"),
                                  "--data", str(data / "images") + "/"], "dataset given twice"),
        "eval-names-without-folders": (["eval", "--backbone", TINY, "--baseline", "single", "--data", "x.json",
                                        "--names", str(data / "names.txt")], "--names applies to class folders"),
        "eval-bad-model": (["eval", "--backbone", "no-such-model-xyz", "--baseline", "single", "--data",
                            str(data / "images")], "no-such-model-xyz"),
        "embed-template": (["embed", "--backbone", TINY, "--classes", str(vocab), "--template", "a photo"],
                           "--template must hold {}"),
        "embed-missing-classes": (["embed", "--backbone", TINY, "--classes", missing], "not found"),
        "benchmark-no-prompt": (["benchmark", "--backbone", TINY, "--data-root", missing], "give --prompt"),
        "benchmark-missing-root": (["benchmark", "--backbone", TINY, "--baseline", "single", "--data-root", missing],
                                   "not found"),
        "benchmark-nothing-there": (["benchmark", "--backbone", TINY, "--baseline", "single", "--data-root",
                                     str(data / "images"), "--feature-cache", str(tmp / "new" / "cache")],
                                    "none of the"),
        "embed-bad-model": (["embed", "--backbone", "no-such-model-xyz", "--classes", str(vocab)], "no-such-model-xyz"),
        "features-bad-model": (["features", "--backbone", "no-such-model-xyz", "--data", str(data / "images")],
                               "no-such-model-xyz"),
        "features-two-sources": (["features", "--backbone", TINY, "--split-file", "x.json", "--train-root",
                                  str(data / "images")], "give one source"),
        "features-missing": (["features", "--backbone", TINY, "--data", missing], "not found"),
        "data-split-missing": (["data", "split", "--train-root", missing], "not found"),
        "data-shard-names": (["data", "shard", "--split-file", "x.json", "--names", "n.txt"], "--names only applies"),
        "convert-missing": (["convert", missing + ".pth.tar"], "missing.pth.tar"),
        "segment-missing": (["segment", "--backbone", TINY, "--baseline", "single", "--data", missing], "not found"),
        "pretrain-bad-model": ([*_pretrain_args(data), "--backbone", "no-such-model-xyz"], "no-such-model-xyz"),
        "pretrain-name-too-long": ([*_pretrain_args(data), "--names", str(long_names)], "does not fit"),
        "pretrain-missing-data": (["pretrain", "--backbone", TINY, "--train-root", missing], "not found"),
        "detect-missing": (["detect", "--backbone", TINY, "--baseline", "single", "--annotations", missing + ".json",
                            "--images", missing], "missing"),
    }


REFUSED = ["eval-no-prompt", "eval-missing-data", "eval-same-data-twice", "eval-names-without-folders",
           "eval-bad-model", "embed-template", "embed-missing-classes", "benchmark-no-prompt", "benchmark-missing-root",
           "benchmark-nothing-there", "embed-bad-model", "features-bad-model",
           "features-two-sources",
           "features-missing", "data-split-missing", "data-shard-names", "convert-missing", "segment-missing",
           "detect-missing", "pretrain-bad-model", "pretrain-name-too-long", "pretrain-missing-data"]


@pytest.mark.parametrize("case", REFUSED)
def test_no_command_refused_leaves_an_output_folder(class_folders, tmp_path, capsys, case):
    argv, needle = _refused_commands(class_folders, tmp_path)[case]
    out = tmp_path / "new" / "out"
    if argv[0] == "data" and argv[1] == "split":
        argv = [*argv, "--out", str(out / "split.json")]
    elif argv[0] == "convert":
        argv = [*argv, str(out / "prompt.safetensors")]
    else:
        argv = [*argv, "--out-dir", str(out)]
        if argv[0] in ("eval", "features"):
            argv += ["--feature-cache" if argv[0] == "eval" else "--num-workers",
                     str(tmp_path / "new" / "cache") if argv[0] == "eval" else "0"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            rc = main(argv)
        except SystemExit as exit_info:
            rc = exit_info.code
    err = capsys.readouterr().err
    line = one_line(err, f"pomp {argv[0]}: error: ")
    assert rc == 2 and needle in line, line
    assert not (tmp_path / "new").exists(), sorted(p.name for p in (tmp_path / "new").rglob("*"))
