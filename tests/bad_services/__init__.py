"""Deliberately wrong services: `microprocess check-service` must fail on each, naming the clause."""
