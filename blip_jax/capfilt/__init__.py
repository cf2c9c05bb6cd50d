"""CapFilt (BLIP's dataset bootstrapping): caption web images with a captioner, filter web and
synthetic texts with a filter's ITM head, write the kept pairs as a new training dataset (TFDS
array_record and/or webdataset tar shards).

    python -m blip_jax.capfilt --config=configs/capfilt.py --workdir=DIR [--config.KEY=VALUE ...]

API: `run(config, workdir) -> summary dict`, `default_config()`. Modules: defaults (settings),
job (pmapped steps, driver), output (work units and their result files, JSON, summary), dataset
(TFDS builder), webdataset_output (tar shards).
"""

from blip_jax.capfilt.defaults import CapFiltConfigError, default_config
from blip_jax.capfilt.job import run

__all__ = ["CapFiltConfigError", "default_config", "run"]
