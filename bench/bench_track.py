"""`sam3-lora track` on a CPU: frames/s and peak memory of following one clicked object
through an 854x480 H.264 video (the issue's goals: >= 10 frames/s and <= 2 GB on 2 cores).

    python bench/bench_track.py [--source sam3-tiny-shapes] [--frames 300] [--write]

The clip is ``gpu_check.write_clip``'s (a bright square crossing a noisy background), encoded
with PyAV at 30 fps; the engine is ``SAM3LoRAInference.track`` (what the command runs), with
``model.task: video`` on ``--source``'s video tracker, no adapter, float32. frames/s counts
the frames after the first (the first includes building the tracker); peak RSS is the
process's, loading included. Speed does not depend on what the weights know, so a random
memory of the same shape times the same as a trained one.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from gpu_check import write_clip  # bench/*.py (scripts run from bench/)
from machine import append_entry, machine

HEADING = "## Tracking through a video: `sam3-lora track`"


def encode(frames: Path, video: Path, fps: int = 30) -> None:
    """The JPEGs of ``frames`` as one H.264 file."""
    import av
    from PIL import Image

    with av.open(str(video), "w") as container:
        stream = container.add_stream("h264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 854, 480, "yuv420p"
        for path in sorted(frames.glob("*.jpg")):
            frame = av.VideoFrame.from_ndarray(np.asarray(Image.open(path).convert("RGB")), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def measure(source: str, frames: int) -> dict:
    from sam3_lora.config import load_config
    from sam3_lora.serve.inference import SAM3LoRAInference

    with tempfile.TemporaryDirectory() as work:
        centres = write_clip(Path(work) / "frames", frames)
        video = Path(work) / "clip.mp4"
        encode(Path(work) / "frames", video)
        config = load_config(None, [f"model.source={source}", "model.task=video", "model.dtype=float32"])
        engine = SAM3LoRAInference(config=config, no_lora=True)
        cpu = time.process_time()
        arrived = [time.perf_counter() for _ in engine.track(video, points=[centres[0]], labels=[1])]
        cpu = time.process_time() - cpu
    return {"source": source, "frames": len(arrived), "threads": torch.get_num_threads(),
            "frames_per_s": (len(arrived) - 1) / (arrived[-1] - arrived[0]),
            "cpu_s_per_frame": cpu / len(arrived), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="sam3-tiny-shapes", help="model.source holding a video tracker")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--write", action="store_true", help="append the result to BENCHMARKS.md")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    result = measure(args.source, args.frames)
    line = (f"| `{result['source']}` | {result['frames']} | {result['threads']} | {result['frames_per_s']:.1f} | "
            f"{1000 * result['cpu_s_per_frame']:.0f} ms | {result['peak_rss_mb']:.0f} MB |")
    print(line)
    if args.write:
        append_entry(HEADING, f"\n### {datetime.date.today().isoformat()}: bench_track.py\n\n"
                              f"Machine: {machine()}; load average at start {load:.2f}.  \n"
                              f"Command: `python bench/bench_track.py --source {args.source} --frames {args.frames}`\n\n"
                              f"| source | frames | threads | frames/s | CPU per frame | peak RSS |\n"
                              f"|---|---:|---:|---:|---:|---:|\n{line}\n")


if __name__ == "__main__":
    main()
