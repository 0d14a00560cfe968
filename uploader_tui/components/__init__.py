"""Widgets and screens of the uploader TUI."""
