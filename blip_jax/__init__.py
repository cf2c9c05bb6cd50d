"""blip_jax: BLIP (Bootstrapping Language-Image Pre-training) in JAX/Flax."""

__version__ = "0.1.0"
