"""Runtimes that execute artifacts. Backends import their heavy libraries lazily."""
