"""What `alexnet tune` leaves in DIR when it ends: the trials as a table (trials.csv, trials.json), the best
trial's config (best.toml, for `alexnet train --config`), three plots and one self-contained page
(summary.html). Everything comes from the study's storage, so any worker writes the same files, whichever
machine trained which trial."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import warnings
from dataclasses import replace
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from ..atomic import atomic_write, write_json
from ..config import RunConfig
from ..config_files import config_text
from ..reports.plots import CORRECT, MUTED, TRAIN, WRONG, new_figure, save_figure, styled
from .space import Space, show

HISTORY_PNG, PARAMS_PNG, IMPORTANCES_PNG = "optimization-history.png", "params.png", "importances.png"
STATES = {TrialState.COMPLETE: "COMPLETE", TrialState.PRUNED: "PRUNED", TrialState.FAIL: "FAIL",
          TrialState.RUNNING: "RUNNING", TrialState.WAITING: "WAITING"}


def finite(values: Any) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def best_of(trial: FrozenTrial) -> float | None:
    """The trial's best validation accuracy: its value when complete, else the best epoch it reported."""
    if trial.state == TrialState.COMPLETE and trial.value is not None:
        return float(trial.value)
    scores = finite(trial.intermediate_values.values())
    return max(scores) if scores else None


def note_of(trial: FrozenTrial, retried: set[int], total: int) -> str:
    a = trial.user_attrs
    parts = []
    if "failed_trial" in trial.system_attrs:
        parts.append(f"repeats trial {trial.system_attrs['failed_trial']}" + (", continuing its run" if a.get("resumed")
                                                                            else ""))
    if trial.state == TrialState.PRUNED and a.get("diverged"):
        d = a["diverged"]
        parts.append(f"diverged at epoch {d.get('epoch')} (loss {d.get('loss', float('nan')):.3g}): stopped")
    elif trial.state == TrialState.PRUNED:
        epoch = (a.get("pruned") or {}).get("epoch") or max(trial.intermediate_values, default=0)
        parts.append(f"pruned after epoch {epoch}")
    elif trial.state == TrialState.FAIL:
        if a.get("surplus"):
            parts.append(f"not run: the study had its {total} trials")
        elif a.get("interrupted"):
            stop = a["interrupted"]
            epochs = stop.get("epochs")
            parts.append(f"stopped by {stop.get('signal')} after {epochs} epoch{'s' * (epochs != 1)}; queued again")
        elif a.get("error"):
            parts.append(f"failed: {a['error'][:200]}")
        elif trial.number in retried:
            parts.append("its worker died; queued again")
        else:
            parts.append("failed")
    elif trial.state == TrialState.RUNNING:
        parts.append("running")
    elif trial.state == TrialState.WAITING:
        parts.append("queued")
    return "; ".join(parts)


def trial_rows(trials: list[FrozenTrial], space: Space, total: int) -> list[dict[str, Any]]:
    """One row per trial: number, state, parameters, best validation accuracy, epochs trained, seconds, run
    folder (relative to DIR), the trial it repeats, a note."""
    retried = {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs}
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        epochs = t.user_attrs.get("epochs")
        if epochs is None:
            epochs = max(t.intermediate_values, default=0)
        rows.append({"number": t.number, "state": STATES.get(t.state, t.state.name),
                     "params": {p.name: t.params[p.name] for p in space.searched if p.name in t.params},
                     "best_val_acc": best_of(t), "epochs_trained": epochs, "seconds": seconds,
                     "run": t.user_attrs.get("run"), "retry_of": t.system_attrs.get("failed_trial"),
                     "note": note_of(t, retried, total)})
    return rows


