"""The Python API, notebook style: time dlkern's softmax and an out-of-tree one against torch,
pivot to ratios, and compare two runs (what python -m bench.compare does).

    python examples/api_example.py
"""
import os
import sys

import bench

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plain_torch_impl import softmax  # noqa: E402  (an implementation of your own)

df = bench.run(ops="softmax", suites="tensorgrad", impls=["custom", softmax, "torch"],
               passes="forward,backward", quick=True)
print(df[["op", "case", "impl", "pass", "status", "median_s", "ratio", "ratio_lo", "ratio_hi"]])
print(bench.ratios(df))                      # dlkern / torch per row and pass
print(bench.ratios(df, "softmax"))           # the plain-torch softmax / torch
again = bench.run(ops="softmax", suites="tensorgrad", impls=["custom", "torch"],
                  passes="forward,backward", quick=True)
print(bench.compare_frames(df, again)[["case", "impl", "pass", "change", "flag"]])
