import pytest

from sam3_lora.errors import Sam3LoraError
from sam3_lora.training.run_folder import check_run_folder, earlier_run, remove_earlier_run


def an_earlier_run(folder):
    (folder / "checkpoints" / "step-000002").mkdir(parents=True)
    (folder / "best").mkdir()
    (folder / "config.yaml").write_text("training: {}\n")
    (folder / "metrics.jsonl").write_text('{"step": 1}\n')
    (folder / "notes.txt").write_text("the user's, not the run's")
    return folder


def test_a_new_run_refuses_a_folder_holding_an_earlier_one(tmp_path):
    run = an_earlier_run(tmp_path / "run")
    with pytest.raises(Sam3LoraError, match=r"output.dir .*run: holds an earlier run \(config.yaml, metrics.jsonl, "
                                            r"checkpoints/, best/\), which a new run would mix with; continue it "
                                            r"\(resume from .*run\), replace it \(overwrite\)") as error:
        check_run_folder(run, continuing=False, overwrite=False)
    assert error.value.option == "overwrite" and "\n" not in str(error.value)
    check_run_folder(run, continuing=True, overwrite=False)
    check_run_folder(run, continuing=False, overwrite=True)
    check_run_folder(tmp_path / "new", continuing=False, overwrite=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a run")
    check_run_folder(tmp_path / "other", continuing=False, overwrite=False)


def test_resuming_a_run_and_overwriting_it_contradict(tmp_path):
    with pytest.raises(Sam3LoraError, match="resuming a run and overwriting it contradict"):
        check_run_folder(an_earlier_run(tmp_path / "run"), continuing=True, overwrite=True)


def test_overwrite_removes_the_run_and_only_the_run(tmp_path):
    run = an_earlier_run(tmp_path / "run")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("p")
    (run / "last").symlink_to(victim, target_is_directory=True)
    assert remove_earlier_run(run) == ["config.yaml", "metrics.jsonl", "checkpoints/", "best/", "last/"]
    assert [p.name for p in run.iterdir()] == ["notes.txt"] and earlier_run(run) == []
    assert (victim / "precious").read_text() == "p"   # the link went, not what it pointed to


@pytest.mark.parametrize("entry", ["metrics.jsonl", "config.yaml", "checkpoints", "tensorboard"])
def test_a_continued_run_refuses_links_among_its_entries(tmp_path, entry):
    """Appending to metrics.jsonl, or writing checkpoints and TensorBoard events into a
    folder, through a link planted in the run folder would write elsewhere."""
    run = an_earlier_run(tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = run / entry
    if target.is_dir():
        target.rename(tmp_path / "moved")
    else:
        target.unlink(missing_ok=True)
    target.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(Sam3LoraError, match=f"run/{entry}: is a symbolic link; output files are never written through"):
        check_run_folder(run, continuing=True, overwrite=False)
