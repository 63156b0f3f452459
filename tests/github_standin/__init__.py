"""A local stand-in for GitHub's REST API (the pull-request and issue endpoints), for tests only.

Never imported by `src/`. See `server.py` for the endpoints it answers.
"""

from .server import GitHubStandIn, RecordedRequest

__all__ = ["GitHubStandIn", "RecordedRequest"]
