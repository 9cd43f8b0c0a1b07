"""meterward: the CLI, settings and the demo stack that wires every component together."""

__version__ = "0.1.0"
