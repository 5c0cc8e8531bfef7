"""Widgets of the tunedeck app."""
