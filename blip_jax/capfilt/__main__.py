"""Run CapFilt from an ml_collections config.

    python -m blip_jax.capfilt --config=configs/capfilt.py --workdir=DIR [--config.KEY=VALUE ...]

Restarting with the same workdir resumes: finished units (result files of records_per_shard
records) are kept, the rest computed. Multi-process: see blip_jax/distributed.py and launch/; the
units left are divided among the processes of each run, so a run may resume with another
number of processes than the one it continues. --config.output_format=webdataset (or both)
also writes webdataset tar shards (blip_jax/capfilt/webdataset_output.py).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from blip_jax import cli, distributed
from blip_jax.capfilt.defaults import check_config

FLAGS = flags.FLAGS
distributed.define_flags()
config_flags.DEFINE_config_file("config", None, "CapFilt config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Result shards, summary.json and the release-format JSONs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax and grain log every read at INFO
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()  # the dataset write's bars would bury the summary
    cli.check_output_dir(FLAGS.workdir, "--workdir")
    distributed.initialize_from_flags()
    from blip_jax.capfilt import run
    run(FLAGS.config, FLAGS.workdir)  # settings or data errors: one line (blip_jax.cli)


if __name__ == "__main__":
    cli.run_absl(main, config_check=check_config)
