"""Who is asking: session cookies and API tokens, roles, CSRF, and the login page.

Routes get the user with `Depends(current_user)` (JSON: 401 when not logged in) or
`Depends(page_user)` (HTML: redirect to /login); state-changing routes add
`Depends(csrf_protect)`. The accounts are the `AccountStore` of `hub.web.services`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from html import escape
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from hub.accounts.account_store import ROLES, AccountStore, User
from hub.accounts.login_throttle_store import Failures, LoginThrottleStore
from hub.clock import Clock
from hub.passwords import hash_password, verify_password
from hub.web.contract import pages, refusals
from hub.web.services import AccountStoreDep, ClockDep, LoginFailuresDep, PublicUrlDep

logger = logging.getLogger(__name__)

SESSION_COOKIE = "tenhub_session"
LOGIN_CSRF_COOKIE = "tenhub_login_csrf"
SESSION_TTL_MS = 12 * 3600 * 1000
LOGIN_FORM_TTL_S = 15 * 60
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# Failed logins: the first few are free (a mistyped password), then each one doubles the
# wait before the next try, up to a cap; a key is forgotten a day after its last failure.
ACCOUNT_FREE_FAILURES = 3  # of one account from one address
ADDRESS_FREE_FAILURES = 20  # from one address, on any accounts (an office behind one NAT)
FIRST_WAIT_MS = 1000
MAX_WAIT_MS = 15 * 60 * 1000
FORGET_AFTER_MS = 24 * 3600 * 1000

router = APIRouter(tags=["login"])


class LoginRequired(Exception):
    """A page needs a logged-in user; `install_auth` turns this into a redirect to /login."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class LoginThrottle:
    """Growing waits after failed logins, per (account, client address) and per address.

    Failures elsewhere never hold up the right password from another address: the
    guesser's address is slowed, not the owner. A success clears the count of that
    account from that address only, and the address's own count stays, so one address
    cannot spray many accounts. Logins from one address are tried one at a time
    (`turn`): a burst of parallel guesses cannot all pass the check before any is counted.
    """

    def __init__(self, clock: Clock, store: LoginThrottleStore) -> None:
        self.clock = clock
        self.store = store
        self._turns: dict[str, _Turn] = {}  # only addresses with a login under way

    @contextlib.asynccontextmanager
    async def turn(self, address: str) -> AsyncIterator[None]:
        """Hold this address's turn: its logins are checked and counted one at a time."""
        turn = self._turns.get(address)
        if turn is None:
            turn = self._turns[address] = _Turn()
        turn.holders += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.holders -= 1
            if not turn.holders:
                del self._turns[address]

    async def retry_after_ms(self, username: str, address: str) -> int:
        """0 if a login may be tried now, else how long until it may."""
        now = self.clock.now_ms()
        since = now - FORGET_AFTER_MS
        by_address, by_account = await self.store.failures(address, username, since)
        return max(
            _wait_left_ms(by_address, ADDRESS_FREE_FAILURES, now),
            _wait_left_ms(by_account, ACCOUNT_FREE_FAILURES, now),
        )

    async def failed(self, username: str, address: str) -> None:
        """Count a failed login of this account from this address."""
        now = self.clock.now_ms()
        await self.store.add_failure(address, username, now, now - FORGET_AFTER_MS)

    async def succeeded(self, username: str, address: str) -> None:
        """Forget the failures of this account from this address, and only those."""
        await self.store.clear_account(address, username)


class _Turn:
    """The logins under way from one address, taking turns."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.holders = 0


def wait_after_ms(failures: int, free: int) -> int:
    """The wait in ms after the last of `failures` failures in a row, `free` of them free."""
    if failures <= free:
        return 0
    doublings = min(failures - free - 1, 30)  # enough to reach the cap; keeps ints small
    return min(FIRST_WAIT_MS << doublings, MAX_WAIT_MS)


def _wait_left_ms(failures: Failures | None, free: int, now: int) -> int:
    if failures is None:
        return 0
    wait = wait_after_ms(failures.count, free)
    # Never longer than the wait itself, should the clock have been set back.
    return max(0, min(wait, failures.last_at + wait - now))


def throttle_address(host: str) -> str:
    """The address a client is throttled by: an IPv6 client by its /64, held by one site."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:100]  # not an address (a test client, a socket): taken as it is
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        # One subscriber gets a /64 or more, and may use any address in it.
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


def _wait_words(wait_ms: int) -> str:
    seconds = max(1, math.ceil(wait_ms / 1000))
    if seconds < 60:
        return f"{seconds} second{'s' if seconds > 1 else ''}"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minute{'s' if minutes > 1 else ''}"


# --- who is asking ---------------------------------------------------------------------


