"""The Azure Functions app: one DFApp, blueprints from ``proactive/``, no logic here.

Settings are resolved at import, so a missing or malformed setting fails the app at start with a
message naming the setting.
"""

import os

import azure.durable_functions as df
import azure.functions as func

from proactive import composition
from proactive.functions import (
    broadcasts_blueprint,
    deadletters_blueprint,
    durable_blueprint,
    health_blueprint,
    installs_blueprint,
    messages_blueprint,
    reports_blueprint,
    retries_blueprint,
)

composition.configure(os.environ)

app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(health_blueprint)
app.register_functions(messages_blueprint)
app.register_functions(broadcasts_blueprint)
app.register_functions(deadletters_blueprint)
app.register_functions(reports_blueprint)
app.register_functions(durable_blueprint)
app.register_functions(retries_blueprint())
app.register_functions(installs_blueprint())
