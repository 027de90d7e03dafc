"""Flask's "Background Tasks with Celery" pattern, with only the import changed.

Start a worker with `celeriac -A app worker -l info`, then the site with `flask run`.
"""

from __future__ import annotations

from flask import Flask, current_app, request

from celeriac import Celery, Task, shared_task


def celery_init_app(app: Flask) -> Celery:
    class FlaskTask(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            # Every task runs inside the Flask app context (config, extensions, db).
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(
        CELERY={
            "broker_url": "sqlite:///broker.db",  # or redis://localhost:6379/0
            "task_ignore_result": False,
        },
        GREETING="Hello",
    )
    app.config.from_prefixed_env()
    celery_init_app(app)

    @app.post("/greet")
    def start_greeting() -> dict[str, str]:
        result = greet.delay(request.form.get("name", "world"))
        return {"result_id": result.id}

    @app.get("/result/<result_id>")
    def task_result(result_id: str) -> dict[str, object]:
        result = celery_app.AsyncResult(result_id)
        return {"ready": result.ready(), "value": result.result if result.ready() else None}

    return app


@shared_task
def greet(name: str) -> str:
    return f"{current_app.config['GREETING']}, {name}!"


flask_app = create_app()
celery_app = flask_app.extensions["celery"]
