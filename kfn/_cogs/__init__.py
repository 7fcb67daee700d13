"""Shared kits below every adapter and component that uses them (as kopf's `_cogs`): a NATS
connection with retries, SQLite on a thread of its own, and starting parts in order and stopping
them in reverse. No domain knowledge lives here."""
