"""The bundled video tracker's starting point: the bundled image tracker with a new, smaller
video memory whose cross-attention starts position-matched (``configs/base-video-tracker.yaml``
trains it).

    python bench/new_video_memory.py OUT [--layers 1] [--mlp 512] [--alpha 1.5] [--shrink 0.1]

The memory: ``--layers`` memory-attention layers with an MLP ``--mlp`` wide (SAM3's default at
width 128 is 4 layers and 1,024: 2.6x the step time, and ``track`` at 6.8 frames/s).

Why the start matters: a random memory attends to the whole of every past frame almost
uniformly, so what it reads of the object's mask is averaged over all 256 tokens: after 500
steps the fused features of two objects of one frame still differed by under 1 % (BENCHMARKS,
"The bundled video tracker"). Here each cross-attention's query and key projections start as
one constant vector each (weights times ``--shrink``, biases ``--alpha``): after the rotary
encoding a query then attends to the memory tokens at and near its own position, where the
object last was, and training starts from reading the right place.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch

from sam3_lora.files import apply_umask
from sam3_lora.model.tracker import load_tracker
from sam3_lora.model.video import video_tracker_config, video_tracker_on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="new folder for the video tracker")
    parser.add_argument("--layers", type=int, default=1, help="memory-attention layers")
    parser.add_argument("--mlp", type=int, default=512, help="their MLP width")
    parser.add_argument("--alpha", type=float, default=1.5, help="the query and key biases (locality)")
    parser.add_argument("--shrink", type=float, default=0.1, help="factor on the query and key weights")
    args = parser.parse_args()
    warnings.simplefilter("ignore")   # the "new, random memory" warning: this is that memory
    image = load_tracker("sam3-tiny-shapes")
    config = video_tracker_config(image.model.config)
    config.memory_attention_num_layers = args.layers
    config.memory_attention_feed_forward_hidden_size = args.mlp
    model = video_tracker_on(image.model, config, seed=0)
    with torch.no_grad():
        for layer in model.memory_attention.layers:
            for projection in (layer.cross_attn_image.q_proj, layer.cross_attn_image.k_proj):
                projection.weight.mul_(args.shrink)
                projection.bias.fill_(args.alpha)
    model.save_pretrained(args.out)
    apply_umask(Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
