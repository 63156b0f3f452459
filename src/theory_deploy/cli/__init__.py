"""Command-line entry points. Each tool (`processorctl`, `localctl`, `modalctl`, `theory-deploy`)
assembles its sub-commands from the `*_cmds` modules; `framework` holds what they share."""
