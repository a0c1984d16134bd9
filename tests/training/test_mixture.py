import math

import pytest

from sam3_lora.config import load_config
from sam3_lora.training.mixture import (
    Source,
    batches_read,
    combine_metrics,
    dataset_configs,
    draws,
    mixed_batches,
)


def test_draws_follow_the_weights_and_the_seed():
    """20,000 draws of weights 1:3 give the second dataset 75% (+-1%); the same (seed, epoch)
    the same draws, another epoch or seed others."""
    chosen = draws([1.0, 3.0], 20_000, seed=0, epoch=0)
    assert abs(chosen.count(1) / len(chosen) - 0.75) < 0.01
    assert draws([1.0, 3.0], 50, 0, 0) == chosen[:50]
    assert draws([1.0, 3.0], 50, 0, 1) != chosen[:50] and draws([1.0, 3.0], 50, 1, 0) != chosen[:50]
    assert draws([2.0], 7, 0, 3) == [0] * 7


def fake_sources(batches: list[int]) -> list[Source]:
    return [Source(f"d{i}", float(i + 1), config=None, batches=b) for i, b in enumerate(batches)]


def read_passes(sources, seed, epochs, start=(0, 0)):
    """Every (dataset, pass, batch) the mixture reads, from (epoch, batch) ``start`` on."""
    out = []
    for epoch in range(start[0], epochs):
        done = start[1] if epoch == start[0] else 0
        for source, batch in mixed_batches(sources, seed, epoch, done,
                                           lambda s, n, skip: [(s.name, n, k) for k in range(skip, s.batches)]):
            assert batch[0] == source.name
            out.append(batch)
    return out


def test_each_dataset_is_read_in_its_own_passes_in_order():
    """d1 (1 batch a pass) drawn twice as often as d0 (3 batches): it goes through its passes
    in order, every batch once per pass, across epochs."""
    sources = fake_sources([3, 1])
    seen = read_passes(sources, seed=0, epochs=4)
    assert len(seen) == 4 * 4
    for name, size in (("d0", 3), ("d1", 1)):
        mine = [(n, k) for s, n, k in seen if s == name]
        assert mine == [divmod(i, size) for i in range(len(mine))]


@pytest.mark.parametrize("start", [(0, 1), (1, 0), (2, 3)])
def test_a_resumed_epoch_reads_what_the_uninterrupted_run_reads(start):
    sources = fake_sources([3, 2])
    whole = read_passes(sources, seed=5, epochs=3)
    offset = start[0] * 5 + start[1]
    assert read_passes(sources, seed=5, epochs=3, start=start) == whole[offset:]
    assert sum(batches_read([1.0, 2.0], 5, 5, *start)) == offset


def test_one_dataset_reads_its_passes_as_epochs():
    """Without data.datasets: pass = epoch, the run's batches as they always were."""
    assert read_passes(fake_sources([4]), seed=0, epochs=2, start=(0, 1)) == \
        [("d0", 0, 1), ("d0", 0, 2), ("d0", 0, 3), ("d0", 1, 0), ("d0", 1, 1), ("d0", 1, 2), ("d0", 1, 3)]


def test_combined_metrics_are_weighted_means_over_the_defined_ones():
    found = {"a": {"val_loss": 1.0, "cgF1": None}, "b": {"val_loss": 3.0, "cgF1": 0.5}}
    combined = combine_metrics(found, {"a": 1.0, "b": 3.0})
    assert combined == {"val_loss": 2.5, "val_loss/a": 1.0, "val_loss/b": 3.0,
                        "cgF1": 0.5, "cgF1/a": None, "cgF1/b": 0.5}
    nan = combine_metrics({"a": {"val_loss": math.nan}, "b": {"val_loss": 1.0}}, {"a": 1.0, "b": 1.0})
    assert math.isnan(nan["val_loss"])   # a diverged dataset is not hidden by the other


def test_each_dataset_gets_its_root_and_prompts_over_the_shared_ones():
    config = load_config(None, ["data.prompts={RED: crimson, BLUE: navy}",
                                "data.datasets=[{name: a, root: x, prompts: {RED: scarlet}}, {name: b, root: y}]"])
    (a, wa, ca), (b, _, cb) = dataset_configs(config)
    assert (a, wa, ca.data.root, ca.data.prompts) == ("a", 1.0, "x", {"RED": "scarlet", "BLUE": "navy"})
    assert (b, cb.data.root, cb.data.prompts) == ("b", "y", {"RED": "crimson", "BLUE": "navy"})
    assert ca.data.datasets == [] and config.data.datasets   # the run's config is left as it is
    assert dataset_configs(load_config(None, ["data.root=z"]))[0][:2] == ("data", 1.0)
