import pg from 'pg';
import { migrate } from '../../db/migrate.js';
import { createLogger } from '../../lib/logger.js';
import { PrivatePostgres } from '../support/private-pg.js';
import { freePort } from '../support/processes.js';
import { ChaosRedis } from './redis.js';
import { Journal } from './journal.js';
import { Supervisor, type Role, type Slot } from './supervisor.js';
import { FaultBook } from './faults.js';
import { CATALOGUE, newModel, type Model } from './model.js';

const TEMPLATE = { write: 'chaos_template_w', read: 'chaos_template_r' } as const;
export const QUEUE_NAME = 'order-events';

/**
 * Environment every Procfile process of a run gets, beyond the URLs, prefix
 * and port. Short reconcile and stall intervals so a 1-minute run sees lost
 * jobs come back. JOB_BACKOFF_MS is lowered (default 1000 ms: eight attempts
 * span about two minutes) so that a poison event settles in the failed set
 * within ~20 s (150 ms × (2^7 − 1)), while the retries still outlast the
 * longest outage the faults make (PostgreSQL stopped 5 s, then read_db
 * blocked 5 s).
 */
export const DEFAULT_ENV: Readonly<Record<string, string>> = {
  RECONCILE_INTERVAL_MS: '500',
  RECONCILE_GRACE_MS: '1500',
  STALLED_INTERVAL_MS: '2000',
  JOB_BACKOFF_MS: '150',
};

export interface SystemOptions {
  scale: Record<Role, number>;
  /** Extra or overriding environment for every process (the --env option). */
  env: Record<string, string>;
  /** Where the timeline goes as it happens (main.ts prints it with --verbose). */
  echo?: (line: string) => void;
}

/**
 * What outlives a run: the private PostgreSQL cluster (with migrated template
 * databases) and the private redis-server. Created once per mocha spec or
 * per `main.ts` invocation.
 */
export class Infra {
  private runs = 0;
  private constructor(
    readonly pg: PrivatePostgres,
    readonly redis: ChaosRedis,
  ) {}

  static async create(): Promise<Infra> {
    const db = await PrivatePostgres.create({ maxConnections: 300 });
    let redis: ChaosRedis | undefined;
    try {
      redis = await ChaosRedis.create();
      const log = createLogger('silent', 'chaos');
      await migrate(db.url(TEMPLATE.write), 'write', log);
      await migrate(db.url(TEMPLATE.read), 'read', log);
      return new Infra(db, redis);
    } catch (err) {
      await redis?.destroy();
      await db.destroy();
      throw err;
    }
  }

  nextRun(): number {
    return ++this.runs;
  }

  async destroy(): Promise<void> {
    await this.redis.destroy();
    await this.pg.destroy();
  }

  /** For 'exit' handlers after an interrupted run. */
  destroySync(): void {
    this.redis.destroySync();
    this.pg.destroySync();
  }
}

/**
 * The system under test for one run: fresh write_db and read_db (cloned from
 * the templates), an empty Redis, the Procfile processes under a supervisor,
 * and the fault book. The fast-check model runs commands against this.
 */
export class ChaosSystem {
  readonly journal: Journal;
  readonly faults: FaultBook;
  /** QUEUE_PARTITIONS of the run's processes: the end checks look at every partition's queue. */
  partitions = 1;
  supervisor!: Supervisor;
  model!: Model;
  private pools: pg.Pool[] = [];

  private constructor(
    readonly infra: Infra,
    readonly run: number,
    readonly writeDb: string,
    readonly readDb: string,
    readonly prefix: string,
    echo: ((line: string) => void) | undefined,
  ) {
    this.journal = new Journal(echo);
    this.faults = new FaultBook(this);
  }

  get writeUrl(): string {
    return this.infra.pg.url(this.writeDb);
  }

  get readUrl(): string {
    return this.infra.pg.url(this.readDb);
  }

  static async create(infra: Infra, opts: SystemOptions): Promise<ChaosSystem> {
    const run = infra.nextRun();
    const sys = new ChaosSystem(infra, run, `chaos_${run}_w`, `chaos_${run}_r`, `chaos-${run}`, opts.echo);
    try {
      await sys.setUp(opts);
    } catch (err) {
      await sys.tearDown();
      throw err;
    }
    return sys;
  }

