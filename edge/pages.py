"""The clinic's blueprint and what every page of it uses: the request's index, the
user's language, the CSRF token, the audit log, rendering. The pages themselves are in
``edge/clinic.py`` (access, studies, reports), ``edge/uploads.py``,
``edge/doctorpages.py``; where a study is,
in ``edge/progress.py``."""

from __future__ import annotations

from functools import wraps
from typing import Any

from flask import Blueprint, abort, current_app, g, render_template, request, session

from common.passwords import csrf_token
from common.reads import Recent, read_target
from edge import accounts, i18n
from edge.db import get_db

clinic = Blueprint("clinic", __name__, template_folder="pages")


def admin_only(view: Any) -> Any:
    @wraps(view)
    def wrapped(*a: Any, **kw: Any) -> Any:
        if g.get("role") != "admin":
            abort(403, "only the box's admin may see this")
        return view(*a, **kw)

    return wrapped


def page_db():  # type: ignore[no-untyped-def]
    return get_db()


def page_language() -> str:
    """The person's language once logged in; before that (the login page), the box's
    ``language`` key: the clinic's own."""
    return str(session.get("lang") or current_app.config["RADSETU"]["language"])


def _(message: str, **kw: Any) -> str:
    """The message in the user's language, with ``kw`` filled in."""
    text = i18n.gettext(page_language(), message)
    return text % kw if kw else text


def page_csrf() -> str:
    return csrf_token(session)


def audit(action: str, study_uid: str = "", detail: str = "") -> None:
    accounts.audit(
        page_db(), session.get("user", ""), action, study_uid, detail, request.remote_addr or ""
    )


READS = {  # endpoint -> audit action, for every GET that returns patient data
    "api.studies": "list_studies",
    "api.study": "read_study",
    "api.reports_list": "list_reports",
    "api.report_pdf": "read_report",
    "clinic.home": "list_studies",
    "clinic.studies_json": "list_studies",
    "clinic.reports_page": "list_reports",
    "clinic.orders_page": "list_orders",
}


def audit_reads(response: Any) -> Any:
    """After each request: a successful read of patient data gets an audit row (API
    callers on the box itself too, named ``loopback``), coalesced (common/reads.py)."""
    action = READS.get(request.endpoint or "")
    if action is None or request.method != "GET" or response.status_code >= 400:
        return response
    user = session.get("user") or "loopback"
    address = request.remote_addr or ""
    study_uid, detail = read_target(request.view_args)
    recent = current_app.extensions.setdefault("radsetu.reads", Recent())
    if recent.first((user, action, study_uid, detail, address)):
        accounts.audit(page_db(), user, action, study_uid, detail, address)
    return response


def render_page(page: str, title: str, **ctx: Any) -> str:
    return render_template(page, title=_(title), csrf=page_csrf(), languages=i18n.LANGUAGES, **ctx)
