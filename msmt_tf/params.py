r"""Parameter table per part, beside the paper's Table 2.

    python -m msmt_tf.params --flagfile=configs/cub.cfg

Counts follow the paper's convention (PyTorch `parameters()`): generator + DAMSM text encoder;
batch-norm running statistics, the image encoder and the discriminators are excluded.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if __name__ == "__main__":  # before TensorFlow is imported: its known-harmless native lines off
  from msmt_tf import console  # pylint: disable=g-import-not-at-top
  console.quiet_native_logs()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from msmt_tf import config  # pylint: disable=g-import-not-at-top

__all__ = ["parameter_table", "format_table"]

FLAGS = flags.FLAGS
flags.DEFINE_bool("discriminators", False, "Also list the discriminators (not in the total).")


def parameter_table(cfg, words_num=18):
  """Returns [(part, count)] and the total, building the models (no forward pass)."""
  from msmt_tf.layers import count_parameters  # pylint: disable=g-import-not-at-top
  g = cfg.build_generator(words_num)
  enc = cfg.build_text_encoder(words_num)
  init_name = (f"MTWIG (ks={cfg.kernel_size})" if cfg.initial_stage == "mtwig"
               else "conventional IG")
  rows = [("text encoder (DAMSM BiLSTM)", count_parameters(enc)),
          ("conditioning augmentation", count_parameters(g.ca)),
          (f"initial stage: {init_name} + image 64", count_parameters(g.init_stage)
           + count_parameters(g.to_images[0]))]
  refine = {"imhm": f"IMHM, {cfg.num_heads} SDM heads", "sdm": "SDM, 1 head",
            "dmgan": "DM-GAN memory"}[cfg.refinement]
  for k, (stage, to_image) in enumerate(zip(g.refine_stages, g.to_images[1:]), start=2):
    side = 64 * 2 ** (k - 1)
    rows.append((f"refinement stage {k}: {refine} + image {side}",
                 count_parameters(stage) + count_parameters(to_image)))
  total = sum(n for _, n in rows)
  assert total == count_parameters(g) + count_parameters(enc)
  return rows, total


def format_table(rows, total, paper=None):
  width = max(len(r[0]) for r in rows) + 2
  lines = [f"{'part':<{width}}{'parameters':>14}"]
  lines += [f"{name:<{width}}{n:>14,}" for name, n in rows]
  lines.append(f"{'total':<{width}}{total:>14,}  ({total / 1e6:.2f}M)")
  if paper is not None:
    rel = (total / 1e6 - paper) / paper * 100
    lines.append(f"{'paper Table 2':<{width}}{paper:>13.2f}M  (ours {rel:+.2f}%)")
  return "\n".join(lines)


def main(argv):
  del argv
  try:
    cfg = config.model_config_from_flags()
    rows, total = parameter_table(cfg, config.words_num_from_flags())
  except ValueError as e:
    sys.exit(f"error: {e}")
  paper = None
  if (cfg.channels == (48 if cfg.initial_stage == "mtwig" else 64) and cfg.num_stages == 3
      and cfg.vocab_size == config.PAPER_VOCAB.get(FLAGS.dataset)):  # Table 2's model only
    paper = config.PAPER_TABLE2.get((cfg.initial_stage, cfg.refinement, FLAGS.dataset))
  print(f"{FLAGS.dataset}: initial={cfg.initial_stage} refinement={cfg.refinement} "
        f"N_r={cfg.channels} N_m={cfg.memory_dim} h={cfg.grid} T={cfg.num_heads} "
        f"ks={cfg.kernel_size} R_NUM={cfg.num_res} vocab={cfg.vocab_size}")
  print(format_table(rows, total, paper))
  print("note: Keras' LSTM has one bias per gate; PyTorch's has two, so the PyTorch count of the "
        f"same text encoder is {8 * cfg.text_dim // 2:,} higher.")
  if FLAGS.discriminators:
    from msmt_tf.layers import count_parameters  # pylint: disable=g-import-not-at-top
    for d in cfg.build_discriminators():
      print(f"discriminator {d.resolution}: {count_parameters(d):,} (not in the total)")


if __name__ == "__main__":
  app.run(main)
