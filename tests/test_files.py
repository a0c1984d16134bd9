import os

import pytest

from sam3_lora.errors import Sam3LoraError
from sam3_lora.files import atomic_folder, check_output


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
