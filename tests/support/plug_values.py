"""What a simulated Tasmota plug can report, as Hypothesis strategies: `@given(**PLUG_VALUES)`
draws `energy`, `power`, `pf`, `voltage`, `current` and a naive whole-range time `t`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import strategies as st

PLUG_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "energy": st.floats(0, 1e6),
    "power": st.floats(0, 3680),
    "pf": st.floats(0, 1),
    "voltage": st.floats(180, 260),
    "current": st.floats(0, 16),
    "t": st.datetimes(min_value=dt.datetime(2024, 1, 1), max_value=dt.datetime(2030, 1, 1)),  # noqa: DTZ001
}
