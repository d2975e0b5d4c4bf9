"""Checkpoints survive any sequence of crashes, and refuse files changed after they were written.

The crash tests kill a forked process (``os._exit``, no clean-up runs, as with ``kill -9``) just before
each file operation of a save in turn; then (the slow test), from every state that leaves, a resumed run is
killed at each operation of its own save. After every crash a complete checkpoint must load, with its checksums.
"""

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
import torch

import minisd
from minisd.errors import CheckpointError
from minisd.models import Autoencoder
from minisd.models import files as model_files
from minisd.train import checkpoint
from minisd.models.files import find_checkpoint
from minisd.train.checkpoint import load_training_state, remove_stale_folders, save_checkpoint
from minisd.train.optim import EMA

TINY = dict(image_shape=(1, 8, 8), latent_dim=2, hidden=[8])
CRASHED = 17

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the crash test forks (POSIX only)")


@functools.cache  # made once in this process, before the forks: each crashed child starts its save at once
def _state(step: int):
    """A model, its EMA and an optimizer with state, all depending on ``step``. Loading a checkpoint into the
    step-0 state overwrites all of it, so sharing one object between calls changes no result."""
    torch.manual_seed(step)
    model = Autoencoder(**TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(  # one step, so that the optimizer has moments to save
        {"image": torch.rand(4, 1, 8, 8)})[0].backward()
    optimizer.step()
    return model, EMA(model, 0.9).model, optimizer


def _save(run_dir, step: int) -> None:
    model, ema_model, optimizer = _state(step)
    save_checkpoint(run_dir, config={"data": {"dataset": "digits"}}, model=model, ema_model=ema_model,
                    optimizer=optimizer, step=step)


def _resume_and_save(run_dir, step: int) -> None:
    """What a resumed run does: load the training state, clear stale folders, later save."""
    model, ema_model, optimizer = _state(0)
    load_training_state(run_dir, model, ema_model, optimizer)
    remove_stale_folders(run_dir)
    _save(run_dir, step)


# Every operation that changes what is on disk under a name, in the checkpoint module and in rmtree.
FILE_OPERATIONS = [(os, "replace"), (os, "unlink"), (os, "rmdir"), (shutil, "rmtree"), (tempfile, "mkdtemp"),
                   (model_files, "write_file")]


def _crash_before_operation(point: int, action, operations=FILE_OPERATIONS) -> bool:
    """Run ``action()`` in a forked child that dies just before its ``point``-th file operation.

    Returns True if it died there, False if ``action`` finished first (then every point is covered).
    """
    pid = os.fork()
    if pid == 0:  # the child: count operations, die at the chosen one, never return into pytest
        try:
            count = [0]
            for owner, name in operations:
                original = getattr(owner, name)

                @functools.wraps(original)
                def counted(*args, __original=original, **kwargs):
                    count[0] += 1
                    if count[0] == point:
                        os._exit(CRASHED)
                    return __original(*args, **kwargs)
                setattr(owner, name, counted)
            action()
        except BaseException:
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, CRASHED), f"the child failed with exit status {code} (not a crash)"
    return code == CRASHED


def _loadable_step(run_dir) -> int:
    """The step of the checkpoint a resume would take; it must load in full, checksums included."""
    folder = find_checkpoint(run_dir)
    assert folder is not None, f"no checkpoint left in {sorted(p.name for p in run_dir.iterdir())}"
    assert isinstance(minisd.load(run_dir), Autoencoder)
    model, ema_model, optimizer = _state(0)
    return load_training_state(run_dir, model, ema_model, optimizer)


def _copy_state(source, target):
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, symlinks=True)


def _crashes_at_each_point(source, target, action) -> Iterator[int]:
    """For each file operation of ``action(target)`` in turn, ``target`` afresh as a copy of ``source``, then left as a
    save killed just before that operation. Yields the operation's number; stops when ``action`` finishes first."""
    for point in range(1, 1000):
        _copy_state(source, target)
        if not _crash_before_operation(point, functools.partial(action, target)):
            return
        yield point


