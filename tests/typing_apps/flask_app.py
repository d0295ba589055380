"""What the README shows for Flask, as a user writes it: checked with ``mypy --strict``."""

from flask import Flask

from memsession.contrib.flask import MemSession, get_session

app = Flask(__name__)
app.config["SECRET_KEY"] = "..."
MemSession(app)


@app.post("/login")
def login() -> str:
    session = get_session()
    session.regenerate()
    session["user"] = "ada"
    return "ok"


@app.post("/logout")
def logout() -> str:
    get_session().destroy()
    return "bye"
