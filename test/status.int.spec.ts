import assert from 'node:assert/strict';
import pg from 'pg';
import { LOCKS } from '../lib/contract.js';
import { startTestWeb, call, createProduct, type WebFixture } from './support/web.js';
import { waitForDrain } from './support/pipeline.js';
import { Proc } from './support/processes.js';
import { testLog } from './support/env.js';
import { startRelay, type RelayHandle } from '../workers/relay/start.js';
import { startProjector, type ProjectorHandle } from '../workers/projector/projector.js';
import { projectionStatuses, statusReport, type StatusReport } from '../db/status.js';
import { rebuild } from '../db/rebuild.js';
import { PROJECTIONS } from '../workers/projector/projections/index.js';

const PASSWORD = 'status-test-password';
const basic = () => ({ authorization: `Basic ${Buffer.from(`op:${PASSWORD}`).toString('base64')}` });
const tables = PROJECTIONS.map((p) => p.table);
const byName = (r: StatusReport, table: string) => r.projections.find((p) => p.projection === table)!;

/** db/status.ts, GET /admin/projections and the projection_* series of /metrics, against real PostgreSQL and Redis. */
describe('projection status (integration)', function () {
  this.timeout(120_000);
  let f: WebFixture;
  let relay: RelayHandle | undefined;
  let worker: ProjectorHandle | undefined;

  beforeEach(async () => {
    f = await startTestWeb({ ADMIN_PASSWORD: PASSWORD });
  });
  afterEach(async () => {
    await relay?.stop();
    await worker?.stop();
    relay = worker = undefined;
    await f.stop();
  });

  const status = () => projectionStatuses(f.writeDb, f.readDb);
  const verify = async () => {
    const p = new Proc('scripts/verify.js', f.env.env, ['--wait', '10']);
    await p.run().catch(() => undefined);
    return p.output;
  };

  it('an empty system: nothing applied, nothing behind, empty views, never verified, no rebuild', async () => {
    const r = await status();
    assert.deepEqual(r.projections.map((p) => p.projection), tables);
    for (const p of r.projections) {
      assert.deepEqual(
        { id: p.last_applied_event_id, at: p.last_applied_at, behind: p.events_behind, s: p.seconds_behind, rows: p.rows, exact: p.rows_exact, verify: p.last_verify, rebuild: p.rebuild.state },
        { id: null, at: null, behind: 0, s: 0, rows: 0, exact: true, verify: null, rebuild: 'idle' },
      );
    }
    assert.deepEqual(r.outbox, { last_event_id: 0, unpublished: 0, oldest_unpublished_age_seconds: 0 });
  });

  it('last applied, lag and rows follow the pipeline: caught up, then one event behind while no worker runs', async () => {
    relay = await startRelay(f.env.config, testLog);
    worker = await startProjector(f.env.config, testLog);
    const a = await createProduct(f.base, { category: 'tools', price: '2.50', stock: 100 });
    const b = await createProduct(f.base, { category: 'toys', price: '1.00', stock: 100 });
    let last = 0;
    for (const customer of [1, 2, 3]) {
      const r = await call(f.base, 'POST', '/orders', { customer_id: customer, items: [{ product_id: customer === 2 ? b : a, quantity: 1 }] });
      last = Number(r.headers.get('x-consistency-token'));
    }
    await waitForDrain(f.writeDb, f.readDb);
    const caught = await status();
    for (const p of caught.projections) {
      assert.equal(p.last_applied_event_id, String(last), p.projection);
      assert.ok(p.last_applied_at && Date.now() - Date.parse(p.last_applied_at) < 60_000, 'applied just now');
      assert.equal(p.events_behind, 0);
      assert.equal(p.seconds_behind, 0);
    }
    assert.deepEqual(
      tables.map((t) => byName(caught, t).rows),
      [2, 2, 3, 1], // products a and b; tools and toys; customers 1–3; one hour
    );

    await worker.stop();
    worker = undefined;
    const r = await call(f.base, 'POST', '/orders', { customer_id: 4, items: [{ product_id: a, quantity: 1 }] });
    await new Promise((resolve) => setTimeout(resolve, 1100));
    const behind = await status();
    for (const p of behind.projections) {
      assert.equal(p.last_applied_event_id, String(last));
      assert.equal(p.events_behind, 1);
      assert.ok(p.seconds_behind! >= 1, `the unapplied event is ${p.seconds_behind} s old`);
    }
    assert.equal(behind.outbox?.last_event_id, Number(r.headers.get('x-consistency-token')));
  });

  it('after a full rebuild of a read model that had applied nothing, the last applied event is the floor it raised, at the time of its swap', async () => {
    const a = await createProduct(f.base, { price: '2.00', stock: 100 });
    let last = 0;
    for (const customer of [1, 2]) last = Number((await call(f.base, 'POST', '/orders', { customer_id: customer, items: [{ product_id: a, quantity: 1 }] })).headers.get('x-consistency-token'));
    const before = Date.now();
    await rebuild(f.env.config.DATABASE_URL, f.env.config.READ_DATABASE_URL);
    assert.equal((await f.read.query('SELECT count(*)::int AS n FROM processed_events')).rows[0].n, 0, 'the floor counts them, no row does');
    for (const p of (await status()).projections) {
      assert.equal(p.last_applied_event_id, String(last), p.projection);
      assert.ok(p.last_applied_at, `${p.projection}: the floor's time is known`);
      const at = Date.parse(`${p.last_applied_at}`);
      assert.ok(at >= before - 1000 && at <= Date.now() + 1000, `${p.last_applied_at} is the swap's time`);
    }
  });

  it('the last applied event is the numerically highest (text order would say 99 > 100)', async () => {
    await f.write.query(`SELECT setval('outbox_id_seq', 150)`);
    await f.read.query(`INSERT INTO processed_events (event_id) VALUES ('9'), ('10'), ('99'), ('100'), ('11')`);
    assert.equal((await status()).projections[0]!.last_applied_event_id, '100');
    // Past a power of ten, the longest ids win however they sort as text.
    await f.write.query(`SELECT setval('outbox_id_seq', 1000)`);
    await f.read.query(`INSERT INTO processed_events (event_id) VALUES ('1000')`);
    assert.equal((await status()).projections[0]!.last_applied_event_id, '1000');
  });

  it("verify records its result; the status shows it per projection: equal, then one view's differences", async () => {
    relay = await startRelay(f.env.config, testLog);
    worker = await startProjector(f.env.config, testLog);
    const a = await createProduct(f.base, { price: '3.00', stock: 100 });
    await call(f.base, 'POST', '/orders', { customer_id: 7, items: [{ product_id: a, quantity: 2 }] });
    await waitForDrain(f.writeDb, f.readDb);
    await verify();
    const ok = await status();
    for (const p of ok.projections) assert.deepEqual({ ok: p.last_verify?.ok, outcome: p.last_verify?.outcome, n: p.last_verify?.mismatches }, { ok: true, outcome: 'equal', n: 0 });

    await f.read.query('UPDATE product_sales_view SET total_revenue = total_revenue + 1, order_count = order_count + 5');
    const out = await verify();
    const bad = await status();
    assert.deepEqual(
      bad.projections.map((p) => [p.projection, p.last_verify?.ok, p.last_verify?.outcome, p.last_verify?.mismatches]),
      tables.map((t) => [t, false, 'different', t === 'product_sales_view' ? 2 : 0]),
      out,
    );
    assert.ok(Date.parse(bad.projections[0]!.last_verify!.at) >= Date.parse(ok.projections[0]!.last_verify!.at));
  });

  it('reads rebuild_state: running, crashed (no progress written lately) or done for the projections the run rebuilds, idle for the others', async () => {
    assert.ok((await status()).projections.every((p) => p.rebuild.state === 'idle'));
    // The blue/green rebuild's row (db/rebuild.ts): one run, of the projections it names.
    const write = (phase: string, age: string, finished: boolean) =>
      f.read.query(
        `INSERT INTO rebuild_state (run_id, pid, projections, dry_run, phase, rows_done, rows_total, started_at, updated_at, finished_at)
         VALUES ('r1', 1, ARRAY['product_sales_view'], false, $1, 40, 100, now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC' - $2::interval, CASE WHEN $3 THEN now() AT TIME ZONE 'UTC' END)
         ON CONFLICT (singleton) DO UPDATE SET phase = EXCLUDED.phase, updated_at = EXCLUDED.updated_at, finished_at = EXCLUDED.finished_at`,
        [phase, age, finished],
      );
    await write('copy', '1 second', false);
    const r = await status();
    assert.deepEqual(byName(r, 'product_sales_view').rebuild, { state: 'running', phase: 'copy', rows_done: 40, rows_total: 100, updated_at: byName(r, 'product_sales_view').rebuild.updated_at, error: null });
    assert.ok(byName(r, 'product_sales_view').rebuild.updated_at);
    assert.equal(byName(r, 'customer_ltv_view').rebuild.state, 'idle', 'a projection the run does not rebuild');
    const metrics = (await call(f.base, 'GET', '/metrics')).body as string;
    assert.match(metrics, /^projection_rebuilding\{projection="product_sales_view"\} 1$/m);
    assert.match(metrics, /^projection_rebuilding\{projection="customer_ltv_view"\} 0$/m);
    await write('copy', '5 minutes', false);
    assert.equal(byName(await status(), 'product_sales_view').rebuild.state, 'crashed', 'a run that stopped writing its progress (kill -9)');
    await write('done', '0 seconds', true);
    assert.equal(byName(await status(), 'product_sales_view').rebuild.state, 'done');
  });

  it('a rebuild counts as running while it holds its lock on read_db (before it writes rebuild_state), not once it has let go though its session is still open', async () => {
    // What db/rebuild.ts does first and last on its control connection, from a session named as its are.
    const rebuilder = new pg.Client({ connectionString: f.env.config.READ_DATABASE_URL, application_name: 'rebuild' });
    await rebuilder.connect();
    const page = async () => (await call(f.base, 'GET', '/admin', undefined, basic())).body as string;
    try {
      assert.deepEqual((await status()).projections.map((p) => p.rebuild.state), tables.map(() => 'idle'), 'connected, nothing begun');
      await rebuilder.query('SELECT pg_advisory_lock($1)', [LOCKS.rebuild]);
      const begun = await status();
      assert.deepEqual(begun.projections.map((p) => p.rebuild.state), tables.map(() => 'running'));
      assert.match(begun.projections[0]!.rebuild.phase ?? '', /^starting/);
      assert.match(await page(), /A rebuild is running; start another when it has finished/);
      await rebuilder.query('SELECT pg_advisory_unlock($1)', [LOCKS.rebuild]);
      assert.deepEqual((await status()).projections.map((p) => p.rebuild.state), tables.map(() => 'idle'), 'let go; its session is still open');
      assert.match(await page(), /Start rebuild/);
    } finally {
      await rebuilder.end();
    }
  });

  it('GET /admin/projections: off without ADMIN_PASSWORD, 401 without it, the status (as documented) with it; /metrics by projection', async () => {
    const off = await startTestWeb();
    try {
      assert.equal((await call(off.base, 'GET', '/admin/projections')).status, 404);
    } finally {
      await off.stop();
    }
    assert.equal((await call(f.base, 'GET', '/admin/projections')).status, 401);
    await f.read.query(`INSERT INTO processed_events (event_id) VALUES ('1')`);
    await f.write.query(`SELECT setval('outbox_id_seq', 1)`);
    const r = await call(f.base, 'GET', '/admin/projections', undefined, basic());
    assert.equal(r.status, 200);
    const report = statusReport.parse(r.json);
    assert.deepEqual(report.projections.map((p) => [p.projection, p.last_applied_event_id]), tables.map((t) => [t, '1']));
    const metrics = (await call(f.base, 'GET', '/metrics')).body as string;
    for (const t of tables) {
      assert.match(metrics, new RegExp(`^projection_last_applied_event_id\\{projection="${t}"\\} 1$`, 'm'));
      assert.match(metrics, new RegExp(`^projection_behind_events\\{projection="${t}"\\} 0$`, 'm'));
      assert.match(metrics, new RegExp(`^projection_rows\\{projection="${t}"\\} 0$`, 'm'));
    }
  });

  it("the admin view's actions: only from its own page (an Origin of this host), as forms; a second rebuild is refused", async () => {
    const form = { ...basic(), 'content-type': 'application/x-www-form-urlencoded' };
    const host = new URL(f.base).host;
    assert.equal((await call(f.base, 'POST', '/admin/actions/verify', '', form)).status, 403, 'no Origin');
    assert.equal((await call(f.base, 'POST', '/admin/actions/verify', '', { ...form, origin: 'http://evil.example' })).status, 403);
    assert.equal((await call(f.base, 'POST', '/admin/actions/verify', '', { ...form, origin: 'null' })).status, 403);
    assert.equal((await call(f.base, 'POST', '/admin/actions/verify', {}, { ...basic(), origin: `http://${host}` })).status, 415);
    const tooLarge = await call(f.base, 'POST', '/admin/actions/verify', `reason=${'x'.repeat(16 * 1024)}`, { ...form, origin: `http://${host}` });
    assert.deepEqual([tooLarge.status, (tooLarge.json as { code?: string; detail?: string }).code, (tooLarge.json as { detail?: string }).detail], [413, 'payload_too_large', 'A form of the admin view is at most 16 KiB']);
    assert.equal((await call(f.base, 'POST', '/admin/actions/verify', '', { 'content-type': 'application/x-www-form-urlencoded', origin: `http://${host}` })).status, 401);
    await f.read.query(
      `INSERT INTO rebuild_state (run_id, pid, projections, dry_run, phase, started_at, updated_at) VALUES ('r1', 1, ARRAY['product_sales_view', 'hourly_sales_view'], false, 'copy', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC')`,
    );
    const refused = await fetch(`${f.base}/admin/actions/rebuild`, { method: 'POST', headers: { ...form, origin: `http://${host}` }, body: '', redirect: 'manual' });
    assert.deepEqual([refused.status, refused.headers.get('location')], [303, '/admin?notice=rebuild.running']);
    const page = await call(f.base, 'GET', '/admin?notice=rebuild.running', undefined, basic());
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-security-policy') ?? '', /form-action 'self'/);
    assert.doesNotMatch(page.body as string, /<script/i);
    assert.match(page.body as string, /A rebuild is running already/);
    assert.doesNotMatch(page.body as string, /Start rebuild/);
  });
});
