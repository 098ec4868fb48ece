import type { IncomingMessage } from 'node:http';
import { ApiError } from './errors.js';
import type { Ctx, Route } from './router.js';
import type { Deps } from './deps.js';
import { admin, parkBody } from './admin.js';
import { requireSameOrigin } from './auth.js';
import { parseId } from './validate.js';
import { MAX_BODY_BYTES, readBody } from './http.js';
import { listDeadLetters, type DeadLetter } from '../db/dead-letters.js';
import { outboxBacklog } from '../db/outbox.js';
import { isRebuilding, progressUnit, projectionStatuses, rebuildLockHolders, rebuildStates, type StatusReport } from '../db/status.js';
import { lastVerifyRun, type VerifyRun } from '../db/verify-runs.js';
import { readHeartbeats, type Heartbeat } from '../lib/metrics-push.js';
import { within } from '../lib/timeout.js';
import { parkEvent, replayDeadLetter } from '../workers/dead-letters.js';
import type { JobKind, JobRun } from './admin-jobs.js';

/**
 * GET /admin: the operator's page, behind the admin password like Bull
 * Board. Server-rendered like the dashboard and without script: the outbox
 * backlog, relays and workers by their last metrics push, every projection's
 * status (db/status.ts), dead letters with replay and park, verify and
 * rebuild (child processes, api/admin-jobs.ts). Actions are HTML forms
 * POSTed to /admin/actions/…, answered 303 back to the page with a notice;
 * they must come from the page itself (an Origin of this host: a form on
 * another site cannot send them with the browser's remembered password).
 * While verify or rebuild runs, the page reloads itself every 2 s.
 */

const esc = (s: unknown) =>
  String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

const SOURCE_TIMEOUT_MS = 1500;
const UNAVAILABLE = '<p class="empty">unavailable right now</p>';

/** What an action did, by code: the redirect carries the code (and the event id), never text. */
const NOTICES: Record<string, [ok: boolean, text: string]> = {
  'replay.retried': [true, 'Event {id} sent back to the workers (its failed job retried).'],
  'replay.requeued': [true, 'Event {id} enqueued again for the workers.'],
  'replay.in_queue': [true, 'Event {id} is in the queue already.'],
  'replay.not_found': [false, 'Event {id} is not a dead letter (any more).'],
  'replay.below_floor': [false, 'Event {id} is below the retention floor and can no longer be applied.'],
  'replay.already_applied': [false, 'Event {id} is applied already.'],
  'park.parked': [true, 'Event {id} parked: it will never be applied; verify counts it as decided.'],
  'park.already_parked': [false, 'Event {id} is parked already.'],
  'park.processed': [false, 'Event {id} is applied already.'],
  'park.not_found': [false, 'Event {id} is not a dead letter (any more).'],
  'park.reason': [false, 'Parking event {id} needs a reason (at most 1000 characters).'],
  'verify.started': [true, 'Verify started.'],
  'verify.running': [false, 'Verify is running already.'],
  'rebuild.started': [true, 'Rebuild started.'],
  'rebuild.running': [false, 'A rebuild is running already; wait for it to finish.'],
};

const ago = (iso: string | number | null) => {
  if (iso === null) return '–';
  const s = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
  return `${s} s ago`;
};

function heartbeats(beats: Heartbeat[] | undefined): string {
  if (!beats) return UNAVAILABLE;
  const missing = ['relay', 'worker'].filter((p) => !beats.some((b) => b.proc === p && b.alive));
  const warn = missing.length > 0 ? `<p class="bad" id="missing">No ${missing.join(' and no ')} alive (none pushed metrics in the last 15 s).</p>` : '';
  if (beats.length === 0) return `${warn}<p class="empty">No relay or worker has reported.</p>`;
  const rows = beats
    .map((b) => `<tr data-proc="${esc(b.proc)}"><td>${esc(b.proc)}</td><td>${esc(b.host)}</td><td>${esc(b.pid)}</td><td>${esc(ago(b.at))}</td><td class="${b.alive ? 'good' : 'bad'}">${b.alive ? 'alive' : 'stale'}</td></tr>`)
    .join('');
  return `${warn}<table><thead><tr><th>process</th><th>host</th><th>pid</th><th>last heartbeat</th><th>state</th></tr></thead><tbody>${rows}</tbody></table>`;
}

