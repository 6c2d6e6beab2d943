"""Expand the spec's compact pool actions into plain guard/update actions.

`moves` actions become one instance for the tracked block ``h`` and one for
"some other block"; `event` actions get their lifecycle sources, guard and
destination from the lifecycle table; an update of ``h`` gets the matching
counter adjustments. The result is what the Z3 prover and the Python replayer
both consume, and what the mutation tests edit line by line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvclaims.spec import Action, Spec


def _tuple(items) -> str:
    return "(" + ", ".join(repr(i) for i in items) + ("," if len(items) == 1 else "") + ")"


def _class_of_counter(spec: "Spec", counter: str) -> str:
    (cls,) = [c for c, n in spec.counter_of.items() if n == counter]
    return cls


def _event_lines(spec: "Spec", rows, event_param: str | None) -> tuple[list[str], str]:
    """Guard lines and the `cs` update for firing the lifecycle event(s) in `rows`.

    With one fixed event the rows differ only by source; with `event_param` the
    environment picks the event, so each row is matched on (source, event).
    """

    def match(t) -> str:
        return f"cs == {t.source!r}" + (f" and {event_param} == {t.event!r}" if event_param else "")

    guards = [" or ".join(f"({match(t)})" for t in rows)]
    for name in sorted({t.guard for t in rows if t.guard}):
        cond = " or ".join(f"({match(t)})" for t in rows if t.guard == name)
        guards.append(f"({spec.pool_guards[name]}) if ({cond}) else True")
    dest = "cs"
    for t in reversed(rows):
        dest = f"{t.dest!r} if ({match(t)}) else ({dest})"
    return guards, dest


def _with_counter_adjustment(spec: "Spec", update: dict[str, str]) -> dict[str, str]:
    if "h" not in update:
        return update
    new_h = update["h"]
    literal = new_h.strip("'") if new_h.startswith("'") and new_h.count("'") == 2 else None
    out = dict(update)
    for counter in dict.fromkeys(spec.counter_of.values()):
        classes = [c for c, n in spec.counter_of.items() if n == counter]
        gain = (
            ("1" if literal in classes else "0")
            if literal is not None
            else f"(1 if ({new_h}) in {_tuple(classes)} else 0)"
        )
        base = out.get(counter, counter)
        out[counter] = f"{base} + {gain} - (1 if h in {_tuple(classes)} else 0)"
    return out


def normalize_actions(spec: "Spec", raw_actions: list[dict]) -> tuple["Action", ...]:
    from kvclaims.spec import Action, SpecError

    out: list[Action] = []
    for raw in raw_actions:
        name, doc = raw["name"], raw.get("doc", "")
        params = dict(raw.get("params", {}))
        guard = list(raw.get("guard", []))
        update = dict(raw.get("update", {}))
        if "moves" in raw:
            frm, to = raw["moves"]
            for where in raw["on"]:
                if where == "other":
                    cls = _class_of_counter(spec, frm)
                    avail = frm if cls == "absent" else f"{frm} - (1 if h == {cls!r} else 0)"
                    out.append(
                        Action(
                            f"{name}[other]",
                            doc,
                            params,
                            (f"{avail} >= 1", *guard),
                            {frm: f"{frm} - 1", to: f"{to} + 1"},
                        )
                    )
                elif where == "h":
                    src, dst = _class_of_counter(spec, frm), _class_of_counter(spec, to)
                    lines = [f"h == {src!r}"] + (["free >= 1"] if src == "absent" else [])
                    out.append(
                        Action(
                            f"{name}[h]",
                            doc,
                            params,
                            (*lines, *guard, *raw.get("guard_h", [])),
                            _with_counter_adjustment(spec, {**raw.get("update_h", {}), "h": repr(dst)}),
                        )
                    )
                else:
                    raise SpecError(f"action {name}: unknown instance {where!r}")
            continue
        event = raw.get("event")
        event_param = raw.get("event_param")
        if event or event_param:
            events = [event] if event else raw["events"]
            rows = [t for t in spec.lifecycle.transitions if t.event in events]
            if not rows:
                raise SpecError(f"action {name}: events {events} have no transition")
            lines, dest = _event_lines(spec, rows, event_param)
            guard = lines + guard
            update["cs"] = dest
        out.append(Action(name, doc, params, tuple(guard), _with_counter_adjustment(spec, update), event, event_param))
    return tuple(out)
