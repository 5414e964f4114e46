"""Adapters: one module per external system (Azure Tables and Queues, Bot Connector, Bot Framework auth, Graph, Durable client, telemetry export).

Owns every SDK call behind the ports and translates SDK errors into :mod:`proactive.errors` at the boundary.
May import: azure.* (never azure.functions), aiohttp, msgraph, microsoft_agents, ports, models; never functions/ or orchestration/.
"""
