import os from 'node:os';
import client from 'prom-client';
import type { RedisClient } from './redis.js';
import type { Logger } from './logger.js';

/**
 * Relays and workers have no HTTP port (Heroku gives one only to `web`), so
 * each pushes its metrics as JSON into one Redis hash every 2 s; the
 * web process serves them, summed with its own, on /metrics. Entries of
 * processes that stopped pushing are dropped after STALE_MS.
 */
const PUSH_MS = 2000;
const STALE_MS = 15_000;

export const metricsKey = (prefix: string) => `${prefix}:metrics`;

export function startMetricsPush(redis: RedisClient, prefix: string, proc: string, registry: client.Registry, log: Logger): () => Promise<void> {
  const field = `${proc}:${os.hostname()}:${process.pid}`;
  const push = async () => {
    try {
      const metrics = await registry.getMetricsAsJSON();
      await redis.hset(metricsKey(prefix), field, JSON.stringify({ at: Date.now(), metrics }));
    } catch (err) {
      log.debug({ err: (err as Error).message }, 'metrics push failed');
    }
  };
  void push();
  const timer = setInterval(() => void push(), PUSH_MS);
  timer.unref();
  // Stopping removes this process's entry; awaited, so it is sent before the caller disconnects.
  return async () => {
    clearInterval(timer);
    await redis.hdel(metricsKey(prefix), field).catch(() => undefined);
  };
}

/** The pushed metrics of live processes; stale entries are removed. */
export async function readPushedMetrics(redis: RedisClient, prefix: string): Promise<client.MetricObjectWithValues<client.MetricValue<string>>[][]> {
  const all = await redis.hgetall(metricsKey(prefix));
  const out: client.MetricObjectWithValues<client.MetricValue<string>>[][] = [];
  const stale: string[] = [];
  for (const [field, text] of Object.entries(all)) {
    try {
      const entry = JSON.parse(text) as { at: number; metrics: client.MetricObjectWithValues<client.MetricValue<string>>[] };
      if (Date.now() - entry.at > STALE_MS) stale.push(field);
      else out.push(entry.metrics);
    } catch {
      stale.push(field);
    }
  }
  if (stale.length > 0) await redis.hdel(metricsKey(prefix), ...stale);
  return out;
}

/** A relay or worker as its last push shows it: the push is its heartbeat. */
export interface Heartbeat {
  proc: string;
  host: string;
  pid: number;
  /** When it last pushed (ms since the epoch). */
  at: number;
  /** Pushed within STALE_MS: it is alive. */
  alive: boolean;
}

/** Every process with an entry in the metrics hash, the stale ones included until readPushedMetrics removes them. */
export async function readHeartbeats(redis: RedisClient, prefix: string): Promise<Heartbeat[]> {
  const out: Heartbeat[] = [];
  for (const [field, text] of Object.entries(await redis.hgetall(metricsKey(prefix)))) {
    const [proc = '?', host = '?', pid = '0'] = field.split(':');
    let at = 0;
    try {
      at = Number((JSON.parse(text) as { at?: unknown }).at) || 0;
    } catch {
      // unreadable: shown as never heard from
    }
    out.push({ proc, host, pid: Number(pid), at, alive: Date.now() - at <= STALE_MS });
  }
  return out.sort((a, b) => a.proc.localeCompare(b.proc) || a.host.localeCompare(b.host) || a.pid - b.pid);
}
