import { listen, type Listener } from '../lib/listen.js';
import { Loop } from '../lib/loop.js';
import type { Config } from '../lib/config.js';
import type { Db } from '../db/pool.js';
import { z } from 'zod';
import { sql } from '../db/pool.js';
import { lowestFailed, resolvedIds } from '../db/dead-letters.js';

const idRow = z.object({ id: z.number() });
import type { Logger } from '../lib/logger.js';
import { CHANNELS } from '../lib/contract.js';

const PAGE = 1000;

interface Waiter {
  token: number;
  resolve: (applied: boolean) => void;
  timer: NodeJS.Timeout;
}

/**
 * Read-your-writes. A token is the outbox id N of a write; a request that
 * sends it back waits until the read model holds that write and every write
 * that had committed by the time the request is checked and has a lower id:
 * those are applied (or parked by an operator), and so is N. A client's
 * earlier writes committed before its later one began, so they drew lower
 * ids and are among them: a token covers all earlier writes of its client,
 * whatever their fate on the way, and an order's cancellation is never shown
 * without the order. Writes still in flight when a request is checked cannot
 * be its client's earlier writes, and are not waited for.
 *
 * How it is checked cheaply, by one check shared by all waiting requests:
 * a frontier F per web process and the set G of ids below F that were not
 * visible in write_db when F passed them (in flight then, or rolled back).
 * Invariant: every id ≤ F that is not in G was visible, and resolved, at
 * some check. Each check
 *  1. drops from G the ids at or below the reconciler's watermark (every id
 *     there is resolved or never existed), and F starts there;
 *  2. looks again at the ids of G: one that has become visible and is
 *     resolved leaves G; one visible and not resolved blocks every token above it;
 *  3. reads the visible ids above F (up to the largest token waited for) and
 *     which of them are resolved, and moves F up to the last one before the
 *     first unresolved id, adding the invisible ids it passes to G.
 * A token N is satisfied when N ≤ F, no visible unresolved id of G is below
 * N, N itself is applied or parked, and no dead letter waiting for a decision
 * is ≤ N. F never moves past an id that is not visible, so a forged
 * far-future token cannot move it.
 *
 * The check runs when the projector signals a committed batch (LISTEN on
 * read_db) and at least every CONSISTENCY_POLL_MS while requests wait.
 */
export class ConsistencyWaiter {
  private waiters = new Set<Waiter>();
  private listener: Listener | undefined;
  private readonly loop: Loop;
  private frontier = 0;
  private gaps = new Set<number>();

  constructor(
    private readonly writeDb: Db,
    private readonly readDb: Db,
    private readonly config: Pick<Config, 'READ_DATABASE_URL' | 'LISTEN_CHECK_MS' | 'CONSISTENCY_POLL_MS'>,
    private readonly log: Logger,
  ) {
    // One check at a time for every waiting request: a notify() during a check runs the next right after it.
    this.loop = new Loop({
      name: 'consistency',
      log,
      intervalMs: config.CONSISTENCY_POLL_MS,
      work: async () => {
        if (this.waiters.size > 0) await this.check();
        return false;
      },
      onError: (err) => this.log.warn({ err: (err as Error).message }, 'consistency check failed'),
    });
  }

  async start(): Promise<void> {
    // Until it connects (and while it reconnects) the poll still answers waiters.
    this.listener = listen({
      url: this.config.READ_DATABASE_URL,
      name: 'web-consistency',
      channel: CHANNELS.applied,
      log: this.log,
      checkMs: this.config.LISTEN_CHECK_MS,
      onNotify: () => this.loop.notify(),
    });
    this.loop.start();
  }

  async stop(): Promise<void> {
    for (const w of this.waiters) {
      clearTimeout(w.timer);
      w.resolve(false);
    }
    this.waiters.clear();
    await this.loop.stop();
    await this.listener?.close();
  }

  /** Resolves true once the token's write and every earlier one are in the read model, false after timeoutMs. */
  wait(token: number, timeoutMs: number): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      const waiter: Waiter = {
        token,
        resolve,
        timer: setTimeout(() => {
          this.waiters.delete(waiter);
          resolve(false);
        }, timeoutMs),
      };
      this.waiters.add(waiter);
      this.loop.notify();
    });
  }

  private async check(): Promise<void> {
    const tokens = [...new Set([...this.waiters].map((w) => w.token))];
    const blockedFrom = await this.advance(Math.max(...tokens));
    const dead = await lowestFailed(this.readDb);
    const own = await resolvedIds(this.readDb, tokens.filter((t) => t <= this.frontier && t < dead && t < blockedFrom));
    for (const w of [...this.waiters]) {
      if (!own.has(w.token)) continue;
      clearTimeout(w.timer);
      this.waiters.delete(w);
      w.resolve(true);
    }
  }

  /**
   * Steps 1–3 above, up to `upTo`. Returns the lowest id of G that is
   * visible and not resolved (Infinity when none): no token above it is satisfied.
   */
  private async advance(upTo: number): Promise<number> {
    // Every id at or below the watermark, or the retention floor (a rebuild may raise it past the watermark), is resolved or never was.
    const watermark = await this.readDb.oneFirst(sql.type(z.object({ w: z.number() }))`
      SELECT greatest((SELECT last_event_id FROM reconciler_watermark), (SELECT event_id FROM processed_floor)) AS w`);
    this.frontier = Math.max(this.frontier, watermark);
    for (const g of this.gaps) if (g <= watermark) this.gaps.delete(g);

    let blockedFrom = Infinity;
    if (this.gaps.size > 0) {
      const visible = await this.writeDb.anyFirst(sql.type(idRow)`SELECT id FROM outbox WHERE id = ANY (${sql.array([...this.gaps], 'int4')})`);
      const resolved = await resolvedIds(this.readDb, visible);
      for (const id of visible) {
        if (resolved.has(id)) this.gaps.delete(id);
        else blockedFrom = Math.min(blockedFrom, id);
      }
    }

    while (this.frontier < upTo) {
      const ids = await this.writeDb.anyFirst(sql.type(idRow)`SELECT id FROM outbox WHERE id > ${this.frontier} AND id <= ${upTo} ORDER BY id LIMIT ${PAGE}`);
      if (ids.length === 0) break;
      const resolved = await resolvedIds(this.readDb, ids);
      for (const id of ids) {
        if (!resolved.has(id)) return blockedFrom;
        for (let g = this.frontier + 1; g < id; g++) this.gaps.add(g);
        this.frontier = id;
      }
      if (ids.length < PAGE) break;
    }
    return blockedFrom;
  }
}