async def _authenticate(request: Request, accounts: AccountStore, now: int) -> User | None:
    """The user of the request's API token or session cookie, noted on request.state."""
    if getattr(request.state, "user", None) is not None:
        return request.state.user
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        user = await accounts.token_user(credentials.strip(), now)
        if user is not None:
            request.state.user, request.state.via, request.state.csrf = user, "token", None
        return user
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    found = await accounts.session_user(cookie, now)
    if found is None:
        return None
    request.state.user, request.state.csrf = found
    request.state.via = "session"
    return request.state.user


async def current_user(request: Request, accounts: AccountStoreDep, clock: ClockDep) -> User:
    """The logged-in user (API token or session); HTTP 401 when there is none."""
    user = await _authenticate(request, accounts, clock.now_ms())
    if user is None:
        raise HTTPException(401, "log in first", headers={"WWW-Authenticate": "Bearer"})
    return user


async def page_user(request: Request, accounts: AccountStoreDep, clock: ClockDep) -> User:
    """The logged-in user of an HTML page; redirects to /login when there is none."""
    user = await _authenticate(request, accounts, clock.now_ms())
    if user is None:
        query = request.url.query
        raise LoginRequired(request.url.path + (f"?{query}" if query else ""))
    return user


def require_role(*roles: str) -> Callable[..., Awaitable[User]]:
    """A dependency: the logged-in user if its role is one of these, else HTTP 403."""
    unknown = set(roles) - set(ROLES)
    if unknown or not roles:
        raise ValueError(f"require_role takes roles among {ROLES}, not {sorted(unknown)}")

    async def user_with_role(user: Annotated[User, Depends(current_user)]) -> User:
        if user.role not in roles:
            raise HTTPException(403, f"this needs the role {' or '.join(roles)}")
        return user

    return user_with_role


async def csrf_protect(
    request: Request, user: Annotated[User, Depends(current_user)], public_url: PublicUrlDep
) -> None:
    """For a state change from a browser session: same origin and the session's CSRF token.

    Requests with an API token pass: a browser never adds that header on its own.
    """
    if request.method not in UNSAFE_METHODS or request.state.via != "session":
        return
    if not _same_origin(request, public_url):
        raise HTTPException(403, "cross-site request refused")
    sent = request.headers.get("x-csrf-token")
    if sent is None and request.headers.get("content-type", "").startswith(_FORM_TYPES):
        value = (await request.form()).get("csrf_token")
        sent = value if isinstance(value, str) else None
    if not sent or not hmac.compare_digest(sent.encode(), request.state.csrf.encode()):
        raise HTTPException(403, "CSRF token missing or wrong")


def _same_origin(request: Request, public_url: str) -> bool:
    """False when the browser says the request comes from another site."""
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not every browser sends Origin; the CSRF token still has to match
    allowed = {_origin_of(public_url)}
    host = request.headers.get("host")
    if host:
        allowed.add(_origin_of(f"{request.url.scheme}://{host}"))
    mine = _origin_of(origin)
    return mine is not None and mine in allowed


def _origin_of(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80)


