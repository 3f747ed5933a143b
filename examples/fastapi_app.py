"""A FastAPI backend on rdfunnel: read and change contacts' funnels, and run bulk jobs.

One :class:`~rdfunnel.RDStation` serves the whole app (opened and closed by its lifespan), handlers
get it with ``RDStationDep``, and rdfunnel's errors become HTTP answers (404, 422, 429 with
``Retry-After``, 502/503/504 when RD Station fails).

- ``GET  /contacts/{contact}/funnel``: where a contact (email or UUID) stands in the funnel.
- ``PUT  /contacts/{contact}/funnel``: change it; only the fields sent change, and
  ``"contact_owner_email": null`` clears the owner.
- ``POST /funnel-jobs``: ``{"changes": [{"contact": ..., <fields>}, ...]}`` runs in the background
  on the bulk engine; answers 202 with the job.
- ``GET  /funnel-jobs/{id}``: the job's progress, totals and per-item failures (each names its
  contact as the request wrote it).

Every 422 has one shape, whether FastAPI, rdfunnel or RD Station refused the request::

    {"detail": "invalid request: opportunity: cannot be null; leave opportunity out ...",
     "error": "invalid_input",
     "errors": {"opportunity": [{"error_type": "CANNOT_BE_NULL",
                                 "error_message": "cannot be null; leave opportunity out ..."}]}}

``error`` is ``invalid_input`` (nothing was sent) or ``rejected_by_rdstation`` (RD refused it);
``errors`` maps each field (``changes.3.contact`` in a job, ``body`` for the body as a whole) to
its problems, written as RD Station writes its own. The input is never echoed back.

Run it against the fake RD Station, from a checkout with ``pip install -e '.[fastapi]' uvicorn``::

    # terminal 1: a fake RD Station with contact-0@example.com ... contact-999@example.com;
    # it prints one JSON line: {"url": ..., "client_id": ..., "client_secret": ..., ...}
    python -m rdfunnel.testing --port 8765 --contacts 1000 | tee /tmp/rdfake.json

    # terminal 2: the app, configured from that line through the environment
    eval "$(python -c 'import json; d = json.load(open("/tmp/rdfake.json")); print(
        "export RDSTATION_BASE_URL=" + d["url"], "RDSTATION_CLIENT_ID=" + d["client_id"],
        "RDSTATION_CLIENT_SECRET=" + d["client_secret"],
        "RDSTATION_REFRESH_TOKEN=" + d["refresh_token"])')"
    uvicorn examples.fastapi_app:app --port 8000

    # terminal 3
    curl localhost:8000/contacts/contact-1@example.com/funnel
    curl -X PUT localhost:8000/contacts/contact-1@example.com/funnel \
         -H 'content-type: application/json' -d '{"lifecycle_stage": "Client", "opportunity": true}'
    curl -X POST localhost:8000/funnel-jobs -H 'content-type: application/json' \
         -d '{"changes": [{"contact": "contact-2@example.com", "lifecycle_stage": "Qualified Lead"},
                          {"contact": "nobody@example.com", "opportunity": true}]}'
    curl localhost:8000/funnel-jobs/<id from the answer above>

(Or start the fake with fixed ``--client-id``, ``--client-secret`` and ``--refresh-token`` and set
the same values by hand.) Against the real RD Station, leave ``RDSTATION_BASE_URL`` unset.

With several workers (``uvicorn --workers 4``, or gunicorn with ``-k
uvicorn.workers.UvicornWorker``) each process opens its own client; set
``RDFUNNEL_TOKEN_FILE=/some/dir/rd-token.json`` so that they share tokens and refresh once between
them. The job store here is an in-memory dict, fine for an
example: jobs are lost on restart, finished jobs are kept until then, and a job is visible only to
the worker that runs it. Keep jobs in Redis or a database for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from rdfunnel import BulkSummary, Contact, Funnel, FunnelUpdate, LifecycleStage, RDStation
from rdfunnel.contrib.fastapi import (
    RDStationDep,
    install_exception_handlers,
    rdstation_lifespan,
)
from rdfunnel.errors import NotAttemptedError, ValidationError

# -- request and response bodies ---------------------------------------------------------------

#: The fields a change may set.
FUNNEL_FIELDS = frozenset({"lifecycle_stage", "opportunity", "contact_owner_email"})


def refused(error_type: str, message: str) -> PydanticCustomError:
    """A validation failure with our own code and message, for :func:`invalid_request` to show."""
    return PydanticCustomError(error_type, "{message}", {"message": message})


def check_contact(value: str) -> str:
    """``value`` if it names a contact (an email or a UUID); rdfunnel's checks, rdfunnel's words."""
    try:
        Contact.parse(value)
    except ValidationError as exc:
        raise refused("invalid_contact", str(exc)) from None
    return value


#: A contact as the client writes it (kept as written, so answers echo it back unchanged).
ContactIn = Annotated[str, AfterValidator(check_contact)]


class FunnelChange(BaseModel):
    """A partial change: fields left out stay as they are; ``contact_owner_email: null`` clears
    the owner (``null`` for the other fields is refused). Every check runs here, so a bad change
    is a 422 in the app's one error shape before anything is sent."""

    model_config = ConfigDict(extra="forbid")

    lifecycle_stage: LifecycleStage | None = None
    opportunity: bool | None = None
    contact_owner_email: str | None = Field(default=None, max_length=100)

    @field_validator("lifecycle_stage", "opportunity", mode="before")
    @classmethod
    def not_null(cls, value: object, info: ValidationInfo) -> object:
        if value is None:  # only a value sent is checked: a field left out is not null
            message = f"cannot be null; leave {info.field_name} out to keep it as it is"
            raise refused("cannot_be_null", message)
        return value

    @field_validator("contact_owner_email")
    @classmethod
    def owner_is_an_email(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                FunnelUpdate(contact_owner_email=value)
            except ValidationError as exc:
                raise refused("invalid_email", str(exc)) from None
        return value

    @model_validator(mode="after")
    def not_empty(self) -> FunnelChange:
        if not self.model_fields_set & FUNNEL_FIELDS:
            fields = ", ".join(sorted(FUNNEL_FIELDS))
            raise refused("empty_change", f"a change sets at least one of {fields}")
        return self

    def to_update(self) -> FunnelUpdate:
        """The :class:`FunnelUpdate` of the fields the client sent, and only those."""
        return FunnelUpdate(**self.model_dump(include=self.model_fields_set & FUNNEL_FIELDS))


class ContactChange(FunnelChange):
    """One item of a bulk job: the contact (email or UUID) and its change."""

    contact: ContactIn


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    changes: list[ContactChange] = Field(min_length=1, max_length=100_000)
    concurrency: int = Field(default=8, ge=1, le=64)


class FunnelOut(BaseModel):
    lifecycle_stage: str | None
    opportunity: bool | None
    contact_owner_email: str | None
    fit: int | str | None
    interest: int | str | None

    @classmethod
    def of(cls, funnel: Funnel) -> FunnelOut:
        stage = funnel.lifecycle_stage
        return cls(
            lifecycle_stage=None if stage is None else str(stage),
            opportunity=funnel.opportunity,
            contact_owner_email=funnel.contact_owner_email,
            fit=funnel.fit,
            interest=funnel.interest,
        )


class ItemFailure(BaseModel):
    index: int  # the change's position in the job's ``changes``
    contact: str  # as the client wrote it
    error: str  # the rdfunnel exception's name, e.g. NotFoundError
    detail: str


JobStatus = Literal["running", "finished", "stopped", "failed", "cancelled"]


class JobOut(BaseModel):
    """A job's state. ``done == succeeded + failed + not_attempted``; ``finished`` means every
    change was tried, ``stopped`` that the app's authorization was refused midway, ``cancelled``
    that the app shut down first (in both, the changes never sent count as ``not_attempted``)."""

    id: str
    status: JobStatus
    total: int
    done: int
    succeeded: int
    failed: int
    not_attempted: int
    retries: int
    elapsed: float
    failures: list[ItemFailure]
    error: str | None = None


# -- the job store -----------------------------------------------------------------------------


@dataclass
class Job:
    id: str
    contacts: list[str]  # each change's contact, as the client wrote it
    status: JobStatus = "running"
    summary: BulkSummary | None = None
    failures: list[ItemFailure] = field(default_factory=list)
    error: str | None = None
    task: asyncio.Task[None] | None = None

    @property
    def total(self) -> int:
        return len(self.contacts)

    def view(self) -> JobOut:
        summary = self.summary or BulkSummary(0, 0, 0, 0, {}, 0, 0.0)
        # A run that stops early never reads the rest of its input: those were not attempted.
        unread = 0 if self.status in ("running", "finished") else self.total - summary.total
        return JobOut(
            id=self.id,
            status=self.status,
            total=self.total,
            done=summary.total + unread,
            succeeded=summary.succeeded,
            failed=summary.failed,
            not_attempted=summary.not_attempted + unread,
            retries=summary.retries,
            elapsed=round(summary.elapsed, 3),
            failures=list(self.failures),
            error=self.error,
        )


class JobStore:
    """Jobs by id, in this process's memory (see the module docstring for what that costs).

    Holds each job's task, so the task is not garbage-collected mid-run, and cancels the ones still
    running when the app shuts down, before the client closes under them.
    """

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def start(self, rd: RDStation, items: Sequence[ContactChange], concurrency: int) -> Job:
        job = Job(id=secrets.token_urlsafe(9), contacts=[item.contact for item in items])
        changes = [(Contact.parse(item.contact), item.to_update()) for item in items]
        self._jobs[job.id] = job
        job.task = asyncio.create_task(_run(job, rd, changes, concurrency), name=f"job {job.id}")
        return job

    async def close(self) -> None:
        tasks = [job.task for job in self._jobs.values() if job.task and not job.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _run(
    job: Job, rd: RDStation, changes: Sequence[tuple[Contact, FunnelUpdate]], concurrency: int
) -> None:
    try:
        async with rd.funnels.update_many(changes, concurrency=concurrency) as run:
            async for result in run:
                job.summary = run.summary
                if result.error is not None and not isinstance(result.error, NotAttemptedError):
                    job.failures.append(
                        ItemFailure(
                            index=result.index,
                            contact=job.contacts[result.index],
                            error=type(result.error).__name__,
                            detail=str(result.error),
                        )
                    )
        job.summary = run.summary
        if run.stopped_by is not None:
            job.status = "stopped"
            job.error = f"{type(run.stopped_by).__name__}: {run.stopped_by}"
        else:
            job.status = "finished"
    except asyncio.CancelledError:
        job.status = "cancelled"
        raise
    except Exception as exc:  # a bug: say so in the job rather than lose it in a dead task
        job.status = "failed"
        job.error = f"{type(exc).__name__}: {exc}"


def get_jobs(request: Request) -> JobStore:
    jobs: JobStore = request.app.state.jobs
    return jobs


JobsDep = Annotated[JobStore, Depends(get_jobs)]


@contextlib.asynccontextmanager
async def job_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The app's own lifespan: runs inside rdfunnel's, so jobs stop before the client closes."""
    app.state.jobs = JobStore()
    try:
        yield
    finally:
        await app.state.jobs.close()


# -- the routes --------------------------------------------------------------------------------

router = APIRouter()


@router.get("/contacts/{contact}/funnel")
async def get_funnel(contact: ContactIn, rd: RDStationDep) -> FunnelOut:
    return FunnelOut.of(await rd.funnels.get(contact))


@router.put("/contacts/{contact}/funnel")
async def put_funnel(contact: ContactIn, change: FunnelChange, rd: RDStationDep) -> FunnelOut:
    return FunnelOut.of(await rd.funnels.update(contact, change.to_update()))


@router.post("/funnel-jobs", status_code=202)
async def start_job(
    body: JobRequest, rd: RDStationDep, jobs: JobsDep, request: Request, response: Response
) -> JobOut:
    """Every change is checked first (all or nothing: a 422 names the bad ones), then run."""
    job = jobs.start(rd, body.changes, body.concurrency)
    response.headers["Location"] = str(request.url_for("get_job", job_id=job.id))
    return job.view()


@router.get("/funnel-jobs/{job_id}")
async def get_job(job_id: str, jobs: JobsDep) -> JobOut:
    job = jobs.get(job_id)
    if job is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id!r}")
    return job.view()


# -- the one shape of a 422 --------------------------------------------------------------------

#: Our words for pydantic's messages that would name Python types or our classes.
MESSAGES = {
    "json_invalid": "is not valid JSON",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
    "extra_forbidden": "is not a field of this request",
    "missing": "is required",
}


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """A request FastAPI refused, answered as rdfunnel answers its 422s: ``detail`` (one line),
    ``error`` (``invalid_input``) and ``errors``, the problems by field, each an
    ``{"error_type", "error_message"}`` as RD Station writes them (and as
    ``rejected_by_rdstation`` passes them on). Never echoes the input back."""
    assert isinstance(exc, RequestValidationError)
    errors: dict[str, list[dict[str, str]]] = {}
    for problem in exc.errors():
        where, kind = problem["loc"], problem["type"]
        # ("body", "changes", 1, "contact") -> "changes.1.contact"; the body itself -> "body"
        path = [] if kind == "json_invalid" else [str(part) for part in where[1:]]
        field = ".".join(path) or str(where[0])
        message = MESSAGES.get(kind, problem["msg"])
        errors.setdefault(field, []).append({"error_type": kind.upper(), "error_message": message})
    said = [f"{field}: {item['error_message']}" for field, at in errors.items() for item in at]
    detail = "invalid request: " + "; ".join(said[:3])
    if len(said) > 3:
        detail += f"; and {len(said) - 3} more"
    body = {"detail": detail, "error": "invalid_input", "errors": errors}
    return JSONResponse(body, status_code=422)


def create_app(client_factory: Callable[[], RDStation] | None = None) -> FastAPI:
    """The app; its client comes from ``client_factory``, or from the environment by default."""
    app = FastAPI(
        title="rdfunnel example",
        lifespan=rdstation_lifespan(client_factory, app_lifespan=job_lifespan),
    )
    install_exception_handlers(app)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.include_router(router)
    return app


#: For ``uvicorn examples.fastapi_app:app``; nothing is read or opened until startup.
app = create_app()
