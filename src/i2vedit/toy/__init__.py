"""Toy procedural video world."""
