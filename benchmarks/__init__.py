"""Throughput benchmarks: `alexnet-k3 bench` runs `benchmarks.runner.main`.

Each implementation (a Keras backend or a torchvision baseline) is measured in
its own process, since a process has one Keras backend. Nothing in this package
imports keras, torch, jax or tensorflow at import time: the parent process
only orchestrates workers and formats their records.
"""
