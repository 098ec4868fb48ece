import client from 'prom-client';
import type { RedisClient } from '../lib/redis.js';
import type { Db } from '../db/pool.js';
import type { EventQueues } from '../lib/queue.js';
import { readPushedMetrics } from '../lib/metrics-push.js';
import { outboxBacklog } from '../db/outbox.js';
import { countDeadLetters } from '../db/dead-letters.js';
import { within } from '../lib/timeout.js';
import { z } from 'zod';
import { sql } from '../db/pool.js';
import { PROJECTIONS } from '../workers/projector/projections/index.js';
import { IDLE, isRebuilding, projectionStatuses, type ProjectionStatus, type StatusReport } from '../db/status.js';

export interface ApiMetrics {
  registry: client.Registry;
  httpDuration: client.Histogram<'method' | 'route' | 'status'>;
  ordersChanged: client.Counter<'event' | 'replayed'>;
  orderBatchSize: client.Histogram;
}

export interface ScrapeSources {
  writeDb: Db;
  readDb: Db;
  queues: EventQueues;
  redis: RedisClient;
}

/** Each source gets this long at scrape time; a service that is away leaves its series out instead of holding /metrics. */
const SCRAPE_TIMEOUT_MS = 1000;

/** The web process's own metrics, plus gauges read at scrape time from write_db and Redis. */
export function createApiMetrics(sources?: ScrapeSources, registry = new client.Registry()): ApiMetrics {
  client.collectDefaultMetrics({ register: registry });
  if (sources) {
    new client.Gauge({
      name: 'outbox_unpublished_events',
      help: 'Outbox rows not yet relayed to the queue',
      registers: [registry],
      async collect() {
        // write_db unreachable: /readyz says so; keep serving the other series.
        const backlog = await within(outboxBacklog(sources.writeDb), SCRAPE_TIMEOUT_MS);
        if (backlog) {
          this.set(backlog.unpublished);
          oldest.set(backlog.oldestAgeSeconds);
        }
      },
    });
    const oldest = new client.Gauge({
      name: 'outbox_oldest_unpublished_age_seconds',
      help: 'Age of the oldest unpublished outbox row (0 when none)',
      registers: [registry],
    });
    new client.Gauge({
      name: 'queue_jobs',
      help: 'BullMQ jobs by state',
      labelNames: ['state'],
      registers: [registry],
      async collect() {
        // BullMQ waits for a connection that is not ready: ask only when it is.
        if (sources.redis.status !== 'ready') return;
        const counts = await within(sources.queues.counts('waiting', 'active', 'delayed', 'failed', 'completed', 'prioritized'), SCRAPE_TIMEOUT_MS);
        for (const [state, n] of Object.entries(counts ?? {})) this.set({ state }, n);
      },
    });
    new client.Gauge({
      name: 'read_model_rows',
      help: "Rows in each projection's view (PostgreSQL's estimate, kept by ANALYZE and autovacuum)",
      labelNames: ['view'],
      registers: [registry],
      async collect() {
        const rows = await within(
          sources.readDb.any(sql.type(z.object({ view: z.string(), n: z.number() }))`
            SELECT relname AS view, greatest(reltuples, 0)::float8 AS n FROM pg_class
             WHERE relkind = 'r' AND relname = ANY (${sql.array(PROJECTIONS.map((p) => p.table), 'text')})`),
          SCRAPE_TIMEOUT_MS,
        );
        for (const r of rows ?? []) this.set({ view: r.view }, r.n);
      },
    });
    new client.Gauge({
      name: 'dead_letter_events',
      help: 'Events that failed for good, by state: failed (waiting for an operator: replay or park) or parked',
      labelNames: ['state'],
      registers: [registry],
      async collect() {
        const counts = await within(countDeadLetters(sources.readDb), SCRAPE_TIMEOUT_MS);
        if (counts) {
          this.set({ state: 'failed' }, counts.failed);
          this.set({ state: 'parked' }, counts.parked);
        }
      },
    });
    projectionGauges(sources, registry);
  }
  return {
    registry,
    httpDuration: new client.Histogram({
      name: 'http_request_duration_seconds',
      help: 'HTTP request duration by route template and status',
      labelNames: ['method', 'route', 'status'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry],
    }),
    ordersChanged: new client.Counter({
      name: 'orders_changes_total',
      help: 'Order changes written (created, paid, shipped, cancelled), and whether an Idempotency-Key replayed them',
      labelNames: ['event', 'replayed'],
      registers: [registry],
    }),
    orderBatchSize: new client.Histogram({
      name: 'order_batch_size',
      help: 'Orders placed per write_db transaction by POST /orders (group commit)',
      buckets: [1, 2, 4, 8, 16, 32, 64, 128],
      registers: [registry],
    }),
  };
}

