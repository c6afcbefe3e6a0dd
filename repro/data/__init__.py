"""Datasets: synthetic (three moons), text, vision, long-context and in-context tasks."""