function projections(report: StatusReport | undefined): string {
  if (!report) return UNAVAILABLE;
  const rows = report.projections
    .map((p) => {
      const v = p.last_verify;
      const verify = v ? `${v.ok ? 'ok' : v.outcome}${v.mismatches ? `, ${v.mismatches} difference(s)` : ''} (${ago(v.at)})` : 'never';
      const r = p.rebuild;
      const rebuild = `${r.state}${r.phase ? `: ${r.phase}` : ''}${r.rows_done !== null && progressUnit(r.phase) ? ` ${r.rows_done}${r.rows_total !== null ? `/${r.rows_total}` : ''} ${progressUnit(r.phase)}` : ''}${r.error ? ` (${r.error})` : ''}`;
      return `<tr data-projection="${esc(p.projection)}"><td>${esc(p.projection)}</td><td class="applied">${esc(p.last_applied_event_id ?? '–')}</td><td>${esc(ago(p.last_applied_at))}</td><td class="behind">${esc(p.events_behind ?? '?')}</td><td>${p.seconds_behind === null ? '?' : esc(p.seconds_behind.toFixed(1))}</td><td class="rows">${esc(p.rows)}${p.rows_exact ? '' : ' (est.)'}</td><td class="verify">${esc(verify)}</td><td class="rebuild">${esc(rebuild)}</td></tr>`;
    })
    .join('');
  return `<table><thead><tr><th>projection</th><th>last applied event</th><th>applied</th><th>events behind</th><th>s behind</th><th>rows</th><th>last verify</th><th>rebuild</th></tr></thead><tbody>${rows}</tbody></table>
<p class="note">Every event is applied to every projection in one transaction: position and lag are the pipeline's, the same for all.</p>`;
}

const button = (action: string, label: string, extra = '') => `<form method="post" action="${esc(action)}">${extra}<button type="submit">${esc(label)}</button></form>`;

function letters(items: readonly DeadLetter[] | undefined, parked: boolean): string {
  if (!items) return UNAVAILABLE;
  if (items.length === 0) return `<p class="empty">${parked ? 'No parked event.' : 'No failed event.'}</p>`;
  const rows = items
    .map((d) => {
      const base = `/admin/actions/events/${encodeURIComponent(d.event_id)}`;
      const actions = button(`${base}/replay`, 'Replay') + (parked ? '' : button(`${base}/park`, 'Park', '<input name="reason" required maxlength="1000" placeholder="reason" aria-label="reason">'));
      const when = parked ? `${esc(d.parked_at)}<br><i>${esc(d.park_reason)}</i>` : esc(d.failed_at);
      return `<tr data-event="${esc(d.event_id)}"><td>${esc(d.event_id)}</td><td>${esc(d.topic)}</td><td>${esc(d.attempts)}</td><td>${when}</td><td class="error" title="${esc(d.error)}">${esc(d.error)}</td><td class="actions">${actions}</td></tr>`;
    })
    .join('');
  return `<table><thead><tr><th>event</th><th>topic</th><th>attempts</th><th>${parked ? 'parked' : 'failed'}</th><th>error</th><th></th></tr></thead><tbody>${rows}</tbody></table>`;
}

function jobRun(run: JobRun | undefined, id: string): string {
  if (!run) return '';
  const state = run.finished_at === null ? `running since ${esc(run.started_at)} (pid ${esc(run.pid)})` : `finished ${esc(run.finished_at)}: ${run.signal ? `stopped by ${esc(run.signal)}` : `exit ${esc(run.exit_code)}`}`;
  return `<div id="${id}"><p>Started here: <span class="state">${state}</span></p><pre>${esc(run.output.join('\n'))}</pre></div>`;
}

function verifySection(last: VerifyRun | null | undefined, run: JobRun | undefined): string {
  let result = UNAVAILABLE;
  if (last === null) result = '<p class="empty" id="verify-last">Never run.</p>';
  else if (last) {
    const per = Object.entries(last.mismatches).filter(([, n]) => n > 0).map(([view, n]) => `${esc(view)} ${n}`).join(', ');
    const what = last.outcome === 'equal' ? 'every view equals its recomputation' : last.outcome === 'different' ? 'differences found' : last.outcome === 'failed_events' ? `${last.failed} failed event(s) wait for a decision` : `the read model did not catch up (${last.unapplied} event(s) not applied)`;
    result = `<p id="verify-last" class="${last.ok ? 'good' : 'bad'}"><b class="outcome">${last.ok ? 'OK' : esc(last.outcome)}</b> — ${esc(what)}; ${esc(last.events ?? '?')} events, ${esc(last.parked)} parked; finished ${esc(last.finished_at)}${per ? `; differences per view: ${per}` : ''}</p>`;
  }
  const running = run?.finished_at === null;
  return `${result}${jobRun(run, 'verify-run')}${running ? '' : button('/admin/actions/verify', 'Run verify')}`;
}

