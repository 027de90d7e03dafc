"""The application object, its settings, task registry and Task class."""
