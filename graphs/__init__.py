"""Typed application builders that `serve run` / `serve deploy` reach through import_path + args."""
