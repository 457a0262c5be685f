"""The forum part of the actor tree (``root/forum``)."""

from __future__ import annotations

from metawsm.actors.forum.broker import EventBroker
from metawsm.actors.forum.consumer import StreamConsumer
from metawsm.actors.forum.handler import CommandHandler
from metawsm.actors.forum.intake import CommandIntake
from metawsm.actors.forum.projection import ProjectionActor
from metawsm.actors.forum.relay import OutboxRelay
from metawsm.actors.supervisor import ChildSpec, Strategy, Supervisor
from metawsm.forum.projections.registry import PROJECTION_NAMES


def projection_supervisor_spec() -> ChildSpec:
    children = [
        ChildSpec.of(ProjectionActor, name, id=name, name=f"Projection[{name}]") for name in PROJECTION_NAMES
    ]
    return ChildSpec.of(
        Supervisor, id="projections", name="ProjectionSupervisor", strategy=Strategy.ONE_FOR_ONE, children=children
    )


def forum_supervisor_spec() -> ChildSpec:
    # rest_for_one: each child may rely on those started before it.
    children = [
        ChildSpec.of(CommandIntake, id="intake", name="CommandIntake"),
        ChildSpec.of(OutboxRelay, id="relay", name="OutboxRelay"),
        ChildSpec.of(StreamConsumer, id="consumer", name="StreamConsumer"),
        ChildSpec.of(CommandHandler, id="handler", name="CommandHandler"),
        projection_supervisor_spec(),
        ChildSpec.of(EventBroker, id="broker", name="EventBroker"),
    ]
    return ChildSpec.of(
        Supervisor, id="forum", name="ForumSupervisor", strategy=Strategy.REST_FOR_ONE, children=children
    )
