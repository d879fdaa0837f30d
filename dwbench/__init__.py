"""The app's foundations (settings, errors, logging) and its entry points (runtime, CLI)."""
