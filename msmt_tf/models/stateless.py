"""An inference forward of Keras layers as one compiled JAX program.

Under JAX, running a Keras layer eagerly compiles every operation on its own: the small test
model's sample forward is about 200 XLA compiles, the Inception network's first image 6.5 s
against a 1.2 s jit, paid again by every process. `jit_over_variables` jits the whole forward as
a pure function of the variables' values (`keras.StatelessScope`, as the training step does).

The values are read (`v.value`) at every call, not captured once: a variable assigned later (the
EMA generator after a training step's `sync`, weights loaded into a built model) is seen by the
next call without a recompile. The forward must not write a variable (inference: `training=False`,
no noise drawn from a `SeedGenerator`): a write inside the scope would be dropped, so it is
refused when the function is traced, naming the variable.
"""

import keras

__all__ = ["jit_over_variables"]


class _RecordingScope(keras.StatelessScope):
  """A `StatelessScope` that records every variable written inside it, given in its mapping or
  not (`Variable.assign` inside a stateless scope ends in `add_update`)."""

  def __init__(self, mapping):
    super().__init__(mapping)
    self.written = []

  def add_update(self, update):
    self.written.append(update[0])
    super().add_update(update)


def jit_over_variables(fn, variables):
  """`fn(*args)` compiled with `jax.jit`, the values of `variables` read at each call.

  `variables`: every Keras variable `fn` reads (a layer's `.variables`, which include batch-norm
  statistics and seed states); one left out is compiled in as a constant, its later values not
  seen. A write to any variable, listed or not, is refused. One program per argument shape and
  dtype, as `jax.jit` does.
  """
  import jax  # pylint: disable=g-import-not-at-top
  variables = list(variables)

  def pure(values, *args):
    with _RecordingScope(list(zip(variables, values))) as scope:
      out = fn(*args)
    written = list(dict.fromkeys(v.path for v in scope.written))
    if written:
      raise ValueError(f"an inference forward writes {len(written)} variable(s), which a "
                       f"compiled forward would drop: {', '.join(written[:5])}")
    return out

  jitted = jax.jit(pure)
  return lambda *args: jitted([v.value for v in variables], *args)
