"""Orchestration: scan, reconcile, guard, plan, execute, record."""
