"""Trust boundaries in the data layer: special files, folder locks, class names (issue 10 rows 3, 5, 6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest

from detcrop.data.folders import ClassNameError, check_class_name, scan_class_folders
from detcrop.data.images import NotARegularFileError, UnreadableImageError, file_sha256, load_image
from detcrop.data.layout import LOCK_NAME
from detcrop.data.locks import FolderLockedError, folder_lock
from detcrop.data.splits import split_class_folders
from imagegen import save_image


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: the old loader blocked forever on a FIFO and read /dev/zero without end."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s (hung on a special file)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def make_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def link_to(target: str):
    def make(path: Path) -> Path:
        path.symlink_to(target)
        return path
    return make


def make_folder(path: Path) -> Path:
    path.mkdir()
    return path


SPECIAL_FILES = [
    pytest.param(make_fifo, "a FIFO", id="fifo"),
    pytest.param(link_to("/dev/zero"), "a character device", id="symlink-to-dev-zero"),
    pytest.param(link_to("/dev/null"), "a character device", id="symlink-to-dev-null"),
    pytest.param(make_folder, "a folder", id="folder"),
]


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/dev/zero").exists(), reason="needs POSIX special files")
@pytest.mark.parametrize("make, what", SPECIAL_FILES)
def test_special_files_named_like_images_are_refused_before_they_are_read(tmp_path, make, what):
    path = make(tmp_path / "x.jpg")
    with deadline(10):
        with pytest.raises(UnreadableImageError, match=f"not a regular file \\({what}\\)") as caught:
            load_image(path)
        assert caught.value.path == str(path)
        with pytest.raises(NotARegularFileError, match=what):
            file_sha256(path)
        with pytest.raises(OSError):  # callers that skip unreadable files with `except OSError` skip it too
            file_sha256(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_train_scanning_and_hashing_pass_a_fifo_without_hanging(tmp_path):
    for index in range(3):
        save_image(tmp_path / "a" / f"{index}.png", seed=index)
        save_image(tmp_path / "b" / f"{index}.png", seed=10 + index)
    make_fifo(tmp_path / "a" / "x.jpg")
    (tmp_path / "b" / "zero.jpg").symlink_to("/dev/zero")
    dataset = scan_class_folders(tmp_path)
    assert len(dataset.samples) == 8  # scanning reads nothing; the files are refused when hashed or decoded
    with deadline(10):
        split = split_class_folders(dataset, val_ratio=0.34, test_ratio=0.0, seed=0)
    assert sorted(split.train + split.val + split.test) == list(range(8))


# ------------------------------------------------------------------ folder locks


def test_a_second_job_on_a_locked_folder_is_refused_naming_the_first(tmp_path):
    with folder_lock(tmp_path / "dataset", "crop") as lock_file:
        assert lock_file == tmp_path / "dataset" / LOCK_NAME
        with pytest.raises(FolderLockedError, match=rf"in use by `crop` started .* by pid {os.getpid()} on "):
            with folder_lock(tmp_path / "dataset", "crop"):
                pass
    with folder_lock(tmp_path / "dataset", "crop"):  # released on exit
        pass


@pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")
def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from detcrop.data.locks import folder_lock
        with folder_lock({str(tmp_path / 'run')!r}, "train"):
            print("locked", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLockedError, match=rf"`train` started .* by pid {holder.pid} on "):
            with folder_lock(tmp_path / "run", "train"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(tmp_path / "run", "train"):  # free again, though the holder never released it itself
        assert (tmp_path / "run" / LOCK_NAME).read_text().startswith('{"job": "train"')


# ------------------------------------------------------------------ class names


@pytest.mark.parametrize("name, ok", [
    ("rolex", True), ("audemars piguet", True), ("名前", True),
    ("../x", False), ("../../x", False), ("/abs/path", False), ("a/b", False), ("a\\b", False),
    (".hidden", False), (".", False), ("..", False), ("", False),
])
def test_one_class_name_rule(name, ok):
    if ok:
        assert check_class_name(name) == name
    else:
        with pytest.raises(ClassNameError, match="plain folder name"):
            check_class_name(name)
