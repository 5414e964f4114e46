"""Delivery: sending one batch to Teams (claim, prepare, send, record), retries, re-delivery and dead letters.

Owns every ledger row's life after materialisation: in-process retries, hand-offs, quiet hours, dead letters.
May import: proactive.models/errors/settings, storage ports, broadcast request/message; no adapters, no azure.
"""
