"""A local, protocol-faithful Coinbase Exchange: the test double for the network.

``Market`` generates seeded, reproducible trades and renders them as the real feed's
frames; ``SimulatorServer`` serves them over the ws-feed and REST protocols on one port;
``write_recording`` writes the same stream to NDJSON without a server.
"""

from crypto_sentinel.simulator.market import Market, ProductSpec, SimTrade
from crypto_sentinel.simulator.recording import write_recording
from crypto_sentinel.simulator.server import FrameHook, Session, SimulatorServer

__all__ = [
    "FrameHook",
    "Market",
    "ProductSpec",
    "Session",
    "SimTrade",
    "SimulatorServer",
    "write_recording",
]
