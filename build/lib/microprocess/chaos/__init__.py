"""Fault injection (`faults`, read from `MICROPROCESS_CHAOS`) and the chaos suite (`suite`)."""
