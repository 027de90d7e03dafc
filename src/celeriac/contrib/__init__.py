"""Integrations with web frameworks and test runners, each in its own package.

`celeriac.contrib.django` (fix-up, ORM result backend, Django app), `celeriac.contrib.flask`,
`celeriac.contrib.pytest` (the pytest plugin), `celeriac.contrib.opentelemetry` (tracing).
Nothing here is imported by the core: each integration is loaded only when a project uses
it.
"""
