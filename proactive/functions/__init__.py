"""Functions blueprints: triggers are wiring (parse, call one service, map the result).

Owns the bindings: function names, routes, queues, schedules, and the Durable client handed to adapters.
May import: anything; the only package that imports azure.functions (with the composition root, function_app.py).
"""

from proactive.functions.broadcasts import bp as broadcasts_blueprint
from proactive.functions.deadletters import bp as deadletters_blueprint
from proactive.functions.durable import bp as durable_blueprint
from proactive.functions.health import bp as health_blueprint
from proactive.functions.installs import blueprint as installs_blueprint
from proactive.functions.messages import bp as messages_blueprint
from proactive.functions.redelivery import blueprint as retries_blueprint
from proactive.functions.reports import bp as reports_blueprint

__all__ = [
    "broadcasts_blueprint",
    "deadletters_blueprint",
    "durable_blueprint",
    "health_blueprint",
    "installs_blueprint",
    "messages_blueprint",
    "reports_blueprint",
    "retries_blueprint",
]
