"""The copy test's ratio threshold: Gu et al.'s first/second nearest-training-image distance ratio
of novel, degraded-novel and copied images, in several feature spaces.

Training images: the built-in synthetic faces; novel images: fresh faces of the same
distribution (:func:`facegan.synthetic.synthetic_holdout`), never seen by the reference. Each
set is compared with the training features (:func:`evaluation.metrics.nearest_training`); the
report gives quantiles of the ratio and the share of each set below candidate thresholds.

- ``novel``: held-out real faces (what a perfect generator that never copies draws);
- ``blur1``/``blur2``/``noise16``/``noise32``/``blur2+noise16``: novel faces blurred (Gaussian,
  sigma in pixels) and/or with pixel noise (std in grey levels): imperfect but novel samples,
  which lie closer to the training set in general than novel real faces do (the old test's
  false alarms, issue 26);
- ``copy``, ``copy+noise8``, ``copy+noise16``, ``copy+blur1``: training faces handed back,
  exact or a little degraded (these must fall below the threshold).

Spaces: ``pixels`` (flattened images, Gu et al.'s space), ``random`` (the offline random CNN),
``encoder`` (a SimCLR encoder trained ``--encoder-epochs`` on the training faces; 0 skips it).

    python -m experiments.copy_ratio [--num-train 2000] [--num-novel 1000] [--size 64] [--encoder-epochs 15]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.features import get_extractor
from evaluation.metrics import nearest_training
from facegan.synthetic import synthetic_faces, synthetic_holdout

THRESHOLDS = (0.1, 0.2, 0.25, 1 / 3, 0.4, 0.5, 0.6)
QUANTILES = (0.001, 0.01, 0.05, 0.5)


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(np.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-x**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    out = images.float()
    channels = out.shape[1]
    out = F.pad(out, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return out.round().clamp(0, 255).to(torch.uint8)


def noise(images: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    rng = torch.Generator().manual_seed(seed)
    return (images.float() + std * torch.randn(images.shape, generator=rng)).round().clamp(0, 255).to(torch.uint8)


def sets(train: torch.Tensor, novel: torch.Tensor) -> dict[str, torch.Tensor]:
    copies = train[: len(novel)]
    return {
        "novel": novel,
        "blur1": blur(novel, 1.0),
        "blur2": blur(novel, 2.0),
        "noise16": noise(novel, 16, 1),
        "noise32": noise(novel, 32, 2),
        "blur2+noise16": noise(blur(novel, 2.0), 16, 3),
        "copy": copies,
        "copy+noise8": noise(copies, 8, 4),
        "copy+noise16": noise(copies, 16, 5),
        "copy+blur1": blur(copies, 1.0),
    }


def spaces(train: torch.Tensor, encoder_epochs: int):
    yield "pixels", lambda images: images.reshape(len(images), -1).double().numpy() / 255
    random = get_extractor("random")
    yield "random", lambda images: random.extract(images)
    if encoder_epochs:
        from evaluation.encoder import EncoderSettings, train_encoder

        started = time.time()
        encoder = train_encoder(train, EncoderSettings(epochs=encoder_epochs), progress=False)
        print(f"(encoder: {encoder_epochs} epochs in {time.time() - started:.0f} s)", flush=True)

        def extract(images):
            with torch.inference_mode():
                return torch.cat([encoder(b.float() / 255) for b in images.split(256)]).double().numpy()

        yield f"encoder{encoder_epochs}", extract


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-novel", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoder-epochs", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    train = synthetic_faces(args.num_train, args.size, seed=args.seed).images
    novel = synthetic_holdout(args.num_novel, args.size, args.seed)
    groups = sets(train, novel)
    head = (f"{'set':<14}" + "".join(f" q{q:<6g}" for q in QUANTILES)
            + "".join(f" <{t:<5.3g}" for t in THRESHOLDS) + "  first/novel-first")
    for space, extract in spaces(train, args.encoder_epochs):
        reference = extract(train)
        loo = nearest_training(reference, reference, exclude_self=True)
        novel_first = None
        print(f"\n## {space} ({reference.shape[1]} dims), {args.num_train} training faces at {args.size} px")
        print(head)
        rows = [("train (LOO)", loo)] + [(name, nearest_training(extract(images), reference))
                                          for name, images in groups.items()]
        for name, result in rows:
            ratio = result.ratio
            if name == "novel":
                novel_first = np.median(result.first)
            first = "" if novel_first is None else f"  {np.median(result.first) / novel_first:.2f}"
            print(f"{name:<14}" + "".join(f" {np.quantile(ratio, q):<7.3f}" for q in QUANTILES)
                  + "".join(f" {np.mean(ratio < t):<6.3f}" for t in THRESHOLDS) + first, flush=True)


if __name__ == "__main__":
    main()
