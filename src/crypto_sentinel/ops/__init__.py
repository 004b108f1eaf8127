"""Operational helpers: install and run the infrastructure the pipeline needs on one machine."""
