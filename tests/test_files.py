import os

import pytest

from sam3_lora.errors import Sam3LoraError
from sam3_lora.files import atomic_folder, check_output, inside_folder, is_inside


def test_atomic_folders_get_the_users_umask_and_vanish_on_failure(tmp_path):
    previous = os.umask(0o022)
    try:
        with atomic_folder(tmp_path / "adapter") as staging:
            (staging / "weights").write_text("w")
    finally:
        os.umask(previous)
    assert (tmp_path / "adapter").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "adapter" / "weights").stat().st_mode & 0o777 == 0o644
    with pytest.raises(ZeroDivisionError), atomic_folder(tmp_path / "broken") as staging:
        (staging / "half").write_text("h")
        raise ZeroDivisionError("a crash mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_outputs_that_cannot_be_written_are_refused_first(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    assert check_output(tmp_path / "new" / "run", folder=True, what="output.dir") == tmp_path / "new" / "run"
    with pytest.raises(Sam3LoraError, match="output.dir .*file: is a file; give a folder"):
        check_output(tmp_path / "file", folder=True, what="output.dir")
    with pytest.raises(Sam3LoraError, match="is a folder; give a file path"):
        check_output(tmp_path / "folder", folder=False, what="output")
    with pytest.raises(Sam3LoraError, match="is a file, so nothing can be written under it"):
        check_output(tmp_path / "file" / "run", folder=True, what="output.dir")
    # An existing file may be replaced (it was refused as "a file, nothing under it").
    assert check_output(tmp_path / "file", folder=False, what="output") == tmp_path / "file"
    if os.geteuid() != 0:   # root writes anywhere
        (tmp_path / "locked").mkdir(mode=0o500)
        with pytest.raises(Sam3LoraError, match="is not writable"):
            check_output(tmp_path / "locked" / "run", folder=True, what="output.dir")


def test_a_full_disk_while_writing_is_one_line_and_leaves_nothing(tmp_path):
    import errno

    with pytest.raises(Sam3LoraError, match=r"adapter: could not be written \(No space left on device\); nothing "
                                            "half-written was left") as error, \
            atomic_folder(tmp_path / "adapter") as staging:
        (staging / "half").write_text("h")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert "\n" not in str(error.value) and not list(tmp_path.iterdir())


def test_files_written_0600_get_the_umask(tmp_path):
    """transformers writes model.safetensors (and onnxruntime its .onnx.data) 0600."""
    previous = os.umask(0o022)
    try:
        with atomic_folder(tmp_path / "model") as staging:
            (staging / "weights").write_text("w")
            (staging / "weights").chmod(0o600)
            (staging / "tool").write_text("#!/bin/sh")
            (staging / "tool").chmod(0o700)
            (staging / "sub").mkdir(mode=0o700)
            (staging / "sub" / "inner").write_text("i")
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "model").rglob("*")}
    assert modes == {"weights": 0o644, "tool": 0o755, "sub": 0o755, "inner": 0o644}


def test_staging_left_by_a_killed_process_is_removed_by_the_next_write(tmp_path):
    import socket
    import subprocess
    import sys

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    host = socket.gethostname()
    stale = tmp_path / f".out.partial-{host}-{ended.pid}-abc"
    live = tmp_path / f".out.partial-{host}-{os.getppid()}-abc"        # a running process's
    elsewhere = tmp_path / f".out.partial-otherhost-{ended.pid}-abc"  # another machine's
    other = tmp_path / f".other.partial-{host}-{ended.pid}-abc"        # another folder's: stale too
    for folder in (stale, live, elsewhere, other):
        folder.mkdir()
    with atomic_folder(tmp_path / "out") as staging:
        assert staging.name.startswith(f".out.partial-{host}-{os.getpid()}-")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name, elsewhere.name])


SIGTERM_WRITER = r"""
import sys, time
from pathlib import Path
from sam3_lora.files import atomic_folder, sigterm_as_exit
with sigterm_as_exit(), atomic_folder(Path(sys.argv[1]) / "out") as staging:
    (staging / "half").write_text("h")
    print("writing", flush=True)
    time.sleep(60)
"""


def test_sigterm_while_writing_leaves_nothing(tmp_path):
    import signal
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", SIGTERM_WRITER, str(tmp_path)], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline() == "writing\n"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_files_are_replaced_never_written_through_a_symlink(tmp_path):
    from sam3_lora.files import open_for_append, write_file

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / "out" / "result.json"
    link.parent.mkdir()
    link.symlink_to(victim)
    write_file(link, "{}\n")
    assert victim.read_text() == "precious"
    assert not link.is_symlink() and link.read_text() == "{}\n"
    (tmp_path / "out" / "metrics.jsonl").symlink_to(victim)
    with pytest.raises(Sam3LoraError, match="metrics.jsonl: is a symbolic link"):
        open_for_append(tmp_path / "out" / "metrics.jsonl")
    assert victim.read_text() == "precious"
    with open_for_append(tmp_path / "out" / "log.jsonl") as file:
        file.write("a\n")
    assert (tmp_path / "out" / "log.jsonl").read_text() == "a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["log.jsonl", "metrics.jsonl", "result.json"]


