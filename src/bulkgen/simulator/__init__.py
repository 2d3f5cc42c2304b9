"""An OpenAI-compatible fake provider: limits, latency, usage and faults, over real HTTP.

It serves chat completions (``app``) and OpenAI's Files and Batch APIs (``batch_api``,
``batches``, ``files``), whose rows are answered exactly as the chat endpoint would answer
them, on a batch clock of their own so a "24 hour" batch can run in seconds. It imports
nothing from the rest of bulkgen, so it can stand in for any provider in the demo, the
tests and the benchmarks.
"""

from __future__ import annotations

from bulkgen.simulator.app import SimulatorApp
from bulkgen.simulator.config import FAULT_KINDS, BatchConfig, ConfigError, SimConfig
from bulkgen.simulator.server import SimulatorProcess, running_simulator
from bulkgen.simulator.tokens import count_tokens

__all__ = [
    "FAULT_KINDS",
    "BatchConfig",
    "ConfigError",
    "SimConfig",
    "SimulatorApp",
    "SimulatorProcess",
    "count_tokens",
    "running_simulator",
]
