"""Local stand-ins for the Bot Connector (Teams) and Microsoft Graph, built from
``shared/reference/teams-platform-facts.md``. Development and test only: excluded from deployment."""
