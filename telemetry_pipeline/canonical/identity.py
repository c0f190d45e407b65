"""Who acted: the agent a case belongs to (`agent_name` of the case table) and the one that performed each event
(`resource` of the event log), one rule for every normaliser (docs/INTERFACE.md).

A case's agent is the most specific name the data carries (the payload's agent name, `gen_ai.agent.name`, the
first agent a trace invokes); else `AGENT_NAME` / `SERVICE_NAME` when the operator set them (the older exporter's
meaning for its users); else what the data says of the agent (its type, its service); else this host's name.
An event's resource is the agent that performed it: for a tool or model call, the agent that made the call; a
person's prompt is the user's.
"""

from __future__ import annotations

from dataclasses import dataclass

USER = "user"  # the resource of what a person did (a prompt)


@dataclass(frozen=True)
class AgentDefaults:
    """The names to fall back on when the data names no agent."""

    operator: str | None = None  # AGENT_NAME, else SERVICE_NAME, when the operator set either
    host: str = "agent"  # this machine's name, last

    def case_agent(self, named: str | None, *described: str | None) -> str:
        """The data's own agent name (`named`), the operator's, what the data says of the agent (`described`: its
        type, its service, in that order), or the host's, whichever comes first."""
        return named or self.operator or next((d for d in described if d), None) or self.host
