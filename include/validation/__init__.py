"""Validation of a refresh with Great Expectations, before anything is published."""
