from sam3_lora.config import TrainingConfig
from sam3_lora.training.schedule import describe_evaluation, epoch_end_evaluation_due


def evaluated_steps(cfg: TrainingConfig, steps_per_epoch: int, total_steps: int) -> list[int]:
    """The steps a run evaluates at: the epoch ends found due, then the last step."""
    evaluated = []
    for step in range(steps_per_epoch, total_steps, steps_per_epoch):
        if epoch_end_evaluation_due(cfg, step, evaluated[-1] if evaluated else 0, total_steps):
            evaluated.append(step)
    return [*evaluated, total_steps]


def test_tiny_epochs_are_evaluated_about_max_evaluations_times():
    """100 epochs of 3 steps (a dataset of a few images) were evaluated 100 times."""
    assert len(evaluated_steps(TrainingConfig(max_evaluations=None), 3, 300)) == 100
    steps = evaluated_steps(TrainingConfig(), 3, 300)
    assert len(steps) == 10 and steps[:3] == [30, 60, 90]
    assert len(evaluated_steps(TrainingConfig(max_evaluations=4), 3, 300)) == 4


def test_long_epochs_are_still_each_evaluated():
    """The demo's epochs (75 steps of 500) and a 20-epoch preset's stay evaluated each."""
    assert evaluated_steps(TrainingConfig(), 75, 500) == [75, 150, 225, 300, 375, 450, 500]
    assert len(evaluated_steps(TrainingConfig(), 50, 20 * 50)) == 10   # every other epoch of 20
    assert evaluated_steps(TrainingConfig(eval_every_steps=2), 3, 9) == [9]   # step cadence: not at epoch ends


def test_an_epoch_end_evaluated_before_a_resume_is_not_evaluated_again():
    assert not epoch_end_evaluation_due(TrainingConfig(), step=4, last_eval_step=4, total_steps=8)
    assert epoch_end_evaluation_due(TrainingConfig(), step=4, last_eval_step=0, total_steps=8)


def test_the_schedule_is_described_for_sam3_lora_info():
    assert "about 10 times per run" in describe_evaluation(TrainingConfig())
    assert "every 5 steps" in describe_evaluation(TrainingConfig(eval_every_steps=5))
    assert "end of every epoch" in describe_evaluation(TrainingConfig(max_evaluations=None))
