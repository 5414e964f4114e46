"""Broadcasts: the HTTP contract (request, message), audience materialisation, the service behind the routes.

Owns what a broadcast is and how it is started, followed, updated, recalled and reported.
May import: proactive.models/errors/settings, storage ports, delivery contracts, orchestration names; no adapters.
"""