def test_a_complete_checkpoint_survives_a_crash_at_every_point_of_a_save(tmp_path):
    """One crash at each point of one save; the next run's save then completes and clears what was left. (Every
    pair of crashes, a save killed and then its resumed run's save killed, is the slow test below: 364 forks,
    15-30 s.)"""
    base, after = tmp_path / "base", tmp_path / "after"
    _save(base, 5)
    _state(10), _state(15)  # made here, so that every forked save inherits them
    crashes = 0
    for point in _crashes_at_each_point(base, after, lambda run_dir: _save(run_dir, 10)):
        crashes += 1
        assert _loadable_step(after) in (5, 10), point
        _resume_and_save(after, 15)
        assert _loadable_step(after) == 15
        assert [p.name for p in after.iterdir() if p.name != checkpoint.CHECKPOINT_DIR] == [], point
    assert crashes >= 10, "the save should have many crash points; did the patching stop counting?"


@pytest.mark.slow  # 364 forked saves: make test-slow
def test_a_complete_checkpoint_survives_a_crash_at_every_point_of_a_save_twice_in_a_row(tmp_path):
    base, after_first, after_second = tmp_path / "base", tmp_path / "after-first", tmp_path / "after-second"
    _save(base, 5)
    _state(10), _state(15)
    first_crashes = 0
    for first in _crashes_at_each_point(base, after_first, lambda run_dir: _save(run_dir, 10)):
        first_crashes += 1
        resumed_from = _loadable_step(after_first)
        assert resumed_from in (5, 10)
        for second in _crashes_at_each_point(after_first, after_second, lambda run_dir: _resume_and_save(run_dir, 15)):
            assert _loadable_step(after_second) in (resumed_from, 15), (first, second)
        # The run that is not killed finishes its save and clears what the killed ones left.
        _resume_and_save(after_second, 15)
        assert _loadable_step(after_second) == 15
        leftovers = [p.name for p in after_second.iterdir() if p.name != checkpoint.CHECKPOINT_DIR]
        assert leftovers == [], (first, leftovers)
    assert first_crashes >= 10, "the save should have many crash points; did the patching stop counting?"


def test_folders_of_killed_saves_are_removed_by_the_next_save(tmp_path):
    _save(tmp_path, 5)
    for kill in range(10):
        # Killed while writing the weights into its tmp folder.
        assert _crash_before_operation(1, functools.partial(_save, tmp_path, 10 + kill), [(model_files, "write_file")])
        assert len(list(tmp_path.glob(".checkpoint.tmp-*"))) == 1, "each save clears the folders of earlier kills"
    _save(tmp_path, 20)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


# ---------------------------------------------------------------- corruption


def _flip_byte_in_tensor_data(path) -> None:
    data = bytearray(path.read_bytes())
    header_length = int.from_bytes(data[:8], "little")
    data[8 + header_length + 3] ^= 0x01  # one bit of the first tensor's data: still a valid file
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["model.safetensors", "ema.safetensors", "optimizer.safetensors",
                                  "training_state.json"])
def test_a_flipped_bit_in_any_file_is_refused_naming_the_file(tmp_path, name):
    _save(tmp_path, 5)
    path = tmp_path / "checkpoint" / name
    if name.endswith(".json"):
        path.write_text(path.read_text().replace('"step": 5', '"step": 6'))
    else:
        _flip_byte_in_tensor_data(path)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.") + ".*sha256"):
        _loadable_step(tmp_path)


def test_weights_that_do_not_fit_the_config_are_one_clear_error(tmp_path):
    _save(tmp_path, 5)
    config_path = tmp_path / "checkpoint" / "config.json"
    config = json.loads(config_path.read_text())
    config["model"]["latent_dim"] = 3
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not fit the model"):
        minisd.load(tmp_path)


def test_config_records_the_sha256_of_every_other_file(tmp_path):
    _save(tmp_path, 5)
    folder = tmp_path / "checkpoint"
    files = json.loads((folder / "config.json").read_text())["files"]
    assert sorted(files) == sorted(p.name for p in folder.iterdir() if p.name != "config.json")
