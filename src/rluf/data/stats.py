"""`rluf stats`: the first look at a store. Every rate comes with its n and a Wilson 95 % interval."""

from __future__ import annotations

import math

from .store import Store

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (0, 0 when n == 0)."""
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _rate(k: int, n: int) -> dict:
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci95": [lo, hi]}


def store_stats(store: Store, retention_days: tuple[int, int] = (14, 28), max_groups: int = 50) -> dict:
    con = store.connect(retention_days=retention_days)
    con.execute("SET TimeZone='UTC'")
    one = lambda q: con.execute(q).fetchone()  # noqa: E731
    manifest = store.manifest()
    counts = {
        "batches": len(manifest["batches"]),
        "conversations": one("SELECT count(DISTINCT conversation_id) FROM messages")[0],
        "messages": one("SELECT count(*) FROM messages")[0],
        "reaction_events": one("SELECT count(*) FROM reaction_events")[0],
        "reactions_resolved": one("SELECT count(*) FROM reactions")[0],
        "users": one("SELECT count(*) FROM users")[0],
    }
    counts["messages_by_role"] = dict(con.execute("SELECT role, count(*) FROM messages GROUP BY 1 ORDER BY 1").fetchall())
    t0, t1 = one("SELECT min(time)::VARCHAR, max(time)::VARCHAR FROM messages")
    time_range = [str(t0) if t0 else None, str(t1) if t1 else None]

    # One row per assistant message with its group keys and which reactions it received.
    con.execute("""
        CREATE TEMP TABLE am AS
        SELECT m.message_id, coalesce(m.category, c.category, '(none)') AS category,
               coalesce(m.policy, c.policy, '(none)') AS policy
        FROM messages m LEFT JOIN conversations c USING (conversation_id)
        WHERE m.role = 'assistant'
    """)
    names = [r[0] for r in con.execute("SELECT DISTINCT reaction FROM reactions ORDER BY 1").fetchall()]
    n_assistant = one("SELECT count(*) FROM am")[0]
    con.execute("""
        CREATE TEMP TABLE got AS
        SELECT DISTINCT r.message_id, r.reaction FROM reactions r SEMI JOIN am USING (message_id)
    """)
    overall = {}
    for name, k in con.execute("SELECT reaction, count(*) FROM got GROUP BY 1 ORDER BY 1").fetchall():
        overall[name] = _rate(k, n_assistant)
    on_other = one("SELECT count(*) FROM reactions r ANTI JOIN am USING (message_id)")[0]

    def by(group: str) -> dict:
        rows = con.execute(f"""
            WITH n AS (SELECT {group} AS g, count(*) AS n FROM am GROUP BY 1),
                 k AS (SELECT am.{group} AS g, got.reaction, count(*) AS k FROM got JOIN am USING (message_id) GROUP BY 1, 2)
            SELECT n.g, n.n, k.reaction, coalesce(k.k, 0) FROM n LEFT JOIN k USING (g) ORDER BY n.n DESC, n.g
        """).fetchall()
        result: dict = {}
        for g, n, name, k in rows:
            entry = result.setdefault(g, {"assistant_messages": n, "rates": {}})
            if name is not None:
                entry["rates"][name] = _rate(k, n)
        for entry in result.values():
            for name in names:
                entry["rates"].setdefault(name, _rate(0, entry["assistant_messages"]))
        if len(result) > max_groups:
            result = dict(list(result.items())[:max_groups])
            result["(more groups not shown)"] = {"assistant_messages": None, "rates": {}}
        return result

    known, retained, overridden = one(
        "SELECT count(retained), count(*) FILTER (WHERE retained), count(retained_override) FROM users")
    censored = counts["users"] - known
    retention = {
        "window_days": list(retention_days),
        "users_with_known_retention": known,
        "users_window_not_elapsed": censored,
        "users_with_override": overridden,
        "retained": _rate(retained, known),
    }
    return {
        "store": str(store.root),
        "time_range": time_range,
        "counts": counts,
        "assistant_messages": n_assistant,
        "reaction_rates": overall,
        "reactions_on_non_assistant_messages": on_other,
        "by_category": by("category"),
        "by_policy": by("policy"),
        "retention": retention,
    }


def render_stats(s: dict, console) -> None:
    from rich.table import Table

    c = s["counts"]
    console.print(f"[bold]{s['store']}[/]  {c['batches']} batches  time {s['time_range'][0]} .. {s['time_range'][1]}")
    console.print(
        f"{c['conversations']} conversations, {c['messages']} messages {c['messages_by_role']}, "
        f"{c['reaction_events']} reaction events -> {c['reactions_resolved']} standing reactions, {c['users']} users"
    )
    fmt = lambda r: "-" if r["rate"] is None else f"{r['rate']:.2%} [{r['ci95'][0]:.2%}, {r['ci95'][1]:.2%}]"  # noqa: E731
    t = Table(title=f"reaction rate per assistant message (n={s['assistant_messages']})")
    t.add_column("reaction")
    t.add_column("messages with it", justify="right")
    t.add_column("rate [95% CI]", justify="right")
    for name, r in s["reaction_rates"].items():
        t.add_row(name, str(r["k"]), fmt(r))
    console.print(t)
    names = list(s["reaction_rates"])
    for key, title in (("by_category", "category"), ("by_policy", "policy")):
        t = Table(title=f"reaction rates by {title}")
        t.add_column(title)
        t.add_column("n", justify="right")
        for name in names:
            t.add_column(name, justify="right")
        for g, e in s[key].items():
            if e["assistant_messages"] is None:
                t.add_row(g, "", *["" for _ in names])
                continue
            t.add_row(str(g), str(e["assistant_messages"]), *[fmt(e["rates"][n]) for n in names])
        console.print(t)
    r = s["retention"]
    console.print(
        f"retention (active in days {r['window_days'][0]}-{r['window_days'][1] - 1} after first seen): {fmt(r['retained'])} "
        f"of {r['users_with_known_retention']} users whose window has elapsed "
        f"({r['users_window_not_elapsed']} not yet, {r['users_with_override']} from the users table)"
    )