def install_auth(app: FastAPI) -> None:
    """Send HTML pages that need a login to /login?next=<the page>."""

    async def to_login(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        return RedirectResponse(f"/login?next={quote(exc.next_path, safe='/')}", 303)

    app.add_exception_handler(LoginRequired, to_login)


# --- the login page --------------------------------------------------------------------

_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>tenhub: log in</title>
<style>body{{font:17px system-ui;margin:3em auto;max-width:22em}}label,input,button{{display:block;
width:100%;margin:.3em 0}}input,button{{font-size:1em;padding:.5em}}.error{{color:#b00020}}</style>
</head><body><h1>tenhub</h1>{message}
<form method="post" action="/login">
<input type="hidden" name="csrf_token" value="{csrf}">
<input type="hidden" name="next" value="{next}">
<label>Username <input name="username" value="{username}" autocomplete="username" required
autofocus></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required>
</label><button>Log in</button></form></body></html>"""

_dummy_hash: str | None = None


def _login_form(
    public_url: str, next_path: str, status: int = 200, error: str = "", username: str = ""
) -> HTMLResponse:
    """The form with a fresh pre-session CSRF token, in a cookie and a hidden field."""
    csrf = secrets.token_urlsafe(24)
    message = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    body = _PAGE.format(
        message=message, csrf=csrf, next=escape(next_path), username=escape(username)
    )
    headers = {
        "Cache-Control": "no-store",
        # No other site may frame the form and trick a click or a typed password out of it.
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": "frame-ancestors 'none'",
    }
    response = HTMLResponse(body, status, headers=headers)
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        csrf,
        max_age=LOGIN_FORM_TTL_S,
        path="/login",
        secure=_secure(public_url),
        httponly=True,
        samesite="lax",
    )
    return response


def _secure(public_url: str) -> bool:
    return public_url.startswith("https://")


def safe_next(next_path: str | None) -> str:
    """Where to go after logging in: a path of this site, never another site."""
    if not next_path or not next_path.startswith("/") or next_path.startswith("//"):
        return "/"
    if "\\" in next_path or any(ord(c) < 32 for c in next_path):
        return "/"  # browsers read `/\evil` as `//evil`
    return next_path


async def login_throttle(
    request: Request, clock: ClockDep, failures: LoginFailuresDep
) -> LoginThrottle:
    """The app's one throttle of failed logins (its turns are per app, not per request)."""
    state = request.app.state
    if getattr(state, "login_throttle", None) is None:
        state.login_throttle = LoginThrottle(clock, failures)
    return state.login_throttle


async def _check_password(password: str, found: tuple[User, str] | None) -> User | None:
    """The user if the password is right; as slow for an unknown user as for a known one."""
    global _dummy_hash
    if found is None:
        if _dummy_hash is None:
            _dummy_hash = await asyncio.to_thread(hash_password, secrets.token_urlsafe(16))
        await asyncio.to_thread(verify_password, password, _dummy_hash)
        return None
    user, encoded = found
    ok = await asyncio.to_thread(verify_password, password, encoded)
    return user if ok and not user.disabled else None


@router.get("/login", summary="The login form", response_class=HTMLResponse)
async def login_page(public_url: PublicUrlDep, next: str = "/") -> Response:
    return _login_form(public_url, safe_next(next))


@router.post(
    "/login",
    summary="Log in with username and password; sets the session cookie",
    status_code=303,
    response_class=RedirectResponse,
    responses=pages(303, 401, 403, 429),
)
async def login(
    request: Request,
    accounts: AccountStoreDep,
    clock: ClockDep,
    public_url: PublicUrlDep,
    throttle: Annotated[LoginThrottle, Depends(login_throttle)],
    username: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=1000)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    next_path = safe_next(next)
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if (
        not _same_origin(request, public_url)
        or not cookie
        or not csrf_token
        or not hmac.compare_digest(cookie.encode(), csrf_token.encode())
    ):
        error = "the login form expired; please try again"
        return _login_form(public_url, next_path, 403, error, username)
    ip = request.client.host if request.client else "unknown"
    address = throttle_address(ip)
    async with throttle.turn(address):
        wait_ms = await throttle.retry_after_ms(username, address)
        if wait_ms:
            error = f"too many attempts; try again in {_wait_words(wait_ms)}"
            logger.warning("login throttled", extra={"username": username, "ip": ip})
            response = _login_form(public_url, next_path, 429, error, username)
            response.headers["Retry-After"] = str(max(1, math.ceil(wait_ms / 1000)))
            return response
        user = await _check_password(password, await accounts.find_user(username))
        if user is None:
            await throttle.failed(username, address)
            logger.info("login failed", extra={"username": username, "ip": ip})
            return _login_form(public_url, next_path, 401, "wrong username or password", username)
        await throttle.succeeded(username, address)
    if old := request.cookies.get(SESSION_COOKIE):
        await accounts.end_session(old)  # a new login never keeps a session it was handed
    token, _ = await accounts.new_session(user.id, clock.now_ms(), SESSION_TTL_MS)
    logger.info("login", extra={"username": user.username, "ip": ip})
    response = RedirectResponse(next_path, 303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=SESSION_TTL_MS // 1000,
        path="/",
        secure=_secure(public_url),
        httponly=True,
        samesite="lax",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post(
    "/logout",
    summary="End the session",
    dependencies=[Depends(csrf_protect)],
    status_code=303,
    response_class=RedirectResponse,
    responses={**pages(303), **refusals(401, 403)},
)
async def logout(request: Request, accounts: AccountStoreDep, public_url: PublicUrlDep) -> Response:
    await accounts.end_session(request.cookies.get(SESSION_COOKIE, ""))
    response = RedirectResponse("/login", 303)
    response.delete_cookie(
        SESSION_COOKIE, path="/", secure=_secure(public_url), httponly=True, samesite="lax"
    )
    return response


@router.get(
    "/api/me",
    summary="The logged-in user; the CSRF token for its requests",
    responses=refusals(401),
)
async def me(request: Request, user: Annotated[User, Depends(current_user)]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "username": user.username,
        "role": user.role,
        "zones": list(user.zones),
        "phone": user.phone,
    }
    if request.state.via == "session":
        body["csrf_token"] = request.state.csrf
    return body
