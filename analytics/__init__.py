"""Analytics: pure Polars transforms (consumption, rollups, detectors) and thin job runners."""