def test_write_file_gets_the_umask_and_leaves_nothing_on_failure(tmp_path):
    from sam3_lora.files import replacing_file, write_file

    previous = os.umask(0o022)
    try:
        write_file(tmp_path / "a.txt", b"x")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    with pytest.raises(ZeroDivisionError), replacing_file(tmp_path / "a.txt") as temporary:
        temporary.write_text("half")
        raise ZeroDivisionError("a crash mid-write")
    assert (tmp_path / "a.txt").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_stale_staging_is_removed_whatever_output_it_was_for(tmp_path):
    """A killed export to OUT leaves .OUT.partial-HOST-PID-*; the next atomic write in the same
    folder removes it even when it writes another output (the export is never re-run to OUT)."""
    import socket
    import subprocess
    import sys

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    host = socket.gethostname()
    stale = [tmp_path / f".{name}.partial-{host}-{ended.pid}-x1" for name in ("cracks-onnx", "a.partial-b", "x")]
    mine = tmp_path / ".not-staging"          # the user's own hidden folder
    for folder in (*stale, mine):
        folder.mkdir()
        (folder / "half").write_text("h")
    (tmp_path / f".file.partial-{host}-{ended.pid}-x1").write_text("a file, not a staging folder")
    with atomic_folder(tmp_path / "another-output") as staging:
        (staging / "done").write_text("d")
    assert not any(folder.exists() for folder in stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["another-output", mine.name, f".file.partial-{host}-{ended.pid}-x1"])


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside/secret", "a/../../outside/secret", "..", "\\\\x\\y",
                                  "C:\\x", "link", "dir-link/secret", "loop", "", "a\x00b"])
def test_names_leading_outside_their_folder(name, tmp_path):
    folder = tmp_path / "folder"
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("s")
    folder.mkdir()
    (folder / "link").symlink_to(tmp_path / "outside" / "secret")
    (folder / "dir-link").symlink_to(tmp_path / "outside", target_is_directory=True)
    (folder / "loop").symlink_to(folder / "loop")
    assert inside_folder(folder, name) is None


def test_names_inside_their_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inner-link").symlink_to(tmp_path / "model.onnx")
    for name in ("model.onnx", "sub/model.onnx", "sub/inner-link", "a..b", "not-yet-there"):
        assert is_inside(name) and inside_folder(tmp_path, name) == tmp_path / name


def test_a_place_where_nothing_can_be_created_is_refused_first():
    """/proc passes every permission check as root (os.access says yes), yet nothing can be
    created in it: training loaded the model and then died in a traceback."""
    with pytest.raises(Sam3LoraError, match=r"output.dir /proc/nope: nothing can be created in /proc \(.+\); "
                                            "choose a writable place") as error:
        check_output("/proc/nope", folder=True, what="output.dir")
    assert "\n" not in str(error.value)


def test_the_writability_probe_leaves_nothing_behind(tmp_path):
    check_output(tmp_path / "run", folder=True, what="output.dir")
    check_output(tmp_path / "out.json", folder=False, what="--output")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_inside_safetensors_is_one_line_and_leaves_nothing(tmp_path):
    """safetensors reports a full disk with its own SafetensorError, not an OSError: it
    escaped as a traceback from checkpoints and merged exports."""
    from safetensors import SafetensorError

    with pytest.raises(Sam3LoraError, match=r"model: could not be written \(No space left on device\); nothing "
                                            "half-written was left") as error, \
            atomic_folder(tmp_path / "model") as staging:
        (staging / "half").write_text("h")
        raise SafetensorError('Error while serializing: I/O error: No space left on device (os error 28) at '
                              'path "/x/.tmp1"')
    assert "\n" not in str(error.value) and not list(tmp_path.iterdir())


def test_an_atomic_folder_replaces_a_symlink_never_writes_through_it(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("p")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best").symlink_to(elsewhere, target_is_directory=True)
    with atomic_folder(tmp_path / "run" / "best") as staging:
        (staging / "weights").write_text("w")
    assert not (tmp_path / "run" / "best").is_symlink()
    assert [p.name for p in (tmp_path / "run" / "best").iterdir()] == ["weights"]
    assert [p.name for p in elsewhere.iterdir()] == ["precious"]
