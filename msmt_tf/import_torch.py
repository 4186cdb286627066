r"""Imports the PyTorch ancestors' released weights (read without PyTorch, never executing them).

    python -m msmt_tf.import_torch damsm --text_encoder text_encoder200.pth \
        --image_encoder image_encoder200.pth --data_dir data/birds --out DIR
    python -m msmt_tf.import_torch <subcommand> --help

Subcommands are registered in `SUBCOMMANDS` (name -> module). A subcommand's module provides
`define_flags(flag_values=None)` (its absl flags, defined only when that subcommand runs) and an
absl `main(argv)`; adding one is one line here. Files are read by `msmt_tf.interop.torch_io`
(both `torch.save` formats, restricted unpickler).
"""

import importlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if __name__ == "__main__":  # before TensorFlow is imported: its known-harmless native lines off
  from msmt_tf import console  # pylint: disable=g-import-not-at-top
  console.quiet_native_logs()

__all__ = ["SUBCOMMANDS", "main"]

SUBCOMMANDS = {
    # name: (module, one-line help)
    "damsm": ("msmt_tf.interop.damsm",
              "AttnGAN's DAMSM text_encoder*.pth / image_encoder*.pth -> --damsm_dir"),
    "dmgan_generator": ("msmt_tf.interop.dmgan",
                        "DM-GAN's released generator netG*.pth -> a run directory"),
}


def _usage(prog):
  lines = [f"usage: {prog} <subcommand> [--flags]   ({prog} <subcommand> --help)", "subcommands:"]
  lines += [f"  {name:<16} {help_text}" for name, (_, help_text) in SUBCOMMANDS.items()]
  return "\n".join(lines)


def main(argv=None):
  """Picks the subcommand (first argument), defines its flags, and runs it under absl."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  argv = list(sys.argv if argv is None else argv)
  prog = "python -m msmt_tf.import_torch"
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(_usage(prog))
    return 0 if len(argv) >= 2 else 2
  name = argv[1]
  if name not in SUBCOMMANDS:
    print(f"error: unknown subcommand {name!r}\n{_usage(prog)}", file=sys.stderr)
    return 2
  module = importlib.import_module(SUBCOMMANDS[name][0])
  module.define_flags()
  flags.adopt_module_key_flags(module)  # its flags in --helpshort

  def run(rest):
    if len(rest) > 1:
      sys.exit(f"error: unexpected arguments {rest[1:]} (flags are --name=value)")
    return module.main(rest)
  app.run(run, argv=[f"{prog} {name}"] + argv[2:])
  return 0


if __name__ == "__main__":
  sys.exit(main())
