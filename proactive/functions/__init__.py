"""Functions blueprints: triggers are wiring (parse, call one service, map the result)."""

from proactive.functions.health import bp as health_blueprint
from proactive.functions.messages import bp as messages_blueprint

__all__ = ["health_blueprint", "messages_blueprint"]
