"""Logging in and out of the clinic's page, and changing one's password.

A login starts a session kept on the box (``common/sessions.py``); logging out ends it
there, so a copied cookie is worth nothing after. Failed logins are throttled per
account and address; the log and the audit name an account only when it exists, so a
password typed into the name field is never written down. An account whose password
was set by provisioning must change it before anything else.
"""

from __future__ import annotations

import math
from typing import Any

from flask import abort, flash, g, redirect, request, session, url_for

from common import sessions
from common.passwords import csrf_sent, local_next
from edge import accounts
from edge.pages import _, audit, clinic, page_db, render_page

SESSION_HOURS = 12  # a clinic's shift
OPEN_WHILE_MUST_CHANGE = {"clinic.password", "clinic.logout", "static"}


def current_user() -> sessions.Who | None:
    """The live session's account (role as the box's accounts say now), or None; a
    cookie whose session ended is cleared."""
    if not session.get("user"):
        return None
    who = sessions.lookup(page_db(), str(session.get("sid", "")))
    if who is None or who.username != session["user"]:
        session.clear()
        return None
    if session.get("role") != who.role:
        session["role"] = who.role
    g.user, g.role = who.username, who.role
    return who


@clinic.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if request.method != "POST":
        return render_page("login.html", "Log in")
    if not csrf_sent(session, request.form, request.headers):  # open without a login
        abort(400, "the form is stale or forged (no valid CSRF token): reload the page")
    db = page_db()
    name = request.form.get("username", "")[:64]
    address = request.remote_addr or ""
    who: dict[str, str] | None = None

    def check() -> bool:
        nonlocal who
        who = accounts.authenticate(db, name, request.form.get("password", ""))
        return who is not None

    done = sessions.log_in(db, name, address, check, SESSION_HOURS * 3600)
    if not done.sid:
        if not done.wait:
            accounts.audit(db, done.named, "login_failed", address=address)
        if done.wait or done.locked_now:
            accounts.audit(db, done.named, "login_locked", address=address)
        if done.wait:
            minutes = math.ceil(done.wait / 60)
            flash(_("Too many failed logins. Try again in %(minutes)s minutes.",
                    minutes=minutes), "error")  # fmt: skip
            return render_page("login.html", "Log in"), 429
        flash(_("Wrong user name or password."), "error")
        return render_page("login.html", "Log in")
    assert who is not None
    session.clear()
    session.permanent = True
    session.update(sid=done.sid, user=name, role=who["role"], lang=who["language"])
    audit("login")
    return redirect(local_next(request.args.get("next", "")) or "/")


@clinic.get("/logout")
def logout() -> Any:
    if session.get("sid"):
        sessions.end(page_db(), str(session["sid"]))
        audit("logout")
    session.clear()
    return redirect(url_for("clinic.login"))


@clinic.route("/account/password", methods=["GET", "POST"])
def password() -> Any:
    """Change one's own password (the current one first); every other session of the
    account ends, this browser gets a new one."""
    if request.method == "POST":
        db, user = page_db(), str(session["user"])
        wrong, sid = sessions.change_password(
            db,
            user,
            request.form,
            lambda pw: accounts.authenticate(db, user, pw) is not None,
            lambda pw: accounts.set_password(db, user, pw),
            request.remote_addr or "",
            SESSION_HOURS * 3600,
        )
        if not wrong:
            session["sid"] = sid
            audit("password_changed")
            flash(_("Password changed."), "ok")
            return redirect("/")
        if wrong == "wrong_current":
            flash(_("The current password is wrong."), "error")
        elif wrong == "differ":
            flash(_("The two new passwords differ."), "error")
        else:
            flash(_("A new password needs at least 10 characters, "
                    "with no spaces at either end."), "error")  # fmt: skip
    return render_page("password.html", "Change your password")
