"""What each --fuse_gate mode asks XLA to run for a fuse gate's gradient (a CPU can show it).

  KERAS_BACKEND=jax python benchmarks/fuse_gate_hlo.py [--policy mixed_bfloat16]
      [--shape 4,64,64,48] [--modes reduce,matvec,conv]

Compiles, under JAX, the gradient of one `GatedFusion` (scalar gate) w.r.t. its variables for
two maps of `--shape` (B, H, W, C), per mode, and prints one JSON line per mode: the op counts
of the lowered StableHLO (`dot_general`, `reduce`, `convolution`) and of the HLO after XLA's
CPU pipeline (`dot`, `reduce`, `convolution`), and the operand types of each lowered
`dot_general`. BUILD.md ("The sixth sitting's profiles read again on the CPU") reads them:
'matvec' turns the kernel gradients' column reductions into matrix-vector products, which
XLA's GPU simplifier does not turn back into reductions (it does so for vector-vector dots
only). Nothing is timed: on a CPU the difference says nothing about an H100.
"""

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def counts(policy="float32", shape=(4, 64, 64, 48), modes=("reduce", "matvec", "conv")):
  """{mode: {"lowered": {...}, "compiled": {...}, "dots": [...]}} (see the module doc)."""
  if os.environ.get("KERAS_BACKEND") != "jax":
    raise SystemExit("fuse_gate_hlo.py lowers with JAX: run it with KERAS_BACKEND=jax")
  import jax  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from keras import ops  # pylint: disable=g-import-not-at-top
  from msmt_tf.layers import blocks  # pylint: disable=g-import-not-at-top
  from msmt_tf.layers import fuse  # pylint: disable=g-import-not-at-top
  keras.mixed_precision.set_global_policy(policy)
  rng = np.random.default_rng(0)
  a, b = (rng.standard_normal(shape).astype("float32") for _ in range(2))
  before = blocks.implementation("fuse_gate")
  out = {}
  try:
    for mode in modes:
      blocks.set_implementation("fuse_gate", mode)
      layer = fuse.GatedFusion(name="fuse")
      layer(a, b)
      variables = layer.trainable_variables

      def loss(values, a, b, layer=layer, variables=variables):
        with keras.StatelessScope(list(zip(variables, values))):
          return ops.sum(ops.cast(layer(a, b), "float32"))

      lowered = jax.jit(jax.grad(loss)).lower([v.value for v in variables], a, b)
      text, hlo = lowered.as_text(), lowered.compile().as_text()
      out[mode] = {
          "lowered": {op: len(re.findall(rf"stablehlo\.{op}\b", text))
                      for op in ("dot_general", "reduce", "convolution")},
          "compiled": {op: len(re.findall(rf"\b{op}\(", hlo))
                       for op in ("dot", "reduce", "convolution")},
          "dots": [line.rsplit(":", 1)[-1].strip()
                   for line in re.findall(r"stablehlo\.dot_general[^\n]*", text)]}
  finally:
    blocks.set_implementation("fuse_gate", before)
    keras.mixed_precision.set_global_policy("float32")
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--policy", default="float32", choices=["float32", "mixed_bfloat16"])
  parser.add_argument("--shape", default="4,64,64,48",
                      help="B,H,W,C of each map (default 4,64,64,48)")
  parser.add_argument("--modes", default="reduce,matvec,conv")
  args = parser.parse_args(argv)
  shape = tuple(int(n) for n in args.shape.split(","))
  if len(shape) != 4 or min(shape) < 1:
    parser.error(f"--shape {args.shape}: give B,H,W,C, four positive integers")
  for mode, found in counts(args.policy, shape, args.modes.split(",")).items():
    print(json.dumps({"mode": mode, "policy": args.policy, "shape": list(shape), **found}))


if __name__ == "__main__":
  main()
