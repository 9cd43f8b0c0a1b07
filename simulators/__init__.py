"""Faithful meter simulators with fault injection and a ground-truth ledger."""