  private async setUp(opts: SystemOptions): Promise<void> {
    this.partitions = Number(opts.env.QUEUE_PARTITIONS ?? 1);
    // A previous run may have ended with PostgreSQL or Redis down (an interrupted fault).
    await this.infra.pg.start();
    await this.infra.redis.start();
    await this.infra.redis.flushAll();
    await this.infra.pg.query(`CREATE DATABASE ${this.writeDb} TEMPLATE ${TEMPLATE.write}`);
    await this.infra.pg.query(`CREATE DATABASE ${this.readDb} TEMPLATE ${TEMPLATE.read}`);

    const ids: number[] = [];
    for (const p of CATALOGUE) {
      const { rows } = await this.infra.pg.query<{ id: number }>('INSERT INTO products (name, category, price, stock) VALUES ($1, $2, $3, $4) RETURNING id', [p.name, p.category, p.price, p.initialStock], this.writeDb);
      ids.push(rows[0]!.id);
    }
    this.model = newModel(ids, `r${this.run}-${Date.now().toString(36)}`);

    const webPorts: number[] = [];
    for (let i = 0; i < opts.scale.web; i++) webPorts.push(await freePort());
    const env: Record<string, string> = {
      DATABASE_URL: this.writeUrl,
      READ_DATABASE_URL: this.readUrl,
      REDIS_URL: this.infra.redis.url,
      QUEUE_PREFIX: this.prefix,
      QUEUE_NAME,
      LOG_LEVEL: 'info',
      ...DEFAULT_ENV,
      ...opts.env,
    };
    // A web logs every request at info: warn keeps its last 20 KB for what went wrong.
    const webEnv: Record<string, string> = opts.env.LOG_LEVEL ? {} : { LOG_LEVEL: 'warn' };
    this.supervisor = new Supervisor(this.journal, env, opts.scale, webPorts, { web: webEnv });
    await this.supervisor.startAll();
    this.startObserver();
    this.journal.note(`run ${this.run}: ${this.writeDb}/${this.readDb}, prefix ${this.prefix}, ${this.supervisor.slots.map((s) => s.name).join(' ')}`);
  }

  private observer: NodeJS.Timeout | undefined;

  /**
   * Notes in the timeline whenever the reconciler's watermark moves, with the
   * outbox ids at or below the new one that were not processed at that
   * moment: the evidence when an event is lost behind the watermark.
   */
  private startObserver(): void {
    const read = this.pool('read');
    const write = this.pool('write');
    let last = '0';
    let busy = false;
    this.observer = setInterval(() => {
      if (busy) return;
      busy = true;
      void (async () => {
        try {
          const { rows } = await read.query<{ w: string }>('SELECT last_event_id::text AS w FROM reconciler_watermark');
          const w = rows[0]?.w ?? '0';
          if (w !== last) {
            const { rows: ids } = await write.query<{ id: number }>('SELECT id FROM outbox WHERE id > $1 AND id <= $2 ORDER BY id', [last, w]);
            const { rows: done } = await read.query<{ event_id: string }>('SELECT event_id FROM processed_events WHERE event_id = ANY ($1::text[])', [ids.map((r) => String(r.id))]);
            const doneSet = new Set(done.map((d) => d.event_id));
            const skipped = ids.filter((r) => !doneSet.has(String(r.id))).map((r) => r.id);
            this.journal.note(`reconciler watermark ${last} → ${w}${skipped.length > 0 ? `; NOT processed at or below it: ${skipped.join(',')}` : ''}`);
            last = w;
          }
        } catch {
          // Faults make the observer miss a beat; it is evidence, not a check.
        } finally {
          busy = false;
        }
      })();
    }, 200);
  }

  /**
   * Web slot by a generated index, as a load balancer would route: among the
   * webs that run and are not being stopped, if any; else any: a stopping
   * one may still answer, answer 503 shutting_down, or reset the connection;
   * a stopped one refuses it.
   */
  web(i: number): Slot {
    const webs = this.supervisor.byRole('web');
    const live = webs.filter((w) => w.targetable);
    const from = live.length > 0 ? live : webs;
    return from[i % from.length]!;
  }

  newKey(): string {
    return `${this.model.keyPrefix}-${this.model.nextKey++}`;
  }

  /** A pool on write_db or read_db for the harness's own queries (ended at teardown). */
  pool(which: 'write' | 'read'): pg.Pool {
    const p = new pg.Pool({ connectionString: which === 'write' ? this.writeUrl : this.readUrl, max: 3, connectionTimeoutMillis: 5000, application_name: `chaos-harness-${which}` });
    p.on('error', () => undefined); // faults drop idle harness connections too
    this.pools.push(p);
    return p;
  }

  /**
   * Everything this run made goes, whatever state it is in: processes killed,
   * faults healed (so the cluster can drop the databases), databases dropped,
   * Redis flushed.
   */
  async tearDown(): Promise<void> {
    clearInterval(this.observer);
    this.supervisor?.killAll();
    await this.faults.healAll().catch(() => undefined);
    await Promise.allSettled(this.pools.map((p) => p.end()));
    this.pools = [];
    await this.infra.pg.start().catch(() => undefined);
    for (const db of [this.writeDb, this.readDb]) {
      await this.infra.pg.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`).catch((err: unknown) => this.journal.note(`could not drop ${db}: ${(err as Error).message}`));
    }
    await this.infra.redis.start().catch(() => undefined);
    await this.infra.redis.flushAll().catch(() => undefined);
  }
}
