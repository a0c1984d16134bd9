"""Several datasets in one run (``data.datasets``) on the tiny SAM3: batches drawn from each
by weight, each validated on its own, resumed bitwise."""

import json

import pytest
import torch
from safetensors.torch import load_file

from sam3_lora.config import load_config
from sam3_lora.data.synth import synthesize
from sam3_lora.errors import ConfigError
from sam3_lora.recipes.train import SAM3LoRATrainer
from sam3_lora.training.mixture import draws
from tests.conftest import TINY_CONFIG


@pytest.fixture(scope="session")
def two_datasets(tmp_path_factory):
    """Two synthetic datasets of other concepts at 112 px: ``circles`` (8 train images: two
    batches of 4) and ``squares`` (4: one batch), 4 valid images each."""
    roots = {}
    for name, shape in (("circles", "circle"), ("squares", "square")):
        roots[name] = tmp_path_factory.mktemp(name)
        synthesize(roots[name], shapes=(shape,), colors=("red", "blue"), image_size=112, seed=1,
                   images_per_split={"train": 8 if name == "circles" else 4, "valid": 4})
    return roots


def datasets_override(roots, weights=(1, 3)) -> str:
    entries = [f"{{name: {name}, root: {root}, weight: {weight}}}" for (name, root), weight in zip(roots.items(), weights)]
    return f"data.datasets=[{', '.join(entries)}]"


def trainer(roots, run_dir, *overrides, resume=None) -> SAM3LoRATrainer:
    # tiny.yaml names a data.root, which data.datasets replaces: back to the default
    config = load_config(TINY_CONFIG, ["data.root=data", datasets_override(roots), f"output.dir={run_dir}",
                                       "training.batch_size=4", "training.report_to=[]", "training.log_every_steps=1",
                                       "training.lr_scheduler=constant", *overrides])
    return SAM3LoRATrainer(config, quiet=True, resume=resume)


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_batches_come_from_each_dataset_as_drawn_and_each_is_validated(two_datasets, tmp_path):
    """An epoch is one pass over both (3 batches); each step's dataset is the seeded draw by
    weight (1:3); each evaluation logs both validation losses and their weighted mean."""
    run = trainer(two_datasets, tmp_path / "run", "training.max_steps=6", "training.eval_every_steps=3")
    summary = run.train()
    logged = [r for r in records(tmp_path / "run") if "loss" in r]
    order = [["circles", "squares"][i] for epoch in (0, 1) for i in draws([1.0, 3.0], 3, 0, epoch)]
    assert run.batches_per_epoch == 3 and [r["dataset"] for r in logged] == order
    assert set(order) == {"circles", "squares"}   # seed 0 draws both: each trained
    evaluations = [r for r in records(tmp_path / "run") if "val_loss" in r]
    assert [r["step"] for r in evaluations] == [3, 6]
    for r in evaluations:
        a, b = r["val_loss/circles"], r["val_loss/squares"]
        assert a != b and r["val_loss"] == pytest.approx((1 * a + 3 * b) / 4)
    assert summary["best_value"] == pytest.approx(min(r["val_loss"] for r in evaluations))
    assert set(run.prompts) == {"red circle", "blue circle", "red square", "blue square"}


def test_resumes_mid_epoch_to_the_same_weights(two_datasets, tmp_path):
    """Stopped at step 2 (mid-epoch: each dataset part-way through its pass), resumed to 5:
    bitwise the adapter of the run that was not stopped."""
    common = ["training.save_every_steps=2", "training.eval_every_steps=100"]
    trainer(two_datasets, tmp_path / "a", "training.max_steps=5", *common).train()
    trainer(two_datasets, tmp_path / "b", "training.max_steps=2", *common).train()
    trainer(two_datasets, tmp_path / "b", "training.max_steps=5", *common, resume=tmp_path / "b").train()
    a = load_file(tmp_path / "a" / "last" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "last" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["dataset"] for r in records(tmp_path / "a") if "loss" in r]
    assert [r["dataset"] for r in records(tmp_path / "b") if "loss" in r] == steps


def test_weights_change_which_batches_train(two_datasets, tmp_path):
    """The weights are read: 3:1 draws another order than 1:3 (seed 0)."""
    one = [["circles", "squares"][i] for i in draws([1.0, 3.0], 6, 0, 0)]
    other = [["circles", "squares"][i] for i in draws([3.0, 1.0], 6, 0, 0)]
    assert one != other


