"""The wire contract: a reading, its batch envelope, topics, acks and dead-letter reasons.

Imported by the simulators, the gateway agent, ingest and the tests alike, so it depends on
nothing but the standard library and one serialisation library.
"""
