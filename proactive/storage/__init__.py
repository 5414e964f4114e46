"""Storage: the store ports, the stores over any entity table, key encoding and continuation tokens.

Owns how records are laid out in tables (keys, ETags, paging); adapters implement ``EntityTable``.
May import: proactive.models, errors, json_input and the pure limiter (thread windows); no adapters, no azure.
"""
