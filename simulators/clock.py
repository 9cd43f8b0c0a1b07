"""The simulators share the gateway agent's clocks, so one `ManualClock` or `AcceleratedClock`
can drive a simulated fleet and the agent polling it (see gateway_agent/clock.py)."""

from gateway_agent.clock import AcceleratedClock, Clock, ManualClock, SystemClock

__all__ = ["AcceleratedClock", "Clock", "ManualClock", "SystemClock"]
