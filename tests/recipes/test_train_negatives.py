"""The trainer's warning about a dataset that gives no negative queries."""

import json
import warnings

from sam3_lora.config import load_config
from sam3_lora.data.synth import synthesize
from sam3_lora.recipes.train import SAM3LoRATrainer
from tests.conftest import TINY_CONFIG


def no_negatives_warnings(tmp_path, *, empty_image: bool) -> list[str]:
    """The no-negatives warnings of a trainer on a one-concept dataset, with or without one
    training image that shows nothing."""
    synthesize(tmp_path / "data", shapes=["circle"], colors=["red"], images_per_split={"train": 3},
               image_size=112, seed=0)
    if empty_image:
        path = tmp_path / "data" / "train" / "_annotations.coco.json"
        coco = json.loads(path.read_text())
        first = coco["images"][0]["id"]
        coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != first]
        path.write_text(json.dumps(coco))
    config = load_config(TINY_CONFIG, [f"data.root={tmp_path / 'data'}", f"output.dir={tmp_path / 'run'}",
                                       "training.max_steps=1", "training.report_to=[]"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SAM3LoRATrainer(config, quiet=True).setup()
    return [str(w.message) for w in caught if "negative" in str(w.message)]


def test_one_prompt_on_images_that_all_show_it_warns(tmp_path):
    [message] = no_negatives_warnings(tmp_path, empty_image=False)
    assert "one prompt (red circle)" in message and "data.negative_phrases" in message


def test_images_showing_nothing_give_negatives_so_there_is_no_warning(tmp_path):
    """It used to say "no negative queries" although such images are negatives of the prompt."""
    assert no_negatives_warnings(tmp_path, empty_image=True) == []