def best_trial(trials: list[FrozenTrial]) -> FrozenTrial | None:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def write_tables(rows: list[dict[str, Any]], space: Space, out: Path) -> None:
    names = [p.name for p in space.searched]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["number", "state", "best_val_acc", *names, "epochs_trained", "seconds",
                                             "run", "retry_of", "note"])
    writer.writeheader()
    for row in rows:
        writer.writerow({**{k: v for k, v in row.items() if k != "params"}, **row["params"],
                         "seconds": None if row["seconds"] is None else round(row["seconds"], 2)})
    text = buf.getvalue()
    atomic_write(out / "trials.csv", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    write_json(out / "trials.json", rows)


def best_toml(trial: FrozenTrial, study_name: str, out: Path) -> str:
    """The best trial's whole config as a --config file, with a header saying where it comes from."""
    cfg = RunConfig.from_dict(trial.user_attrs["config"])
    header = [f"# The best trial of study {study_name!r} ({out}): trial {trial.number}, "
              f"{trial.value * 100:.2f}% best validation accuracy in {trial.user_attrs.get('epochs', '?')} epoch(s) "
              f"(run {trial.user_attrs.get('run')}).",
              "# `alexnet train --config best.toml --out RUN` trains it again: the same config and seed, so on the "
              "same machine the same weights.",
              "# As in the trial, no report is written (add --report) and every epoch is validated."]
    if cfg.train.time_limit:
        clock = (out / trial.user_attrs.get("run", "") / "clock.json").resolve()
        replayable = clock.is_file() and json.loads(clock.read_text(encoding="utf-8")).get("resumed") is False
        if replayable:
            cfg = replace(cfg, train=replace(cfg.train, replay_clock=str(clock)))
            header.append(f"# Its time limit ({cfg.train.time_limit:g} s) followed the clock; replay_clock reads the "
                          "trial's clock readings instead, so the run takes the trial's steps, rates and stop again. "
                          "Without it the clock decides: a busier or slower machine trains fewer steps.")
        else:
            header.append(f"# Its time limit ({cfg.train.time_limit:g} s) follows the clock: a busier or slower "
                          "machine trains fewer steps (the trial was stopped and resumed, so its clock cannot be "
                          "replayed).")
    return "\n".join(header) + "\n" + config_text(cfg)


# ------------------------------------------------------------------------------------------------ plots
def plot_history(rows: list[dict[str, Any]], path: Path) -> Path:
    """Each finished trial's best validation accuracy by trial number, pruned ones apart, and the best so far."""
    with styled():
        fig = new_figure(7.2, 3.6)
        ax = fig.add_subplot(1, 1, 1)
        done = [r for r in rows if r["state"] == "COMPLETE" and r["best_val_acc"] is not None]
        pruned = [r for r in rows if r["state"] == "PRUNED" and r["best_val_acc"] is not None]
        if done:
            ax.scatter([r["number"] for r in done], [r["best_val_acc"] * 100 for r in done], color=CORRECT, s=28,
                       zorder=3, label="complete")
            best = np.maximum.accumulate([r["best_val_acc"] * 100 for r in done])
            ax.step([r["number"] for r in done], best, where="post", color=TRAIN, lw=1.6, label="best so far")
        if pruned:
            ax.scatter([r["number"] for r in pruned], [r["best_val_acc"] * 100 for r in pruned], color=WRONG,
                       marker="x", s=30, zorder=3, label="pruned (its best epoch)")
        ax.set_xlabel("trial")
        ax.set_ylim(top=min(ax.get_ylim()[1], 100.5))
        ax.set_ylabel("best validation accuracy (%)")
        ax.set_title("Optimisation history")
        if done or pruned:
            ax.legend(loc="lower right")
        else:
            ax.text(0.5, 0.5, "no finished trial yet", transform=ax.transAxes, ha="center", color=MUTED)
        fig.tight_layout()
        return save_figure(fig, path)


def plot_params(rows: list[dict[str, Any]], space: Space, path: Path) -> Path:
    """The best validation accuracy against each searched option (log axes for log ranges)."""
    params = space.searched
    cols = min(3, len(params))
    nrows = math.ceil(len(params) / cols)
    scored = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED") and r["best_val_acc"] is not None]
    with styled():
        fig = new_figure(3.3 * cols, 2.7 * nrows)
        for i, p in enumerate(params):
            ax = fig.add_subplot(nrows, cols, i + 1)
            for state, colour, marker in (("COMPLETE", CORRECT, "o"), ("PRUNED", WRONG, "x")):
                points = [(r["params"][p.name], r["best_val_acc"] * 100) for r in scored
                          if r["state"] == state and p.name in r["params"]]
                if not points:
                    continue
                xs, ys = zip(*points)
                if p.kind == "choices":
                    labels = [show(p.to_value(c)) for c in p.choices]
                    xs = [labels.index(show(p.to_value(x))) if show(p.to_value(x)) in labels else -1 for x in xs]
                ax.scatter(xs, ys, color=colour, marker=marker, s=24, zorder=3)
            if p.kind == "choices":
                labels = [show(p.to_value(c)) for c in p.choices]
                ax.set_xticks(range(len(labels)))
                ax.set_xticklabels(labels, rotation=20 if max(map(len, labels)) > 6 else 0, fontsize=7.5)
                ax.set_xlim(-0.5, len(labels) - 0.5)
            elif p.log:
                ax.set_xscale("log")
            ax.set_title(p.name)
            ax.set_ylim(top=min(ax.get_ylim()[1], 100.5))
            if i % cols == 0:
                ax.set_ylabel("best val. accuracy (%)")
        fig.tight_layout()
        return save_figure(fig, path)


def plot_importances(importances: dict[str, float], path: Path) -> Path:
    names = list(importances)[::-1]
    with styled():
        fig = new_figure(6.0, 0.5 + 0.45 * len(names))
        ax = fig.add_subplot(1, 1, 1)
        ax.barh(names, [importances[n] for n in names], color=TRAIN)
        ax.set_xlabel("importance (share of the accuracy's variation)")
        ax.set_title("Parameter importances")
        ax.grid(axis="y", visible=False)
        fig.tight_layout()
        return save_figure(fig, path)


def importances_of(study: Any, complete: int) -> tuple[dict[str, float] | None, str]:
    """optuna.importance.get_param_importances over the complete trials (and what optuna warned of, e.g. too
    few trials to tell the options apart), or why there are none."""
    import optuna

    if complete < 2:
        return None, f"parameter importances need at least 2 complete trials ({complete} so far): not plotted"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            importances = dict(optuna.importance.get_param_importances(study))
    except (ValueError, RuntimeError, ImportError, ZeroDivisionError) as e:
        return None, f"parameter importances could not be computed ({' '.join(str(e).split())[:160]}): not plotted"
    said = "; ".join(dict.fromkeys(" ".join(str(w.message).split()) for w in caught))
    return importances, f"parameter importances over {complete} complete trials" + (f" (optuna: {said})" if said
                                                                                      else "")


# ------------------------------------------------------------------------------------------------ the page
CSS = """body{margin:0;background:#f5f6f8;color:#1f2933;font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,
sans-serif}main{max-width:1120px;margin:0 auto;padding:32px 20px 48px}h1{font-size:28px;margin:4px 0}
.sub,.muted{color:#6b7280}.card{background:#fff;border:1px solid #e5e7eb;border-radius:14px;padding:20px 24px;
margin:0 0 18px}h2{font-size:18px;margin:0 0 12px}table{border-collapse:collapse;width:100%;font-size:13.5px;
font-variant-numeric:tabular-nums}th,td{padding:5px 9px;border-bottom:1px solid #e5e7eb;text-align:left;
vertical-align:top}th{color:#6b7280;font-size:12px;text-transform:uppercase}.num{text-align:right}
.best{background:#eefaf7}img{max-width:100%;height:auto;display:block;margin:8px auto}
pre{background:#f5f6f8;padding:12px;border-radius:8px;overflow:auto;font-size:12.5px}"""


def embed(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{escape(path.stem)}" src="data:image/png;base64,{data}">'


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def cell(value: Any) -> str:
    if value is None:
        return "-"
    return escape(show(value)).replace("://", "&#58;//")


def html_page(study_name: str, storage: str, rows: list[dict[str, Any]], space: Space, best: FrozenTrial | None,
              best_text: str | None, pictures: list[Path], notes: list[str], total: int) -> str:
    names = [p.name for p in space.searched]
    counts = {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
    head = "".join(f"<th>{escape(h)}</th>" for h in ["trial", "state", "best val", *names, "epochs trained",
                                                       "seconds", "run", "note"])
    body = []
    for r in rows:
        mark = ' class="best"' if best is not None and r["number"] == best.number else ""
        params = "".join(f"<td class=num>{cell(r['params'].get(n))}</td>" for n in names)
        seconds = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
        body.append(f"<tr{mark}><td class=num>{r['number']}</td><td>{r['state']}</td>"
                    f"<td class=num>{percent(r['best_val_acc'])}</td>{params}<td class=num>{r['epochs_trained']}</td>"
                    f"<td class=num>{seconds}</td><td>{cell(r['run'])}</td><td>{cell(r['note'])}</td></tr>")
    best_html = "<p class=muted>No trial has completed yet.</p>"
    if best is not None:
        params = "".join(f"<tr><td>{escape(k)}</td><td>{cell(v)}</td></tr>" for k, v in best.params.items())
        best_html = (f"<p>Trial {best.number}: <b>{percent(best.value)}</b> best validation accuracy, run "
                     f"<code>{cell(best.user_attrs.get('run'))}</code>. <code>alexnet train --config best.toml</code> "
                     f"trains it again.</p><table>{params}</table><pre>{escape(best_text or '')}</pre>")
    figures = "".join(f"<div class=card>{embed(p)}</div>" for p in pictures)
    note_html = "".join(f"<p class=muted>{escape(n)}</p>" for n in notes)
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
    running = f", {counts['RUNNING']} running" if counts["RUNNING"] else ""
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>alexnet tune: {escape(study_name)}</title>"
            f"<style>{CSS}</style></head><body><main><div class=sub>alexnet tune</div><h1>Study {escape(study_name)}"
            f"</h1><p class=sub>{counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed"
            f"{running} of {total} trials; storage {cell(storage)}; searched {escape(space.describe())}; "
            f"written {stamp}</p>"
            f"<div class=card><h2>Best trial</h2>{best_html}</div>{figures}{note_html}"
            f"<div class=card><h2>Trials</h2><div style='overflow-x:auto'><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div></div></main></body></html>\n")


def write_summary(study: Any, out: Path, space: Space, study_name: str, storage: str, total: int | None = None
                  ) -> list[str]:
    """Write every summary file into `out`; the lines to print about them."""
    trials = study.get_trials(deepcopy=False)
    total = total if total is not None else len(trials)
    rows = trial_rows(trials, space, total)
    out.mkdir(parents=True, exist_ok=True)
    write_tables(rows, space, out)
    lines, notes = [], []
    best = best_trial(trials)
    best_text = None
    if best is not None and "config" in best.user_attrs:
        best_text = best_toml(best, study_name, out)
        atomic_write(out / "best.toml", lambda tmp: Path(tmp).write_text(best_text, encoding="utf-8"))
        lines.append(f"best: trial {best.number}, {best.value * 100:.2f}% best validation accuracy "
                     f"({out / best.user_attrs.get('run', '')}); `alexnet train --config {out / 'best.toml'}` "
                     "trains it again")
    else:
        lines.append("no trial has completed: no best.toml yet")
    pictures = [plot_history(rows, out / HISTORY_PNG), plot_params(rows, space, out / PARAMS_PNG)]
    importances, why = importances_of(study, sum(r["state"] == "COMPLETE" for r in rows))
    notes.append(why)
    if importances:
        pictures.append(plot_importances(importances, out / IMPORTANCES_PNG))
    else:
        (out / IMPORTANCES_PNG).unlink(missing_ok=True)
        lines.append(why)
    page = html_page(study_name, storage, rows, space, best, best_text, pictures, notes, total)
    atomic_write(out / "summary.html", lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    lines.append(f"summary: {out / 'summary.html'} (trials.csv, trials.json, the plots beside it)")
    return lines


def closing_table(study: Any, space: Space, total: int) -> Any:
    """The trials as a rich Table, for the terminal."""
    from rich.table import Table  # lazy: the table only at the end of `alexnet tune`

    trials = study.get_trials(deepcopy=False)
    rows = trial_rows(trials, space, total)
    best = best_trial(trials)
    names = [p.name for p in space.searched]
    finished = sum(r["state"] in ("COMPLETE", "PRUNED") for r in rows)
    table = Table(title=f"{finished} of {total} trials finished", title_justify="left")
    for name in ["trial", "state", "best val", *names, "trained", "time", "note"]:
        table.add_column(name, justify="left" if name in ("state", "note") else "right",
                         overflow="fold" if name == "note" else "ellipsis")
    for r in rows:
        mark = " *" if best is not None and r["number"] == best.number else ""
        table.add_row(f"{r['number']}{mark}", r["state"], percent(r["best_val_acc"]),
                      *[show(r["params"][n]) if n in r["params"] else "-" for n in names], str(r["epochs_trained"]),
                      "-" if r["seconds"] is None else f"{r['seconds']:.1f}s", r["note"])
    return table
