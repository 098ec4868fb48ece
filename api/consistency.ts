import type { Subscriber } from 'pg-listen';
import { createListener } from '../lib/listen.js';
import type { Pool } from '../db/pool.js';
import { resolvedIds } from '../db/dead-letters.js';
import type { Logger } from '../lib/logger.js';
import { APPLIED_CHANNEL } from '../lib/channels.js';

const FALLBACK_POLL_MS = 200;
const PAGE = 1000;

interface Waiter {
  token: number;
  resolve: (applied: boolean) => void;
  timer: NodeJS.Timeout;
}

/**
 * Read-your-writes. A token is the outbox id N of a write; a request that
 * sends it back waits until the read model holds that write and every write
 * committed before it was issued: every outbox id < N that was committed by
 * then is applied (or parked by an operator), and so is N. So a token covers
 * all earlier writes of the same client whatever their ids' fate (a client's
 * earlier write committed before its later one began, and so drew a lower
 * id), and an order's cancellation is never shown without the order.
 *
 * How it is checked, cheaply, by one check shared by all waiting requests:
 * a frontier F per web process, with the invariant "F is an id that was
 * visible in write_db at some past check τ, and every id ≤ F visible at τ
 * was resolved". Each check reads the ids above F (up to the largest token
 * waited for) from write_db, then which of them are resolved from read_db,
 * and moves F up to the last id before the first unresolved one. An id below
 * F that was invisible at τ belongs to a transaction that drew it before F
 * was drawn, so before τ: the writes its client made earlier had committed
 * by τ and were checked. A token N is satisfied when N ≤ F, N itself is
 * applied or parked (it may have been invisible at τ), and no dead letter
 * waiting for a decision is ≤ N. F never moves past an id that is not
 * visible, so a forged far-future token cannot move it. F starts at the
 * reconciler's watermark (every id ≤ it is resolved and settled).
 *
 * The check runs when the projector signals a committed batch (LISTEN on
 * read_db) and at most every 200 ms otherwise.
 */
export class ConsistencyWaiter {
  private waiters = new Set<Waiter>();
  private subscriber: Subscriber | undefined;
  private poll: NodeJS.Timeout | undefined;
  private checking: Promise<void> | undefined;
  private again = false;
  private frontier = 0;

  constructor(
    private readonly writePool: Pool,
    private readonly readPool: Pool,
    private readonly readUrl: string,
    private readonly log: Logger,
  ) {}

  async start(): Promise<void> {
    this.subscriber = createListener(this.readUrl, 'web-consistency', this.log, 10_000);
    this.subscriber.notifications.on(APPLIED_CHANNEL, () => this.check());
    try {
      await this.subscriber.connect();
      await this.subscriber.listenTo(APPLIED_CHANNEL);
    } catch (err) {
      // The fallback poll still answers waiters; pg-listen keeps trying to reconnect.
      this.log.warn({ err: (err as Error).message }, 'consistency LISTEN unavailable; polling');
    }
  }

  async stop(): Promise<void> {
    for (const w of this.waiters) {
      clearTimeout(w.timer);
      w.resolve(false);
    }
    this.waiters.clear();
    clearInterval(this.poll);
    await this.subscriber?.close().catch(() => undefined);
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
      this.poll ??= setInterval(() => this.check(), FALLBACK_POLL_MS);
      this.check();
    });
  }

  private check(): void {
    if (this.waiters.size === 0) return;
    if (this.checking) {
      this.again = true;
      return;
    }
    this.checking = this.runCheck().finally(() => {
      this.checking = undefined;
      if (this.again) {
        this.again = false;
        this.check();
      }
    });
  }

  private async runCheck(): Promise<void> {
    const tokens = [...new Set([...this.waiters].map((w) => w.token))];
    let satisfied: (token: number) => boolean;
    try {
      await this.advance(Math.max(...tokens));
      const { rows } = await this.readPool.query<{ dead: string | null }>(
        'SELECT min(event_id::bigint)::text AS dead FROM dead_letters WHERE parked_at IS NULL',
      );
      const dead = rows[0]?.dead == null ? Infinity : Number(rows[0].dead);
      const own = await resolvedIds(this.readPool, tokens.filter((t) => t <= this.frontier && t < dead));
      satisfied = (t) => own.has(t);
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'consistency check failed');
      return;
    }
    for (const w of [...this.waiters]) {
      if (!satisfied(w.token)) continue;
      clearTimeout(w.timer);
      this.waiters.delete(w);
      w.resolve(true);
    }
    if (this.waiters.size === 0) {
      clearInterval(this.poll);
      this.poll = undefined;
    }
  }

  /** Move the frontier up as far as every visible id is resolved, up to `upTo`. */
  private async advance(upTo: number): Promise<void> {
    if (this.frontier === 0) {
      const { rows } = await this.readPool.query<{ w: string }>('SELECT last_event_id::text AS w FROM reconciler_watermark');
      this.frontier = Math.max(this.frontier, Number(rows[0]?.w ?? 0));
    }
    while (this.frontier < upTo) {
      const { rows } = await this.writePool.query<{ id: number }>('SELECT id FROM outbox WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3', [this.frontier, upTo, PAGE]);
      if (rows.length === 0) return;
      const resolved = await resolvedIds(this.readPool, rows.map((r) => r.id));
      for (const { id } of rows) {
        if (!resolved.has(id)) return;
        this.frontier = id;
      }
      if (rows.length < PAGE) return;
    }
  }
}
