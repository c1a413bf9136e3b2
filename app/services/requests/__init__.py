"""Erasure requests: intake, the request record, its one lifecycle (statuses and transitions) and
who hears of them (subscribers), deadlines, subjects and certificates. Imports ``models`` (which model
holds a subject) and ``integrations`` only through the subscribers installed at start-up."""
