"""The public entry to running a pipeline: `Pipeline` supervises the ingest, process and API
roles (`crypto_sentinel.pipeline`); tests, benchmarks and embedders import it from here."""

from crypto_sentinel.pipeline.simulated import fault_plan, simulator_resume
from crypto_sentinel.pipeline.supervisor import Pipeline

__all__ = ["Pipeline", "fault_plan", "simulator_resume"]
