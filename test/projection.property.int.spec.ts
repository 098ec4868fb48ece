import assert from 'node:assert/strict';
import fc from 'fast-check';
import pg from 'pg';
import { createTestEnv } from './support/env.js';
import { applyEvents, type ProjectionEvent } from '../workers/projector/apply.js';
import { orderEvent } from '../workers/projector/events.js';
import { createDb, type Db } from '../db/pool.js';
import { testLog } from './support/env.js';

const VIEWS = ['product_sales_view', 'category_metrics_view', 'customer_ltv_view', 'hourly_sales_view'];

async function dump(pool: pg.Pool): Promise<string> {
  const parts: string[] = [];
  for (const v of VIEWS) {
    const { rows } = await pool.query(`SELECT * FROM ${v} ORDER BY 1`);
    parts.push(JSON.stringify(rows));
  }
  return parts.join('\n');
}

async function reset(pool: pg.Pool): Promise<void> {
  await pool.query(`TRUNCATE ${VIEWS.join(', ')}, processed_events`);
}

const money = fc.integer({ min: 0, max: 99_999 }).map((c) => `${Math.floor(c / 100)}.${String(c % 100).padStart(2, '0')}`);
const item = fc.record({
  product_id: fc.integer({ min: 1, max: 5 }),
  category: fc.constantFrom('a', 'b', 'c'),
  quantity: fc.integer({ min: 1, max: 9 }),
  price: money,
});
const orderArb = fc.record({
  customer_id: fc.integer({ min: 1, max: 4 }),
  hour: fc.integer({ min: 0, max: 3 }),
  items: fc.array(item, { minLength: 1, maxLength: 4 }),
  cancelled: fc.boolean(),
});

/** Build outbox-like events the way place_order and transition_order do (line_total = quantity × price, in integer cents). */
type GenOrder = typeof orderArb extends fc.Arbitrary<infer T> ? T : never;

function eventsOf(orders: GenOrder[]): ProjectionEvent[] {
  const events: ProjectionEvent[] = [];
  let id = 0;
  orders.forEach((o, n) => {
    const items = o.items.map((i) => {
      const cents = BigInt(i.price.replace('.', '')) * BigInt(i.quantity);
      return { ...i, line_total: `${cents / 100n}.${String(cents % 100n).padStart(2, '0')}` };
    });
    const totalCents = items.reduce((s, i) => s + BigInt(i.line_total.replace('.', '')), 0n);
    const payload = {
      id: n + 1,
      customer_id: o.customer_id,
      total: `${totalCents / 100n}.${String(totalCents % 100n).padStart(2, '0')}`,
      created_at: `2026-11-25T0${o.hour}:1${n % 10}:00.000000Z`,
      items,
    };
    events.push({ event_id: String(++id), event: orderEvent('order.created', payload) });
    if (o.cancelled) events.push({ event_id: String(++id), event: orderEvent('order.cancelled', payload) });
  });
  return events;
}

describe('projection (property, real read_db): any arrival order, batching and duplication gives the same views', function () {
  this.timeout(120_000);
  let pool: pg.Pool;
  let db: Db;

  before(async () => {
    const env = await createTestEnv();
    pool = new pg.Pool({ connectionString: env.config.READ_DATABASE_URL, max: 4 });
    db = createDb(env.config.READ_DATABASE_URL, { name: 'test', max: 6, log: testLog });
  });
  after(async () => {
    await pool.end();
    await db.end();
  });

  it('holds for 25 random histories', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(orderArb, { minLength: 1, maxLength: 12 }),
        fc.infiniteStream(fc.nat()),
        fc.integer({ min: 1, max: 6 }),
        async (orders, randoms, batchSize) => {
          const events = eventsOf(orders);
          await reset(pool);
          await applyEvents(db, events);
          const once = await dump(pool);

          await reset(pool);
          // Shuffle, duplicate some deliveries, split into batches, and apply batches concurrently.
          const it = randoms[Symbol.iterator]();
          const next = () => it.next().value as number;
          const deliveries = [...events, ...events.filter(() => next() % 3 === 0)];
          for (let i = deliveries.length - 1; i > 0; i--) {
            const j = next() % (i + 1);
            [deliveries[i], deliveries[j]] = [deliveries[j]!, deliveries[i]!];
          }
          const batches: ProjectionEvent[][] = [];
          for (let i = 0; i < deliveries.length; i += batchSize) batches.push(deliveries.slice(i, i + batchSize));
          await Promise.all(batches.map((b) => applyEvents(db, b)));
          assert.equal(await dump(pool), once);
          const { rows } = await pool.query<{ n: string }>('SELECT count(*)::text AS n FROM processed_events');
          assert.equal(Number(rows[0]!.n), events.length);
        },
      ),
      { numRuns: 25 },
    );
  });
});