function rebuildSection(report: StatusReport | undefined, rebuilding: boolean, run: JobRun | undefined): string {
  const states = [...new Set(report?.projections.map((p) => `${p.rebuild.state}${p.rebuild.phase ? `: ${p.rebuild.phase}` : ''}`) ?? ['unavailable'])];
  const progress = run?.finished_at === null ? run.output.at(-1) : undefined;
  return `<p id="rebuild-state">State in read_db: <b>${esc(states.join('; '))}</b>${progress ? ` — <span id="rebuild-progress">${esc(progress)}</span>` : ''}</p>${jobRun(run, 'rebuild-run')}${
    rebuilding ? '<p class="empty">A rebuild is running; start another when it has finished.</p>' : button('/admin/actions/rebuild', 'Start rebuild')
  }
<p class="note">A rebuild recomputes every view from a write_db snapshot into shadow tables while projectors keep applying, compares them with the recomputation and swaps them in with one short transaction: projectors pause only for the swap (docs/rebuild.md).</p>`;
}

/** Is a rebuild going on: started here, recorded in rebuild_state, or holding its lock on read_db (started anywhere). */
async function rebuildRunning(deps: Deps): Promise<boolean> {
  if (deps.jobs.running('rebuild')) return true;
  const [states, holders] = await Promise.all([rebuildStates(deps.readDb), rebuildLockHolders(deps.readDb)]);
  return holders > 0 || states.some(isRebuilding);
}

async function render(deps: Deps, url: URL): Promise<string> {
  const redisUp = deps.redis.status === 'ready';
  const [backlog, beats, report, failed, parked, verify, counts, rebuilding] = await Promise.all([
    within(outboxBacklog(deps.writeDb), SOURCE_TIMEOUT_MS),
    redisUp ? within(readHeartbeats(deps.redis, deps.config.QUEUE_PREFIX), SOURCE_TIMEOUT_MS) : undefined,
    within(projectionStatuses(deps.writeDb, deps.readDb), SOURCE_TIMEOUT_MS * 2),
    within(listDeadLetters(deps.readDb, 'failed', 200), SOURCE_TIMEOUT_MS),
    within(listDeadLetters(deps.readDb, 'parked', 200), SOURCE_TIMEOUT_MS),
    within(lastVerifyRun(deps.readDb), SOURCE_TIMEOUT_MS),
    redisUp ? within(deps.queues.counts('waiting', 'active', 'delayed', 'failed'), SOURCE_TIMEOUT_MS) : undefined,
    within(rebuildRunning(deps), SOURCE_TIMEOUT_MS),
  ]);
  const busy = deps.jobs.running('verify') || rebuilding === true;
  const code = url.searchParams.get('notice') ?? '';
  const notice = NOTICES[code];
  const eventId = /^\d{1,19}$/.test(url.searchParams.get('event') ?? '') ? url.searchParams.get('event')! : '?';
  const noticeHtml = notice ? `<p id="notice" role="status" class="${notice[0] ? 'good' : 'bad'}" data-code="${esc(code)}">${esc(notice[1].replace('{id}', eventId))}</p>` : '';
  const queue = counts ? Object.entries(counts).map(([k, v]) => `${esc(v)} ${esc(k)}`).join(', ') : 'Redis unavailable';
  const html = `<!doctype html>
<html lang="en"><head><meta charset="utf-8">${busy ? '<meta http-equiv="refresh" content="2">' : ''}
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Order pipeline — admin</title><link rel="icon" href="data:,">
<style>
body{font:15px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px;display:flex;gap:24px;align-items:baseline}header h1{margin:0;font-size:18px}header a{color:#cfe0ff}
main{display:flex;flex-direction:column;gap:16px;padding:16px 24px}
section{background:#fff;border-radius:8px;padding:14px 18px;box-shadow:0 1px 2px #0001}
h2{font-size:14px;text-transform:uppercase;letter-spacing:.04em;color:#5b6475;margin:0 0 10px}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:4px 6px;border-bottom:1px solid #eceef2;vertical-align:top}
td.error{max-width:28em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
form{display:inline-flex;gap:4px;margin:0 4px 0 0}button{font:inherit;padding:2px 10px;cursor:pointer}input{font:inherit;width:12em}
pre{background:#f1f3f6;padding:8px;max-height:14em;overflow:auto;white-space:pre-wrap}
.empty,.note{color:#8a93a5}.good{color:#17803d}.bad{color:#b42318}#notice{font-weight:600}
</style></head><body>
<header><h1>Order pipeline — admin</h1><a href="/">dashboard</a><a href="/admin/queues">Bull Board</a><a href="/admin/projections">projections (JSON)</a></header>
<main>
${noticeHtml}
<section id="pipeline"><h2>Outbox and queue</h2>
<p id="backlog">${backlog ? `<b>${esc(backlog.unpublished)}</b> outbox row(s) not yet relayed; oldest <b>${esc(Math.round(backlog.oldestAgeSeconds))} s</b>` : 'write_db unavailable'}</p>
<p id="queue">Jobs: ${queue}</p></section>
<section id="processes"><h2>Relays and workers</h2>${heartbeats(beats)}</section>
<section id="projections"><h2>Projections</h2>${projections(report)}</section>
<section id="failed"><h2>Failed events (waiting for a decision)</h2>${letters(failed, false)}</section>
<section id="parked"><h2>Parked events</h2>${letters(parked, true)}</section>
<section id="verify"><h2>Verify</h2>${verifySection(verify, deps.jobs.last('verify'))}</section>
<section id="rebuild"><h2>Rebuild</h2>${rebuildSection(report, rebuilding === true, deps.jobs.last('rebuild'))}</section>
</main></body></html>`;
  return html;
}

