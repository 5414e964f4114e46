"""Graph proactive installation: reach users with no conversation reference by installing the app for them.

Owns the installer (Graph calls to a stored reference), the installs queue worker and the Graph pacing.
May import: proactive.models/errors/settings, storage and delivery ports, the limiter contract; no adapters.
"""
