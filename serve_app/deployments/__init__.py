"""Ray Serve shells: each parses, awaits and calls a plain core object. No logic lives here
that could be tested without Ray."""