/** An action of the page: the admin password, and an Origin of this host (a browser's form POST always has one). */
function action(ctx: Ctx): void {
  admin(ctx);
  if (ctx.req.headers.origin === undefined) throw new ApiError('forbidden', 'Actions of the admin view come from its page (no Origin); scripts use /admin/events');
  requireSameOrigin(ctx.req);
}

const FORM_MAX_BYTES = Math.min(MAX_BODY_BYTES, 16 * 1024);

/** An HTML form's body (application/x-www-form-urlencoded, at most 16 KiB). */
async function readForm(req: IncomingMessage): Promise<URLSearchParams> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
  if (type !== 'application/x-www-form-urlencoded') throw new ApiError('unsupported_media_type', `Content-Type was ${JSON.stringify(type || null)}; the admin view sends forms`);
  return new URLSearchParams(await readBody(req, FORM_MAX_BYTES, `A form of the admin view is at most ${FORM_MAX_BYTES / 1024} KiB`));
}

function back(ctx: Ctx, notice: string, eventId?: string): void {
  const query = new URLSearchParams({ notice, ...(eventId ? { event: eventId } : {}) });
  ctx.res.writeHead(303, { Location: `/admin?${query}`, 'Content-Length': 0, 'Cache-Control': 'no-store' });
  ctx.res.end();
}

const ops = (deps: Deps) => ({ readDb: deps.readDb, queues: deps.queues, config: deps.config });

async function startJob(ctx: Ctx, kind: JobKind): Promise<void> {
  action(ctx);
  await readForm(ctx.req);
  if (kind === 'rebuild' && (await rebuildRunning(ctx.deps))) return back(ctx, 'rebuild.running');
  back(ctx, ctx.deps.jobs.start(kind) === 'running' ? `${kind}.running` : `${kind}.started`);
}

export const adminViewRoutes: Route[] = [
  {
    method: 'GET',
    path: '/admin',
    async handler(ctx) {
      admin(ctx);
      const html = await render(ctx.deps, ctx.url);
      ctx.res.writeHead(200, {
        'Content-Type': 'text/html; charset=utf-8',
        'Cache-Control': 'no-store',
        // No script; forms post to this site only.
        'Content-Security-Policy': "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        'X-Frame-Options': 'DENY',
        // The page's forms must carry its Origin (with no-referrer a browser sends "Origin: null" on a POST).
        'Referrer-Policy': 'same-origin',
      });
      ctx.res.end(html);
    },
  },
  {
    method: 'POST',
    path: '/admin/actions/events/:id/replay',
    async handler(ctx) {
      action(ctx);
      const id = String(parseId(ctx.params[0], 'id'));
      await readForm(ctx.req);
      back(ctx, `replay.${await replayDeadLetter(ops(ctx.deps), id)}`, id);
    },
  },
  {
    method: 'POST',
    path: '/admin/actions/events/:id/park',
    async handler(ctx) {
      action(ctx);
      const id = String(parseId(ctx.params[0], 'id'));
      const parsed = parkBody.safeParse({ reason: (await readForm(ctx.req)).get('reason') ?? '' });
      if (!parsed.success) return back(ctx, 'park.reason', id);
      back(ctx, `park.${await parkEvent(ops(ctx.deps), id, parsed.data.reason)}`, id);
    },
  },
  { method: 'POST', path: '/admin/actions/verify', handler: (ctx) => startJob(ctx, 'verify') },
  { method: 'POST', path: '/admin/actions/rebuild', handler: (ctx) => startJob(ctx, 'rebuild') },
];
