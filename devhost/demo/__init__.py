"""``python -m devhost demo`` (``make demo``): the product shown end to end on the local stack.

:mod:`~devhost.demo.audience` seeds the audience through ``/api/messages``, :mod:`~devhost.demo.client` calls
the broadcast API as a Logic App does, :mod:`~devhost.demo.progress` reads per-tenant progress and limiter
state for the live view, :mod:`~devhost.demo.report` writes the report, the CSV and the chart, and
:mod:`~devhost.demo.run` puts them together.
"""
