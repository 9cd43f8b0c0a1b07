"""The edge gateway agent: device profiles, register decoding, polling, outbox, publisher."""