/**
 * /metrics as scrapers should get it: one snapshot, built at most once a
 * second and shared by every request meanwhile (each build reads the pushed
 * registries from Redis, merges them and asks write_db and Redis for gauges:
 * thousands of concurrent scrapes must not each pay that).
 */
export function metricsSnapshot(metrics: ApiMetrics, redis: RedisClient, prefix: string, maxAgeMs = 1000): () => Promise<string> {
  let last: { at: number; text: Promise<string> } | undefined;
  return () => {
    const now = Date.now();
    if (!last || now - last.at >= maxAgeMs) {
      const text = renderMetrics(metrics, redis, prefix);
      last = { at: now, text };
      // A failed build is not kept: the next scrape tries again.
      text.catch(() => {
        if (last?.text === text) last = undefined;
      });
    }
    return last.text;
  };
}

/** Prometheus text: this process's metrics summed with those relays and workers pushed to Redis. */
export async function renderMetrics(metrics: ApiMetrics, redis: RedisClient, prefix: string): Promise<string> {
  const local = await metrics.registry.getMetricsAsJSON();
  // Redis down: relays' and workers' series are missing until it is back.
  const pushed = redis.status === 'ready' ? ((await within(readPushedMetrics(redis, prefix), SCRAPE_TIMEOUT_MS)) ?? []) : [];
  return client.AggregatorRegistry.aggregate([local, ...pushed]).metrics();
}

/**
 * Every projection's status (db/status.ts), labelled by projection. The
 * gauges of one scrape share one read (each gauge's collect runs before its
 * values are read, all at once). Position and lag are the pipeline's, alike
 * for every projection (one transaction applies an event to all); a series
 * is left out while what it needs is unavailable.
 */
function projectionGauges(sources: ScrapeSources, registry: client.Registry): void {
  let shared: { at: number; report: Promise<StatusReport | undefined> } | undefined;
  const read = () => {
    if (!shared || Date.now() - shared.at > 500) shared = { at: Date.now(), report: within(projectionStatuses(sources.writeDb, sources.readDb), SCRAPE_TIMEOUT_MS) };
    return shared.report;
  };
  const gauge = (name: string, help: string, value: (p: ProjectionStatus) => number | null) =>
    new client.Gauge({
      name,
      help,
      labelNames: ['projection'],
      registers: [registry],
      async collect() {
        this.reset();
        for (const p of (await read())?.projections ?? []) {
          const v = value(p);
          if (v !== null) this.set({ projection: p.projection }, v);
        }
      },
    });
  const time = (iso: string | null | undefined) => (iso ? Date.parse(iso) / 1000 : null);
  gauge('projection_rows', "Rows in the projection's view (a count; PostgreSQL's estimate past a million)", (p) => p.rows);
  gauge('projection_last_applied_event_id', 'Highest event id applied to the projection', (p) => (p.last_applied_event_id === null ? null : Number(p.last_applied_event_id)));
  gauge('projection_last_applied_timestamp_seconds', 'When that event was applied (Unix time)', (p) => time(p.last_applied_at));
  gauge('projection_behind_events', 'Outbox events above the last applied one', (p) => p.events_behind);
  gauge('projection_behind_seconds', 'Age of the oldest outbox event above the last applied one (0 when none)', (p) => p.seconds_behind);
  gauge('projection_verify_ok', 'The last npm run verify: 1 when it found everything equal, else 0', (p) => (p.last_verify ? Number(p.last_verify.ok) : null));
  gauge('projection_verify_mismatches', "Differences the last verify found in the projection's view", (p) => p.last_verify?.mismatches ?? null);
  gauge('projection_verify_timestamp_seconds', 'When the last verify finished (Unix time)', (p) => time(p.last_verify?.at));
  gauge('projection_rebuilding', '1 while a rebuild of the projection runs', (p) => Number(isRebuilding({ ...IDLE, ...p.rebuild })));
}
