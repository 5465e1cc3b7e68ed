"""Invoice reminders: the second example service (only a task endpoint; the platform reduces)."""
