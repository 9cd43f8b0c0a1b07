"""Detectors: pure Polars rules that turn readings and consumption into explainable findings.

Each `detect_<x>(readings, consumption, meters, *, params, weather=None)` returns a frame in
`analytics.frames.FINDINGS_SCHEMA`: one row per detected condition, with its evidence (the
values, the baseline, the rule and its parameters) and a severity. Shared helpers live in
`analytics.detectors.common`.

- consumption anomalies: `detect_leak`, `detect_usage` (spikes and drops), `detect_stuck`,
  `detect_comm_loss`;
- electrical and network: `detect_electrical` (CT reversal, phase loss, voltage imbalance),
  `detect_balance` (main meter against its sub-meters);
- equipment: `detect_equipment` (degradation warnings with a lead time).
"""

from analytics.detectors.balance import BalanceParams, detect_balance
from analytics.detectors.comm_loss import CommLossParams, detect_comm_loss
from analytics.detectors.electrical import ElectricalParams, detect_electrical
from analytics.detectors.equipment import EquipmentParams, detect_equipment
from analytics.detectors.leak import LeakParams, detect_leak
from analytics.detectors.stuck import StuckParams, detect_stuck
from analytics.detectors.usage import UsageParams, detect_usage

__all__ = [
    "BalanceParams",
    "CommLossParams",
    "ElectricalParams",
    "EquipmentParams",
    "LeakParams",
    "StuckParams",
    "UsageParams",
    "detect_balance",
    "detect_comm_loss",
    "detect_electrical",
    "detect_equipment",
    "detect_leak",
    "detect_stuck",
    "detect_usage",
]
