"""The platform API (FastAPI): tier-scoped access to meters, energy data, alarms and reports."""
