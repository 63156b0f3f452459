"""A local stand-in for GitHub, for tests only: the REST API (pull requests, merges, branch protection,
issues, app tokens) and the git side over smart HTTP (authentication, protected branches).

Never imported by `src/`. See `server.py` for the endpoints it answers and the rules it enforces.
"""

from .server import GitHubStandIn, GitRequest, Protection, RecordedRequest

__all__ = ["GitHubStandIn", "GitRequest", "Protection", "RecordedRequest"]
