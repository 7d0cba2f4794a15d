"""Domain events: written to an outbox with the change that caused them, then dispatched."""
