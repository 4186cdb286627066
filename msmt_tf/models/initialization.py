"""Initial values of many variables from one compiled program (JAX).

Under JAX, Keras computes each new variable's initial value eagerly, which costs one XLA compile
per initializer and shape: building the CUB model (`bench.build`) took 343 compiles, 54 s of its
82 s on a 2-core AMD EPYC; with this module, 11 compiles and 41 s (BUILD.md, "Startup under
JAX"). Every training command, test and benchmark builds models.

While `one_program_initialization()` is open, new variables are made without a value; when the
outermost such context closes, one jitted program computes every initial value still missing,
compiled with XLA's cheapest settings (it runs once). The values are the initializers' own:
Keras initializers hold integer seeds, drawn when the layer is made, so a value does not depend
on when it is computed (XLA may round the arithmetic after the random bits differently in a
bigger program: at most 2.2e-7 apart on the small test model, seeds 0-5). A variable assigned
before the context closes (a copy, loaded weights) is never computed.

Reading a variable that still has no value (inside a context) gets Keras' placeholder, the
initializer computed eagerly, which may differ from the value the context later gives it in its
last bit: read values only after the context closes (the models' `build` methods, decorated
with `@one_program_initialization()`, close theirs before returning).

Other backends, variables with a layout (`keras.distribution`) and initializers that draw from a
`SeedGenerator` (stateful) are initialized eagerly, as Keras does. If the one program fails
(an initializer that cannot be traced), each value is computed eagerly instead.
"""

import contextlib
import functools
import threading

import keras

__all__ = ["one_program_initialization"]

# XLA's cheapest compile for a program that runs once (DebugOptions fields, every backend): on the
# CPU the smoke model's values compile in 8 s instead of 25 s.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

# False: every variable's value computed eagerly, as Keras does (the tests' reference).
ENABLED = True

_STATE = threading.local()


def _stack():
  if not hasattr(_STATE, "stack"):
    _STATE.stack = []
  return _STATE.stack


def _install():
  """Wraps `JaxVariable._initialize_with_initializer` (once): inside a context it records the
  variable for the outermost context instead of computing its value."""
  from keras.src.backend.jax import core  # pylint: disable=g-import-not-at-top
  cls = core.JaxVariable
  if getattr(cls, "_msmt_one_program", False):
    return
  eager = cls._initialize_with_initializer  # pylint: disable=protected-access

  @functools.wraps(eager)
  def initialize(self, initializer):
    stack = _stack()
    # Keras' own deferred initialization (`_deferred_initialize`, for a variable made in a
    # StatelessScope) passes the variable's kept initializer: computed eagerly, as Keras does.
    if stack and self._initializer is not initializer:  # pylint: disable=protected-access
      self._initialize_layout()  # pylint: disable=protected-access
      if (self._layout is None  # pylint: disable=protected-access
          and not isinstance(getattr(initializer, "seed", None), keras.random.SeedGenerator)):
        self._initializer = initializer  # pylint: disable=protected-access
        self._value = None  # pylint: disable=protected-access
        stack[-1].append(self)
        return
    eager(self, initializer)

  cls._initialize_with_initializer = initialize  # pylint: disable=protected-access
  cls._msmt_one_program = True


def _compute(variables):
  """Gives each of `variables` still without a value its initial value, all from one program."""
  import jax  # pylint: disable=g-import-not-at-top
  todo = [v for v in variables if v._value is None]  # pylint: disable=protected-access
  if not todo:
    return
  # The stored dtype (`v.dtype` is the autocast one inside a mixed-precision call).
  specs = [(v._initializer, v.shape, v._dtype) for v in todo]  # pylint: disable=protected-access

  def initial_values():
    with keras.StatelessScope(initialize_variables=False) as scope:  # one that writes a
      values = [init(shape, dtype=dtype) for init, shape, dtype in specs]  # variable (a
    if scope.state_mapping:  # SeedGenerator inside a wrapper): computed eagerly instead
      raise ValueError("an initializer writes a variable")
    return values

  try:
    lowered = jax.jit(initial_values).lower()
    try:
      compiled = lowered.compile(compiler_options=COMPILER_OPTIONS)
    except Exception:  # pylint: disable=broad-except  (a backend without these options)
      compiled = lowered.compile()
    values = compiled()
  except Exception:  # pylint: disable=broad-except  (an initializer that cannot be traced)
    values = [init(shape, dtype=dtype) for init, shape, dtype in specs]
  for v, x in zip(todo, values):
    v._initialize(v._convert_to_tensor(x))  # pylint: disable=protected-access
    v._initializer = None  # pylint: disable=protected-access


@contextlib.contextmanager
def one_program_initialization():
  """See the module docstring. Nested contexts hand their variables to the outermost, which
  computes the values when it closes. If the body raises, nothing is computed: the error is not
  slowed by a compile for a model that was not made (a variable left without a value still
  reads as its initializer's value, Keras' placeholder)."""
  if not ENABLED or keras.backend.backend() != "jax":
    yield
    return
  _install()
  stack = _stack()
  stack.append([])
  ok = False
  try:
    yield
    ok = True
  finally:
    pending = stack.pop()
    if stack:
      stack[-1].extend(pending)
    elif ok:
      _compute(pending)

