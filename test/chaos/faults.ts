import { sleep } from '../support/pipeline.js';
import type { ChaosSystem } from './system.js';
import type { FaultFlags, PoisonKind } from './model.js';
import type { Role } from './supervisor.js';

/** How long a heal keeps retrying (PostgreSQL may be down while read_db is to be unblocked). */
const HEAL_DEADLINE_MS = 60_000;

interface ActiveFault {
  name: string;
  flag: keyof FaultFlags | undefined;
  heal: () => Promise<void>;
  timer: NodeJS.Timeout | undefined;
  healing: Promise<void> | undefined;
}

/**
 * Faults that last: each is started by a command, which returns at once so
 * that traffic runs during the fault, and healed in the background after its
 * duration, or all at once by healAll() at the end of the run. Heals retry
 * until they succeed, because faults overlap (read_db cannot be unblocked
 * while PostgreSQL is stopped).
 */
export class FaultBook {
  private readonly active = new Set<ActiveFault>();

  constructor(private readonly sys: ChaosSystem) {}

  private get flags(): FaultFlags {
    return this.sys.model.faults;
  }

  /** Register a started fault; it heals after `ms` unless healAll() comes first. */
  private healAfter(name: string, flag: keyof FaultFlags | undefined, ms: number, heal: () => Promise<void>): void {
    const f: ActiveFault = { name, flag, heal, timer: undefined, healing: undefined };
    f.timer = setTimeout(() => void this.runHeal(f), ms);
    this.active.add(f);
  }

  private runHeal(f: ActiveFault): Promise<void> {
    clearTimeout(f.timer);
    f.healing ??= (async () => {
      const deadline = Date.now() + HEAL_DEADLINE_MS;
      for (let attempt = 1; ; attempt++) {
        try {
          await f.heal();
          break;
        } catch (err) {
          if (Date.now() > deadline) {
            this.sys.journal.violation('harness', `could not heal ${f.name} in ${HEAL_DEADLINE_MS} ms: ${(err as Error).message}`);
            break;
          }
          await sleep(Math.min(100 * attempt, 1000));
        }
      }
      if (f.flag) this.flags[f.flag] = false;
      this.active.delete(f);
      this.sys.journal.note(`healed: ${f.name}`);
    })();
    return f.healing;
  }

  /** Heal everything now, PostgreSQL first (the other heals need it). */
  async healAll(): Promise<void> {
    const all = [...this.active];
    const pgFirst = all.filter((f) => f.flag === 'pgDown');
    await Promise.all(pgFirst.map((f) => this.runHeal(f)));
    await Promise.all(all.map((f) => this.runHeal(f)));
  }

  // --- PostgreSQL -------------------------------------------------------

  /**
   * pg_ctl stop -m fast (every session dropped, a checkpoint) or -m immediate
   * (a crash: recovery at start, commits not yet on disk undone); start again after `ms`.
   */
  async stopPostgres(ms: number, mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
    this.flags.pgDown = true;
    this.sys.journal.note(`FAULT PostgreSQL stop (${mode}) for ${ms} ms`);
    await this.sys.infra.pg.stop(mode);
    this.healAfter('PostgreSQL stopped', 'pgDown', ms, () => this.sys.infra.pg.start());
  }

  /** read_db alone refuses connections and loses its sessions; write_db carries on. */
  async blockReadDb(ms: number): Promise<void> {
    const db = this.sys.readDb;
    this.flags.readDbBlocked = true;
    this.sys.journal.note(`FAULT read_db unavailable for ${ms} ms`);
    await this.sys.infra.pg.query(`ALTER DATABASE ${db} ALLOW_CONNECTIONS false`);
    await this.sys.infra.pg.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()', [db]);
    this.healAfter('read_db unavailable', 'readDbBlocked', ms, async () => {
      await this.sys.infra.pg.query(`ALTER DATABASE ${db} ALLOW_CONNECTIONS true`);
    });
  }

