import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { startTestWeb, call, createProduct, type WebFixture } from './support/web.js';
import { parkDeadLetter } from '../db/dead-letters.js';
import { waitForDrain, assertConsistent, sleep } from './support/pipeline.js';
import { testLog } from './support/env.js';
import { Proc } from './support/processes.js';
import { startRelay, type RelayHandle } from '../workers/relay/start.js';
import { startProjector, type ProjectorHandle } from '../workers/projector/projector.js';
import { rebuild } from '../db/rebuild.js';
import { prune } from '../db/retention.js';
import { projectionStatuses } from '../db/status.js';
import { PROJECTIONS } from '../workers/projector/projections/index.js';
import { seedProducts } from '../bench/lib.js';
import { seedOrders } from '../bench/readside.js';

/** A small seeded PRNG (mulberry32): the kill points are random but the same every run. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('blue/green rebuild (integration)', function () {
  this.timeout(180_000);
  let f: WebFixture;
  let relay: RelayHandle;
  let worker: ProjectorHandle | undefined;
  let products: number[];

  before(async () => {
    f = await startTestWeb({ RECONCILE_INTERVAL_MS: '500', RECONCILE_GRACE_MS: '1000' });
    // A history written straight into write_db (as the benchmark seeds it): 20,000 orders over products 1–1000,
    // recorded processed by a first rebuild; then the pipeline runs.
    products = await seedProducts(f.write, 1000);
    await seedOrders(f.write, 20_000, () => undefined);
    await rebuild(f.env.config.DATABASE_URL, f.env.config.READ_DATABASE_URL);
    relay = await startRelay(f.env.config, testLog);
    worker = await startProjector(f.env.config, testLog);
  });
  after(async () => {
    await relay?.stop();
    await worker?.stop();
    await f?.stop();
  });

  /** Orders (a quarter of them cancelled) through the API until stopped. */
  function flow(): { stop: () => Promise<number> } {
    let stopping = false;
    let n = 0;
    const done = (async () => {
      while (!stopping) {
        const o = await call(f.base, 'POST', '/orders', { customer_id: 70_000 + (n % 11), items: [{ product_id: products[n % 7]!, quantity: 1 + (n % 3) }, { product_id: products[500 + (n % 5)]!, quantity: 1 }] });
        assert.equal(o.status, 201, JSON.stringify(o.body));
        if (n++ % 4 === 0) await call(f.base, 'POST', `/orders/${o.json.id}/cancel`);
      }
    })();
    return {
      stop: async () => {
        stopping = true;
        await done;
        return n;
      },
    };
  }

  const tamper = () =>
    f.read.query(`UPDATE customer_ltv_view SET order_count = order_count + 5 WHERE customer_id IN (SELECT customer_id FROM customer_ltv_view ORDER BY customer_id LIMIT 50);
                  UPDATE product_sales_view SET total_revenue = total_revenue + 1 WHERE product_id = ${products[0]}`);

  const shadowsLeft = async () =>
    (await f.read.query<{ relname: string }>(`SELECT relname FROM pg_class WHERE relname LIKE '%\\_\\_rebuild%'`)).rows.map((r) => r.relname);

  /** Every view, its rows as text, in key order. */
  async function views(): Promise<string> {
    const out: string[] = [];
    for (const p of PROJECTIONS) out.push(JSON.stringify((await f.read.query(`SELECT * FROM ${p.table} ORDER BY 1`)).rows));
    return out.join('\n');
  }

  it('while orders flow through the running pipeline: events after the snapshot are caught up once, the views end equal to the recomputation', async () => {
    const load = flow();
    await sleep(300);
    await tamper();
    let placed = 0;
    const r = await rebuild(f.env.config.DATABASE_URL, f.env.config.READ_DATABASE_URL, async (p) => {
      // After the snapshot and before the catch-up: orders the projector applies now are in P, not in the snapshot.
      if (p.phase === 'compare' && placed === 0) {
        for (placed = 0; placed < 5; placed++) {
          const o = await call(f.base, 'POST', '/orders', { customer_id: 80_000, items: [{ product_id: products[3]!, quantity: 2 }] });
          await call(f.base, 'POST', `/orders/${o.json.id}/cancel`);
        }
        await waitForApplied();
      }
    });
    await load.stop();
    assert.ok(r.swapped);
    assert.ok(r.caughtUp >= 10, `caught up ${r.caughtUp} events, expected the 10 applied during the rebuild at least`);
    for (const p of PROJECTIONS) assert.ok(r.checksums[p.table]?.match, `${p.table}: ${JSON.stringify(r.checksums[p.table])}`);
    assert.ok(r.swapMs < 1000, `swap held its locks ${r.swapMs} ms`);
    await waitForDrain(f.writeDb, f.readDb);
    await assertConsistent(f.writeDb, f.readDb);
    assert.deepEqual(await shadowsLeft(), []);
    const { rows } = await f.read.query(`SELECT phase, events_caught_up, finished_at IS NOT NULL AS finished, checksums FROM rebuild_state`);
    assert.equal(rows[0].phase, 'done');
    assert.equal(Number(rows[0].events_caught_up), r.caughtUp);
    assert.equal(Object.keys(rows[0].checksums).length, PROJECTIONS.length);
  });

  /** Until every outbox row is processed (the load may still be running: a snapshot of ids, then wait for them). */
  async function waitForApplied(): Promise<void> {
    const { rows } = await f.write.query<{ id: string }>('SELECT id::text FROM outbox WHERE id > (SELECT max(id) - 200 FROM outbox)');
    const floor = Number((await f.read.query<{ n: string }>('SELECT event_id::text AS n FROM processed_floor')).rows[0]!.n);
    const ids = rows.map((r) => r.id).filter((id) => Number(id) > floor);
    for (let i = 0; i < 300; i++) {
      const done = await f.read.query('SELECT 1 FROM processed_events WHERE event_id = ANY ($1::text[])', [ids]);
      if (done.rowCount === ids.length) return;
      await sleep(50);
    }
    throw new Error('events not applied in 15 s');
  }

  it('--dry-run builds and compares, and changes nothing', async () => {
    await waitForDrain(f.writeDb, f.readDb);
    await tamper();
    const before = await views();
    const processed = (await f.read.query('SELECT count(*)::int AS n FROM processed_events')).rows[0].n;
    const out = await new Proc('scripts/rebuild.js', f.env.env, ['--dry-run']).run(60_000);
    assert.match(out, /dry run done/);
    assert.match(out, /customer_ltv_view\s+\d+ rows\s+checksum [0-9a-f]{16}\s+equal to the recomputation/);
    assert.equal(await views(), before);
    assert.equal((await f.read.query('SELECT count(*)::int AS n FROM processed_events')).rows[0].n, processed);
    assert.deepEqual(await shadowsLeft(), []);
    assert.equal((await f.read.query('SELECT phase FROM rebuild_state')).rows[0].phase, 'dry_run_done');
    await assert.rejects(assertConsistent(f.writeDb, f.readDb), /view differences/);
    assert.match(await new Proc('scripts/rebuild.js', f.env.env).run(60_000), /rebuild: done/);
    await assertConsistent(f.writeDb, f.readDb);
  });

  it('rebuilds one projection by name; events of the snapshot not yet applied reach the other views once', async () => {
    await waitForDrain(f.writeDb, f.readDb);
    await tamper();
    // The projector stopped: orders placed now are in the snapshot but not processed.
    await worker!.stop();
    worker = undefined;
    for (let i = 0; i < 6; i++) {
      const o = await call(f.base, 'POST', '/orders', { customer_id: 90_000 + i, items: [{ product_id: products[1]!, quantity: 1 }] });
      if (i % 3 === 0) await call(f.base, 'POST', `/orders/${o.json.id}/cancel`);
    }
    const before = (await f.read.query(`SELECT order_count FROM customer_ltv_view ORDER BY customer_id LIMIT 1`)).rows[0];
    const out = await new Proc('scripts/rebuild.js', f.env.env, ['--projection', 'product_sales_view']).run(60_000);
    assert.match(out, /rebuild: done .* 8 events marked processed/);
    // Each phase's progress in what it counts: rows copied, tables indexed, events caught up.
    assert.match(out, /^rebuild: copy product_sales_view [\d,]+\/[\d,]+ rows/m);
    assert.match(out, /^rebuild: index [01]\/1 tables$/m);
    assert.match(out, /^rebuild: snapshot$/m);
    assert.doesNotMatch(out, /customer_ltv_view/);
    // customer_ltv_view kept its table (and the tampering), and got the new orders like a projector would have given them.
    assert.deepEqual((await f.read.query(`SELECT order_count FROM customer_ltv_view ORDER BY customer_id LIMIT 1`)).rows[0], before);
    assert.equal((await f.read.query(`SELECT order_count FROM customer_ltv_view WHERE customer_id = 90001`)).rows[0]?.order_count, 1);
    worker = await startProjector(f.env.config, testLog);
    await waitForDrain(f.writeDb, f.readDb);
    await f.read.query(`UPDATE customer_ltv_view SET order_count = order_count - 5 WHERE customer_id IN (SELECT customer_id FROM customer_ltv_view ORDER BY customer_id LIMIT 50)`);
    await assertConsistent(f.writeDb, f.readDb);
    await assert.rejects(new Proc('scripts/rebuild.js', f.env.env, ['--projection', 'nope']).run(), /exited 2/);
  });

  it('kill -9 at random (seeded) points of the run, then a rerun: the views are never half swapped and end exact', async () => {
    const random = prng(15);
    const phases = ['snapshot', 'copy', 'index', 'compare', 'catchup', 'swap'];
    const load = flow();
    await tamper();
    const seen: string[] = [];
    for (let i = 0; i < 6; i++) {
      const phase = phases[Math.floor(random() * phases.length)]!;
      const delay = Math.floor(random() * 40);
      const p = new Proc('scripts/rebuild.js', f.env.env).start();
      try {
        await p.waitFor(new RegExp(`rebuild: ${phase}`), 60_000);
      } catch {
        // it finished before that phase showed (a dry run never swaps; a quick run may print no copy line): fine, nothing to kill
      }
      await sleep(delay);
      const { code } = await p.signal('SIGKILL');
      seen.push(`${phase}+${delay}ms${code === null ? '' : ` (exited ${code})`}`);
      if (process.env.TEST_SHOW_KILLS) console.error(`killed at ${seen.at(-1)}; last output: ${p.output.trim().split('\n').at(-1)}`);
      // Never half swapped: every view is there, with every one of its indexes.
      const { rows } = await f.read.query<{ t: string; n: number }>(
        `SELECT c.relname AS t, (SELECT count(*)::int FROM pg_index x WHERE x.indrelid = c.oid) AS n FROM pg_class c WHERE c.relname = ANY ($1) AND c.relkind = 'r'`,
        [PROJECTIONS.map((x) => x.table)],
      );
      assert.equal(rows.length, PROJECTIONS.length, `after kill at ${seen.at(-1)}: ${JSON.stringify(rows)}`);
      assert.equal(rows.find((r) => r.t === 'product_sales_view')?.n, 3);
    }
    // Most kills must have hit a running rebuild, or this tests nothing.
    assert.ok(seen.filter((k) => !k.includes('exited')).length >= 4, `kills: ${seen.join(', ')}`);
    const out = await new Proc('scripts/rebuild.js', f.env.env).run(60_000);
    assert.match(out, /rebuild: done/);
    await load.stop();
    await waitForDrain(f.writeDb, f.readDb);
    await assertConsistent(f.writeDb, f.readDb);
    assert.deepEqual(await shadowsLeft(), [], `kills: ${seen.join(', ')}`);
    assert.equal((await f.read.query('SELECT phase FROM rebuild_state')).rows[0].phase, 'done');
  });

  it('the recomputations run at the lowest CPU priority (PostgreSQL is on this machine); the pipeline sessions keep theirs', async () => {
    const nice = (pid: number) => Number(readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')[16]);
    let seen: { pid: number; nice: number }[] = [];
    await rebuild(f.env.config.DATABASE_URL, f.env.config.READ_DATABASE_URL, async (p) => {
      if (p.phase !== 'copy' || seen.length > 0) return;
      const { rows } = await f.write.query<{ pid: number }>(`SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'rebuild' AND backend_xmin IS NOT NULL`);
      seen = rows.map((r) => ({ pid: r.pid, nice: nice(r.pid) }));
    });
    // The snapshot's own session and the copy's: the copy's is niced, the snapshot holder (it does no work) is not.
    assert.ok(seen.some((s) => s.nice === 19), JSON.stringify(seen));
    const others = await f.write.query<{ pid: number }>(`SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name <> 'rebuild'`);
    assert.ok(others.rows.length > 0);
    for (const r of others.rows) assert.equal(nice(r.pid), 0, `pipeline session ${r.pid}`);
  });

  it('one rebuild at a time', async () => {
    let second: Promise<unknown> | undefined;
    await rebuild(f.env.config.DATABASE_URL, f.env.config.READ_DATABASE_URL, async (p) => {
      if (p.phase !== 'snapshot' || second) return;
      second = rebuild(f.env.config.DATABASE_URL, f.env.config.READ_DATABASE_URL);
      await assert.rejects(second, /another rebuild is running/);
    });
    assert.ok(second);
  });

  it('one projection rebuilt beside a parked dead letter leaves the parked order out, as the other views do; a full rebuild then resolves it', async () => {
    await waitForDrain(f.writeDb, f.readDb);
    const x = await createProduct(f.base, { price: '9.99', stock: 10 });
    await f.read.query(`ALTER TABLE product_sales_view ADD CONSTRAINT test_no_x CHECK (product_id <> ${x})`);
    const r = await call(f.base, 'POST', '/orders', { customer_id: 95_000, items: [{ product_id: x, quantity: 2 }, { product_id: products[2]!, quantity: 1 }] });
    const e = r.headers.get('x-consistency-token')!;
    for (let i = 0; (await f.read.query('SELECT 1 FROM dead_letters WHERE event_id = $1', [e])).rowCount === 0; i++) {
      assert.ok(i < 300, 'no dead letter recorded in 15 s');
      await sleep(50);
    }
    assert.equal(await parkDeadLetter(f.readDb, e, 'operator decision'), 'parked');
    await f.read.query('ALTER TABLE product_sales_view DROP CONSTRAINT test_no_x');
    await waitForDrain(f.writeDb, f.readDb);
    await assertConsistent(f.writeDb, f.readDb, [Number(e)]);
    await tamper();
    await f.read.query(`UPDATE customer_ltv_view SET order_count = order_count - 5 WHERE customer_id IN (SELECT customer_id FROM customer_ltv_view ORDER BY customer_id LIMIT 50)`);
    assert.match(await new Proc('scripts/rebuild.js', f.env.env, ['--projection', 'product_sales_view']).run(60_000), /rebuild: done/);
    await assertConsistent(f.writeDb, f.readDb, [Number(e)]);
    const full = await rebuild(f.env.config.DATABASE_URL, f.env.config.READ_DATABASE_URL);
    assert.equal(full.deadLettersResolved, 1);
    await assertConsistent(f.writeDb, f.readDb);
  });
  it('an order in flight below every id the snapshot sees, committed after it, is caught up (the gap below the lowest id)', async () => {
    await waitForDrain(f.writeDb, f.readDb);
    const held = await f.write.connect();
    try {
      await held.query('BEGIN');
      await held.query('SELECT place_order($1, $2, $3, NULL, NULL)', [96_000, [products[4]], [3]]);
      const heldId = Number((await held.query<{ id: string }>('SELECT max(id)::text AS id FROM outbox')).rows[0]!.id);
      const { rows } = await f.read.query<{ settled: string }>('SELECT greatest((SELECT event_id FROM processed_floor), (SELECT last_event_id FROM reconciler_watermark))::text AS settled');
      assert.equal(heldId, Number(rows[0]!.settled) + 1, 'the held order must take the first id above the floor and the watermark');
      // A later order (another product: the held one locks its row) commits: the snapshot's lowest id is above the held one.
      const later = await call(f.base, 'POST', '/orders', { customer_id: 96_001, items: [{ product_id: products[6]!, quantity: 1 }] });
      assert.equal(later.status, 201, JSON.stringify(later.body));
      let committed = false;
      const r = await rebuild(f.env.config.DATABASE_URL, f.env.config.READ_DATABASE_URL, async (p) => {
        if (p.phase !== 'compare' || committed) return;
        committed = true;
        await held.query('COMMIT');
        await waitForApplied();
      });
      assert.ok(committed && r.swapped);
      assert.ok(r.floor < heldId || r.caughtUp >= 1, `floor ${r.floor}, caught up ${r.caughtUp}`);
    } finally {
      await held.query('ROLLBACK').catch(() => undefined);
      held.release();
    }
    await waitForDrain(f.writeDb, f.readDb);
    await assertConsistent(f.writeDb, f.readDb);
  });

  it('into an empty read model (a new read_db, an outbox the old one pruned): the floor covers the snapshot, so the swap records no id one by one', async () => {
    await waitForDrain(f.writeDb, f.readDb);
    await relay.stop();
    await worker!.stop();
    worker = undefined;
    await f.read.query(`TRUNCATE ${PROJECTIONS.map((p) => p.table).join(', ')}, processed_events, dead_letters;
                        UPDATE processed_floor SET event_id = 0; UPDATE reconciler_watermark SET last_event_id = 0`);
    // The old read_db had pruned the oldest events: the outbox starts high, and no reconciler has run for the new one.
    await f.write.query('DELETE FROM outbox WHERE id <= 5000');
    // Placed with the relay stopped: in the snapshot, unpublished, unprocessed.
    for (let i = 0; i < 3; i++) assert.equal((await call(f.base, 'POST', '/orders', { customer_id: 97_000 + i, items: [{ product_id: products[5]!, quantity: 1 }] })).status, 201);
    const high = Number((await f.write.query<{ id: string }>('SELECT max(id)::text AS id FROM outbox')).rows[0]!.id);
    const r = await rebuild(f.env.config.DATABASE_URL, f.env.config.READ_DATABASE_URL);
    assert.ok(r.swapped);
    assert.ok(high > 20_000, `outbox ${high}`);
    // Nothing was in flight: the rebuild's own horizon settles every id, and the floor rises to the snapshot's last one.
    assert.equal(r.floor, high);
    assert.equal(r.events, 0);
    assert.equal((await f.read.query('SELECT count(*)::int AS n FROM processed_events')).rows[0].n, r.events);
    assert.equal((await f.read.query('SELECT event_id::int AS n FROM processed_floor')).rows[0].n, r.floor);
    // Prune, before any reconciler has moved the watermark: the floor is above its bounds, and it says so.
    const early = await prune({ writeDb: f.writeDb, readDb: f.readDb, keepMs: 3_600_000 });
    assert.deepEqual([early.floor, early.outbox, early.limitedBy], [high, 0, 'floor_above_bounds']);
    // The pipeline resumes: the snapshot's events are duplicates, later ones are applied; prune leaves young events alone.
    relay = await startRelay(f.env.config, testLog);
    worker = await startProjector(f.env.config, testLog);
    assert.equal((await call(f.base, 'POST', '/orders', { customer_id: 97_010, items: [{ product_id: products[5]!, quantity: 2 }] })).status, 201);
    await waitForDrain(f.writeDb, f.readDb);
    await assertConsistent(f.writeDb, f.readDb);
    const outbox = async () => (await f.write.query('SELECT count(*)::int AS n FROM outbox')).rows[0].n;
    const before = await outbox();
    const pruned = await prune({ writeDb: f.writeDb, readDb: f.readDb, keepMs: 3_600_000 });
    assert.equal(pruned.outbox, 0);
    assert.equal(await outbox(), before);
    const [status] = (await projectionStatuses(f.writeDb, f.readDb)).projections;
    assert.ok(Number(status!.last_applied_event_id) > high, JSON.stringify(status));
  });
});
