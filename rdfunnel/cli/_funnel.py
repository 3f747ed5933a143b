"""``rdfunnel funnel get`` and ``funnel set``: one contact's funnel, read or changed."""

from __future__ import annotations

import json

import click

from ..models import NOT_SET, Funnel, FunnelUpdate, LifecycleStage
from ._common import Settings, fail, out, run
from ._rows import parse_flag

__all__ = ["funnel"]


@click.group()
def funnel() -> None:
    """Read or change one contact's funnel."""


@funnel.command("get")
@click.argument("contact")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_obj
def funnel_get(settings: Settings, contact: str, as_json: bool) -> None:
    """Show where CONTACT (an email or a UUID) stands in the funnel."""

    async def get() -> Funnel:
        async with settings.client() as rd:
            return await rd.funnels.get(contact)

    _show(contact, run(get()), as_json)


def _yes_no(ctx: click.Context, param: click.Parameter, value: str | None) -> bool | None:
    """Yes or no in the same words change files take, case-insensitive."""
    if value is None:
        return None
    flag = parse_flag(value)
    if not isinstance(flag, bool):
        raise click.BadParameter(f"{value!r} is not one of true/false, yes/no, sim/não, 1/0")
    return flag


@funnel.command("set")
@click.argument("contact")
@click.option(
    "--stage", type=click.Choice([stage.value for stage in LifecycleStage], case_sensitive=False)
)
@click.option(
    "--opportunity", callback=_yes_no, metavar="YES/NO", help="true/false, yes/no, sim/não, 1/0"
)
@click.option("--owner", help="the owner's email address")
@click.option("--clear-owner", is_flag=True, help="remove the contact's owner")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_obj
def funnel_set(
    settings: Settings,
    contact: str,
    stage: str | None,
    opportunity: bool | None,
    owner: str | None,
    clear_owner: bool,
    as_json: bool,
) -> None:
    """Change only the given fields of CONTACT's funnel."""
    if owner and clear_owner:
        fail("--owner and --clear-owner exclude each other")
    if stage is None and opportunity is None and owner is None and not clear_owner:
        fail(
            "nothing to change: give at least one of --stage, --opportunity, --owner, --clear-owner"
        )
    try:
        update = FunnelUpdate(
            lifecycle_stage=stage or NOT_SET,
            opportunity=NOT_SET if opportunity is None else opportunity,
            contact_owner_email=None if clear_owner else (owner or NOT_SET),
        )
    except ValueError as exc:
        fail(str(exc).replace("contact_owner_email", "--owner"))

    async def apply() -> Funnel:
        async with settings.client() as rd:
            return await rd.funnels.update(contact, update)

    _show(contact, run(apply()), as_json)


def _show(contact: str, state: Funnel, as_json: bool) -> None:
    fields = {
        "lifecycle_stage": None if state.lifecycle_stage is None else str(state.lifecycle_stage),
        "opportunity": state.opportunity,
        "contact_owner_email": state.contact_owner_email,
        "fit": state.fit,
        "interest": state.interest,
    }
    if as_json:
        click.echo(json.dumps({"contact": contact, **fields}, ensure_ascii=False))
        return
    opportunity = {True: "yes", False: "no", None: "unknown"}[state.opportunity]
    out.print(
        f"{contact}: {fields['lifecycle_stage'] or 'no stage'}, opportunity {opportunity}, "
        f"owner {state.contact_owner_email or 'none'}, fit {state.fit}, interest {state.interest}",
        highlight=False,
    )
