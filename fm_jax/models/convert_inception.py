"""Command line: convert pytorch-fid's Inception weights (.pth) into the .npz that fm_jax reads.

    python -m fm_jax.models.convert_inception pt_inception-2015-12-05-6726825d.pth ~/.cache/fm_jax/inception_v3_fid.npz

Needs PyTorch for reading the .pth (`pip install torch`, CPU build). The weights file is not downloaded: fetch it
from `fm_jax.models.inception.PYTORCH_FID_WEIGHTS_URL`. See `fm_jax.models.inception`.
"""

from __future__ import annotations

import argparse

import numpy as np

from . import inception


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m fm_jax.models.convert_inception",
        description=f"Convert {inception.PYTORCH_FID_WEIGHTS_FILE} (from {inception.PYTORCH_FID_WEIGHTS_URL}) "
                    "into fm_jax's .npz weights file for the FID Inception-v3.")
    parser.add_argument("pth", help="the PyTorch state dict (pytorch-fid's or torch-fidelity's 2015-12-05 file)")
    parser.add_argument("out", nargs="?", default=None,
                        help=f"output .npz (default: {inception.default_inception_weights_path()})")
    args = parser.parse_args(argv)
    out = inception.convert_pytorch_fid_weights(args.pth, args.out or inception.default_inception_weights_path())
    with np.load(out) as f:
        sha = str(f["__source_sha256__"])
    note = "" if sha.startswith("6726825d") else " — not pytorch-fid's released file (its SHA-256 starts 6726825d)"
    print(f"wrote {out} from {args.pth} (SHA-256 {sha[:16]}…{note})")


if __name__ == "__main__":
    main()
