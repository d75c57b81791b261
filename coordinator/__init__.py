"""The coordinator: planner, dispatcher, status (and later reaper, catch-up, reconcile, cutover)."""