def test_a_dataset_without_train_split_is_named_in_one_line(two_datasets, tmp_path):
    roots = {"circles": two_datasets["circles"], "squares": tmp_path / "nowhere"}
    with pytest.raises(ConfigError) as error:
        trainer(roots, tmp_path / "run").setup()
    message = str(error.value)
    assert message.startswith(f"data.datasets[squares].root={tmp_path / 'nowhere'}: no train/ folder there")
    assert "\n" not in message


# ---- an adapter per dataset (lora.task_adapters) -------------------------------------------


def adapter_tensors(folder) -> dict:
    return load_file(folder / "adapter_model.safetensors")


def b_matrices_zero(tensors: dict) -> bool:
    """Whether every LoRA B of an adapter is still zero (as PEFT initialises it: untrained)."""
    return all(not t.any() for k, t in tensors.items() if ".lora_B." in k)


def test_each_batch_trains_only_its_datasets_adapter(two_datasets, tmp_path):
    """per_task: after one step, only the adapter of the dataset drawn first has moved (LoRA B
    starts at zero); after six, both have, and differ; best/ and last/ hold one adapter per
    dataset (in its subfolder, with its own prompts) and no shared one."""
    first = ["circles", "squares"][draws([1.0, 3.0], 3, 0, 0)[0]]
    other = ({"circles", "squares"} - {first}).pop()
    trainer(two_datasets, tmp_path / "one", "lora.task_adapters=per_task", "training.max_steps=1").train()
    assert not b_matrices_zero(adapter_tensors(tmp_path / "one" / "last" / first))
    assert b_matrices_zero(adapter_tensors(tmp_path / "one" / "last" / other))

    run = trainer(two_datasets, tmp_path / "six", "lora.task_adapters=per_task", "training.max_steps=6",
                  "training.eval_every_steps=3")
    run.train()
    last = tmp_path / "six" / "last"
    assert not (last / "adapter_config.json").exists()
    a, b = adapter_tensors(last / "circles"), adapter_tensors(last / "squares")
    assert a.keys() == b.keys() and not b_matrices_zero(a) and not b_matrices_zero(b)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert json.loads((last / "squares" / "sam3_lora.json").read_text())["prompts"] == ["blue square", "red square"]
    evaluations = [r for r in records(tmp_path / "six") if "val_loss" in r]
    assert all(r["val_loss/circles"] != r["val_loss/squares"] for r in evaluations)


def test_a_task_is_chosen_by_name(two_datasets, tmp_path):
    """``load_finetuned(task=...)`` loads that dataset's adapter (both: with the shared one,
    both active); ``validate(task=...)`` scores that dataset's split through it; without a
    task, a run of adapters per dataset is refused in one line naming them."""
    from sam3_lora.lora.weights import load_finetuned
    from sam3_lora.recipes.validate import validate

    run = trainer(two_datasets, tmp_path / "run", "lora.task_adapters=both", "training.max_steps=3")
    run.train()
    config = run.config
    model, _, _ = load_finetuned(config, task="squares", device="cpu")
    assert set(model.peft_config) == {"default", "squares"} and model.active_adapters == ["default", "squares"]
    saved = adapter_tensors(tmp_path / "run" / "best" / "squares")
    loaded = {k: v for k, v in model.state_dict().items() if ".squares." in k}
    assert {k.replace(".squares.", ".") for k in loaded} == set(saved)
    assert all(torch.equal(v, saved[k.replace(".squares.", ".")]) for k, v in loaded.items())

    summary = validate(config, task="circles", positives_only=True)
    assert summary["output"] == str(tmp_path / "run" / "eval-valid-circles")
    assert summary["images"] == 4 and summary["weights"] == str(tmp_path / "run" / "best")
    with pytest.raises(ConfigError, match=r"data.datasets holds circles, squares: name one of them \(argument task\)"):
        validate(config)
    with pytest.raises(ConfigError, match=r"task 'triangles': not a dataset of data.datasets \(circles, squares\)"):
        validate(config, task="triangles")


