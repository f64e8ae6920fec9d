"""Training settings of the CPU 3D default, tried on the volumes benchmark's part (a).

    OMP_NUM_THREADS=1 .venv/bin/python bench/sweep_volumes.py --name NAME [--seed 0]
        [--tile N [N N]] [--batch 4] [--lr LR] [--warmup 20] [--decay] [--minutes 5] [--zoom Z]

Trains the CPU default 3D network (``default_model_config(ndim=3)``) on the sparse
annotation of bench_volumes.py's part (a) (cells3d nuclei, every 5th plane, 2x
in-plane down-sampling) with one thread, and prints one JSON line per evaluation:
the whole volume segmented and scored in 3D with the default split ("split") and
with connected components ("s0"), cells as in bench_volumes.py (true/pred, AP@0.5,
AP@0.75, mAP 0.5:0.9, mean IoU of matches). Without ``--decay`` the learning rate
stays constant after warm-up and the model is scored after every minute of this
process's CPU time (scoring not counted); with ``--decay`` it decays to zero at
``--minutes`` of wall time (``decay_by_time``) and is scored once, at the end.
Run two at a time at most on two cores, one thread each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch

import napari_unet as nu
from bench_volumes import load, scores, sparse
from napari_unet.core.config import default_model_config
from napari_unet.core.instances import probabilities_to_labels
from napari_unet.core.train_config import AugmentConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="a name for the setting, repeated on every line")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tile", type=int, nargs="+", help="training tile: one size or z y x (valid sizes)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--warmup", type=int, default=20, help="warm-up steps")
    parser.add_argument("--decay", action="store_true", help="decay the learning rate to 0 at --minutes")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--zoom", type=float, default=0.0, help="random zoom of the samples (AugmentConfig.zoom)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    image, truth, spacing = load(downsample=2)
    annotation = sparse(truth, every=5)
    torch.manual_seed(args.seed)
    model = nu.UNet.from_config(default_model_config("cpu", ndim=3, spacing=spacing))
    options = dict(steps=10**9, device="cpu", seed=args.seed, batch_size=args.batch, warmup_steps=args.warmup)
    if args.tile:
        options["tile"] = tuple(args.tile) if len(args.tile) == 3 else args.tile[0]
    if args.lr:
        options["lr"] = args.lr
    if args.decay:
        options.update(minutes=args.minutes, decay_by_time=True)
    if args.zoom:
        options["augment"] = AugmentConfig(zoom=args.zoom)
    spent, steps = 0.0, 0

    def evaluate() -> None:
        probabilities = nu.predict(model, image, device="cpu")
        ways = {"split": model.spec.instances, "s0": model.spec.instances.components()}
        spacing = model.config.spacing
        cells = {
            way: scores(probabilities_to_labels(probabilities, r, 3, spacing), truth)[0] for way, r in ways.items()
        }
        print(json.dumps(dict(name=args.name, seed=args.seed, cpu_s=round(spent), steps=steps, **cells)), flush=True)

    run = nu.iter_train(model, [image], [annotation], **options)
    next_score, mark = 60.0, time.process_time()
    for event in run:
        steps = getattr(event, "step", steps)
        now = time.process_time()
        spent, mark = spent + now - mark, now
        if not args.decay and spent >= next_score:
            evaluate()
            next_score, mark = next_score + 60.0, time.process_time()
            if spent >= 60 * args.minutes:
                run.close()
                break
    if args.decay:
        evaluate()


if __name__ == "__main__":
    main()