  /**
   * Commits hang: a synchronous standby that never comes makes every commit
   * that wrote something wait for it. Reads still answer.
   */
  async stallCommits(ms: number): Promise<void> {
    this.flags.commitStall = true;
    this.sys.journal.note(`FAULT commits stalled for ${ms} ms`);
    await this.sys.infra.pg.query(`ALTER SYSTEM SET synchronous_standby_names = 'nobody'`);
    await this.sys.infra.pg.query('SELECT pg_reload_conf()');
    this.healAfter('commits stalled', 'commitStall', ms, async () => {
      await this.sys.infra.pg.query('ALTER SYSTEM RESET synchronous_standby_names');
      await this.sys.infra.pg.query('SELECT pg_reload_conf()');
    });
  }

  /** Drop every LISTEN connection (relay's outbox wake-ups); pg-listen must reconnect and catch up. */
  async terminateListeners(): Promise<number> {
    const { rowCount } = await this.sys.infra.pg.query(
      `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE '%listen%' AND datname IN ($1, $2)`,
      [this.sys.writeDb, this.sys.readDb],
    );
    this.sys.journal.note(`FAULT terminated ${rowCount ?? 0} LISTEN session(s)`);
    return rowCount ?? 0;
  }

  // --- Redis ------------------------------------------------------------

  async flushRedis(): Promise<void> {
    this.sys.journal.note('FAULT Redis FLUSHALL');
    await this.sys.infra.redis.flushAll();
  }

  /** kill -9 of redis-server; it comes back empty after `ms`. */
  async killRedis(ms: number): Promise<void> {
    this.flags.redisDown = true;
    this.sys.journal.note(`FAULT Redis kill -9, restart empty after ${ms} ms`);
    await this.sys.infra.redis.kill9();
    this.healAfter('Redis down', 'redisDown', ms, () => this.sys.infra.redis.start());
  }

  // --- processes --------------------------------------------------------

  async kill9(role: Role, pick: number, restartMs: number): Promise<string | undefined> {
    const targets = this.sys.supervisor.byRole(role).filter((s) => s.targetable);
    const slot = targets[pick % Math.max(1, targets.length)];
    if (!slot) return undefined;
    this.sys.journal.note(`FAULT kill -9 ${slot.name}, restart after ${restartMs} ms`);
    await this.sys.supervisor.kill9(slot, restartMs);
    return slot.name;
  }

  sigterm(role: Role, pick: number, restartMs: number): string | undefined {
    const targets = this.sys.supervisor.byRole(role).filter((s) => s.booted);
    const slot = targets[pick % Math.max(1, targets.length)];
    if (!slot) return undefined;
    this.sys.journal.note(`FAULT SIGTERM ${slot.name}, restart ${restartMs} ms after it exits`);
    this.sys.supervisor.sigterm(slot, restartMs);
    return slot.name;
  }

  // --- poison -----------------------------------------------------------

  /**
   * An outbox row no worker can ever apply, written straight into write_db:
   * - malformed: an order.created whose payload fails validation;
   * - overflow: a well-formed order.created whose two items of one product
   *   (an id write_db does not have, so SPEC §3 never counts it) add up past
   *   product_sales_view.total_quantity_sold (INTEGER): it fails in read_db.
   * Retried while PostgreSQL is down or commits stall: the row must exist.
   */
  async insertPoison(kind: PoisonKind, n: number): Promise<number> {
    const payload =
      kind === 'malformed'
        ? { id: -1 }
        : {
            id: 1_000_000_000 + n,
            customer_id: 1 + (n % 20),
            total: '2.00',
            created_at: '2026-01-01T00:00:00.000000Z',
            status: 'pending',
            items: [1, 2].map((i) => ({ id: 1_000_000_000 + 2 * n + i, product_id: 2_000_000_000 + n, category: 'poison', quantity: 2_147_483_647, price: '0.00', line_total: '1.00' })),
          };
    const deadline = Date.now() + HEAL_DEADLINE_MS;
    for (;;) {
      try {
        const { rows } = await this.sys.infra.pg.query<{ id: number }>(`INSERT INTO outbox (topic, payload) VALUES ('order.created', $1) RETURNING id`, [JSON.stringify(payload)], this.sys.writeDb);
        const id = rows[0]!.id;
        this.sys.journal.note(`FAULT poison event ${id} (${kind})`);
        return id;
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await sleep(250);
      }
    }
  }
}