def test_per_task_adapters_resume_to_the_same_weights(two_datasets, tmp_path):
    common = ["lora.task_adapters=both", "training.save_every_steps=2", "training.eval_every_steps=100"]
    trainer(two_datasets, tmp_path / "a", "training.max_steps=5", *common).train()
    trainer(two_datasets, tmp_path / "b", "training.max_steps=2", *common).train()
    trainer(two_datasets, tmp_path / "b", "training.max_steps=5", *common, resume=tmp_path / "b").train()
    for folder in ("", "circles", "squares"):
        a, b = adapter_tensors(tmp_path / "a" / "last" / folder), adapter_tensors(tmp_path / "b" / "last" / folder)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), folder


def test_adapters_per_task_need_datasets_and_lora(two_datasets, tmp_path):
    with pytest.raises(ConfigError, match="lora.task_adapters=per_task trains an adapter per dataset"):
        load_config(TINY_CONFIG, ["lora.task_adapters=per_task"])
    with pytest.raises(ConfigError, match="lora.task_adapters=both is not available with lora.method=loha yet"):
        trainer(two_datasets, tmp_path / "run", "lora.task_adapters=both", "lora.method=loha")


# ---- the same mechanism for detection metrics and for the tracker ---------------------------


def test_detection_metrics_are_per_dataset_and_weighted(two_datasets, tmp_path):
    """best_metric=mAP: each evaluation scores both datasets as validate does, and keeps their
    mean weighted 1:3 (cgF1 where defined)."""
    trainer(two_datasets, tmp_path / "run", "training.max_steps=2", "training.eval_every_steps=2",
            "training.best_metric=mAP").train()
    (evaluation,) = [r for r in records(tmp_path / "run") if "mAP" in r]
    a, b = evaluation["mAP/circles"], evaluation["mAP/squares"]
    assert evaluation["mAP"] == pytest.approx((a + 3 * b) / 4)
    assert evaluation["val_loss"] == pytest.approx((evaluation["val_loss/circles"] + 3 * evaluation["val_loss/squares"]) / 4)


def test_the_tracker_trains_on_several_datasets_with_an_adapter_each(two_datasets, tmp_path):
    """model.task=interactive goes through the same seam: batches of objects from each
    dataset, each through its dataset's adapter."""
    run = trainer(two_datasets, tmp_path / "run", "model.task=interactive", "training.correction_rounds=1",
                  "lora.task_adapters=per_task", "training.max_steps=3", "training.eval_every_steps=3")
    run.train()
    (evaluation,) = [r for r in records(tmp_path / "run") if "val_loss" in r]
    assert evaluation["val_loss/circles"] != evaluation["val_loss/squares"]
    trained = {name for name in ("circles", "squares")
               if not b_matrices_zero(adapter_tensors(tmp_path / "run" / "last" / name))}
    assert trained == {[r["dataset"] for r in records(tmp_path / "run") if "loss" in r][i] for i in range(3)}


def test_two_processes_route_each_batch_to_the_same_adapter(two_datasets, tmp_path):
    """torchrun with 2 CPU processes (gloo), an adapter per dataset: every process draws the
    same dataset for each step (no hang in DDP's gradient reduction, whose unused adapters it
    is told about), and both ranks end with identical adapters, each dataset's trained (seed
    0 draws squares for the first epoch's three steps, circles in the second's)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "scripts" / "ddp_train.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path),
               str(TINY_CONFIG), "data.root=data", datasets_override(two_datasets), "lora.task_adapters=per_task",
               "training.max_steps=6", "training.report_to=[]", "training.batch_size=2",
               "training.eval_every_steps=100", f"output.dir={tmp_path / 'run'}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    for name in ("circles", "squares"):
        assert any(t.any() for k, t in rank0.items() if f".lora_B.{name}." in k), name


def test_the_app_offers_each_datasets_adapter_by_name(two_datasets, tmp_path):
    """per_task: the app lists best/NAME and last/NAME (there is no shared best/)."""
    from sam3_lora.serve.app import adapter_folders

    run = trainer(two_datasets, tmp_path / "run", "lora.task_adapters=per_task", "training.max_steps=1")
    run.train()
    offered = adapter_folders(run.config)
    assert offered == {f"{kind}/{name}": tmp_path / "run" / kind / name
                       for kind in ("best", "last") for name in ("circles", "squares")}
