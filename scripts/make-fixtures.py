#!/usr/bin/env python3
"""Cut the test fixtures (fixtures/mnist) from the verified full MNIST (data/mnist).

The first TRAIN training images and the first TEST test images, written as raw IDX files
with the same names as data/mnist, so every test runs without a download.
Usage: make-fixtures.py [SRC=data/mnist] [DST=fixtures/mnist] [TRAIN=600] [TEST=200]
"""
import os
import struct
import sys

src, dst = (sys.argv[1:3] + ["data/mnist", "fixtures/mnist"][len(sys.argv[1:3]):])[:2]
n_train = int(sys.argv[3]) if len(sys.argv) > 3 else 600
n_test = int(sys.argv[4]) if len(sys.argv) > 4 else 200


def cut(name, n):
    with open(os.path.join(src, name), "rb") as f:
        magic, = struct.unpack(">I", f.read(4))
        ndims = magic & 0xFF
        dims = list(struct.unpack(">" + "I" * ndims, f.read(4 * ndims)))
        per = 1
        for d in dims[1:]:
            per *= d
        body = f.read(n * per)
    dims[0] = n
    with open(os.path.join(dst, name), "wb") as f:
        f.write(struct.pack(">I", magic) + struct.pack(">" + "I" * ndims, *dims) + body)


os.makedirs(dst, exist_ok=True)
for split, n in (("train", n_train), ("t10k", n_test)):
    cut(f"{split}-images.idx3-ubyte", n)
    cut(f"{split}-labels.idx1-ubyte", n)
print(f"make-fixtures: {dst}: {n_train} training and {n_test} test images from {src}")
