"""blip_jax: BLIP (Bootstrapping Language-Image Pre-training) in JAX/Flax."""

from setuptools import find_packages, setup

# Versions tested together on CPU (Python 3.11). The test extra brings the PyTorch reference
# (transformers' BLIP) that the parity tests compare against; torch is pinned to the CPU wheel.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    # Not the newest (0.7.0): with numpy 2.4 its extension spends 1.5-2.5 s registering its ufunc
    # loops (perf: numpy's PyUFunc_AddLoop scanning the loop lists) on every import of jax, i.e.
    # in every command, data worker and test process; 0.6.0 has every dtype jax 0.10.2 names and
    # imports in 0.02 s (`import jax` 3.4-4.0 s -> 1.6-2.2 s on a 2-core AMD EPYC).
    "ml_dtypes==0.6.0",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow-datasets==4.9.10",
    "array-record==0.8.6",
    "grain==0.2.18",
    "ml_collections==1.1.0",
    "absl-py==2.5.1",
    "importlib-resources==7.1.0",  # imported by tensorflow-datasets when building from a package
    "tensorboard==2.21.0",
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "filelock==4.3.1",  # jax's compilation cache locks its directory (blip_jax/compilation_cache.py)
    "pillow==12.3.0",  # apache-beam 2.77 needs pillow<13 (as protobuf<7, pyarrow<26 below)
    "av==18.1.0",  # PyAV (FFmpeg): video decoding and the synthetic clips' encoding (libx264)
    "numpy==2.4.6",
    # COCO caption metrics (BLEU, METEOR, ROUGE-L, CIDEr, SPICE); METEOR/SPICE and the PTB
    # tokenizer run bundled Java jars (a JRE must be on PATH for those).
    "pycocoevalcap==1.2",
    "matplotlib==3.11.2",  # the bootstrap experiment's plot
    # Distributed dataset builds (prepare --beam_runner): TFDS's Beam writer. apache-beam 2.77
    # requires pillow<13, protobuf<7 and pyarrow<26, hence those pins.
    "apache-beam==2.77.0",
    "protobuf==6.33.6",
    "pyarrow==25.0.1",  # also reads img2dataset's parquet indexes (webdataset source)
]

setup(
    name="blip_jax",
    version="0.1.0",
    description="BLIP (Bootstrapping Language-Image Pre-training) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["blip_jax", "blip_jax.*"]),
    package_data={"blip_jax": ["assets/*"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "torch==2.13.0", "transformers==5.24.0"],
    },
)
