"""theory-deploy: ship containerized processors to Modal (or the local Docker engine) pinned by
digest, and prove that what runs is what was pinned. The CLIs live in `theory_deploy.cli`; see
docs/ARCHITECTURE.md for one module per concept. Importing the package imports nothing else, so
`theory_deploy.gha` works from a bare checkout (the GitHub Action's setup step uses it so)."""

__version__ = "0.1.0"
