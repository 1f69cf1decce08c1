"""Write the digits calibration and validation sets (scikit-learn's bundled 8x8 digits, NCHW float32).

Usage: python calibration/make_digits.py -o calibration/ [--calib 256]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("calibration"))
    parser.add_argument("--calib", type=int, default=256, help="number of calibration samples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    order = np.random.default_rng(args.seed).permutation(len(images))
    calib, val = order[: args.calib], order[args.calib :]
    args.output.mkdir(parents=True, exist_ok=True)
    np.save(args.output / "digits.npy", images[calib])
    np.save(args.output / "digits_val.npy", images[val])
    np.save(args.output / "digits_val_labels.npy", digits.target[val].astype(np.int64))
    print(f"wrote {len(calib)} calibration and {len(val)} validation samples to {args.output}")


if __name__ == "__main__":
    main()
