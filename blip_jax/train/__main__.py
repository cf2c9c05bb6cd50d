"""Train BLIP (pre-training or fine-tuning) from an ml_collections config.

    python -m blip_jax.train --config=configs/pretrain_tiny.py --workdir=DIR [--config.KEY=VALUE ...]

Restarting with the same workdir resumes from its latest checkpoint. Multi-process: see
blip_jax/distributed.py and launch/.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from blip_jax import cli, distributed
from blip_jax.train.defaults import check_keys

FLAGS = flags.FLAGS
distributed.define_flags()
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl and TensorBoard events.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # orbax and grain log every save/read at INFO; the progress line is what users watch.
    logging.set_verbosity(logging.WARNING)
    cli.check_output_dir(FLAGS.workdir, "--workdir")
    distributed.initialize_from_flags()
    from blip_jax.train.trainer import train
    train(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    cli.run_absl(main, config_check=check_keys)
