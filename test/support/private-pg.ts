import { execFile, execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { freePort } from './processes.js';
import { sleep } from './pipeline.js';

const run = promisify(execFile);

/** Where Debian puts PostgreSQL 15; PG_BIN overrides it. */
const PG_BIN = process.env.PG_BIN ?? '/usr/lib/postgresql/15/bin';

/**
 * A private PostgreSQL 15 cluster for tests that stop, restart or kill
 * PostgreSQL: the machine's shared server is never touched. initdb takes a
 * second or so, so create one per test run and make databases per scenario.
 *
 * PostgreSQL refuses to run as root, so initdb and pg_ctl run as the
 * `postgres` OS user (runuser) in a fresh folder under os.tmpdir() that
 * `postgres` owns; the unix socket lives in that folder too. Durability is
 * traded for speed (fsync off): a crash of the machine is not a fault these
 * tests model, a crash of PostgreSQL (kill9) is.
 */
export class PrivatePostgres {
  private constructor(
    readonly port: number,
    /** The folder that holds everything: data/, the socket, the server log. */
    readonly dir: string,
  ) {}

  get dataDir(): string {
    return path.join(this.dir, 'data');
  }

  get logFile(): string {
    return path.join(this.dir, 'server.log');
  }

  url(db = 'postgres'): string {
    return `postgres://postgres@127.0.0.1:${this.port}/${db}`;
  }

  /** initdb (trust auth, loopback only) and start. */
  static async create(opts: { maxConnections?: number } = {}): Promise<PrivatePostgres> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'op-private-pg-'));
    const pgUser = execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim();
    const pgGroup = execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim();
    fs.chownSync(dir, Number(pgUser), Number(pgGroup));
    const db = new PrivatePostgres(await freePort(), dir);
    try {
      await db.asPostgres(path.join(PG_BIN, 'initdb'), ['-D', db.dataDir, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-instructions']);
      // Settings go into postgresql.conf, so that ALTER SYSTEM (postgresql.auto.conf) stays free for fault injection.
      const settings = {
        port: String(db.port),
        listen_addresses: "'127.0.0.1'",
        unix_socket_directories: `'${dir}'`,
        max_connections: String(opts.maxConnections ?? 250),
        fsync: 'off',
        synchronous_commit: 'on',
        full_page_writes: 'off',
        shared_buffers: "'128MB'",
        log_min_messages: 'warning',
        log_line_prefix: "'%m [%p] %a '",
        timezone: "'UTC'",
      };
      fs.appendFileSync(path.join(db.dataDir, 'postgresql.conf'), Object.entries(settings).map(([k, v]) => `${k} = ${v}\n`).join(''));
      await db.start();
    } catch (err) {
      await db.destroy();
      throw err;
    }
    return db;
  }

  private async asPostgres(cmd: string, args: string[], timeoutMs = 60_000): Promise<string> {
    try {
      const { stdout, stderr } = await run('runuser', ['-u', 'postgres', '--', cmd, ...args], { timeout: timeoutMs, cwd: this.dir });
      return stdout + stderr;
    } catch (err) {
      const e = err as Error & { stdout?: string; stderr?: string };
      throw new Error(`${path.basename(cmd)} ${args.join(' ')} failed: ${e.message}\n${e.stdout ?? ''}${e.stderr ?? ''}\n${this.logTail()}`, { cause: err });
    }
  }

  /** The last lines of the server log, for error messages. */
  logTail(bytes = 4000): string {
    try {
      const text = fs.readFileSync(this.logFile, 'utf8');
      return text.slice(-bytes);
    } catch {
      return '';
    }
  }

  /**
   * pg_ctl start, waiting until it accepts connections. After kill9 the old
   * backends may still hold the shared memory for a moment ("pre-existing
   * shared memory block is still in use"): retried for a while.
   */
  async start(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        await this.asPostgres(path.join(PG_BIN, 'pg_ctl'), ['-D', this.dataDir, '-l', this.logFile, '-w', '-t', '30', 'start']);
        return;
      } catch (err) {
        if (await this.isRunning()) return;
        if (Date.now() > deadline) throw err;
        await sleep(250);
      }
    }
  }

  /** pg_ctl stop: `fast` rolls back sessions and checkpoints; `immediate` is a crash without the kill. */
  async stop(mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
    if (!(await this.isRunning())) return;
    await this.asPostgres(path.join(PG_BIN, 'pg_ctl'), ['-D', this.dataDir, '-m', mode, '-w', '-t', '60', 'stop']);
  }

  /** SIGKILL of the postmaster alone, as the OOM killer would; its backends exit on their own. */
  async kill9(): Promise<void> {
    const pid = this.postmasterPid();
    if (pid === undefined) return;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      return; // already gone
    }
    for (let i = 0; i < 200; i++) {
      try {
        process.kill(pid, 0);
      } catch {
        return;
      }
      await sleep(25);
    }
  }

  postmasterPid(): number | undefined {
    try {
      const first = fs.readFileSync(path.join(this.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0];
      const pid = Number(first);
      return Number.isInteger(pid) && pid > 0 ? pid : undefined;
    } catch {
      return undefined;
    }
  }

  async isRunning(): Promise<boolean> {
    const r = spawnSync('runuser', ['-u', 'postgres', '--', path.join(PG_BIN, 'pg_ctl'), '-D', this.dataDir, 'status'], { encoding: 'utf8' });
    return r.status === 0;
  }

  /** A query on the `postgres` database through a short-lived client (survives restarts between calls). */
  async query<R extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, params: unknown[] = [], db = 'postgres'): Promise<pg.QueryResult<R>> {
    const client = new pg.Client({ connectionString: this.url(db), connectionTimeoutMillis: 5000 });
    client.on('error', () => undefined); // a restart may drop it between statements
    await client.connect();
    try {
      return await client.query<R>(sql, params);
    } finally {
      await client.end().catch(() => undefined);
    }
  }

  /** Stop (immediately) and remove the folder. Safe to call more than once, also after a failed create. */
  async destroy(): Promise<void> {
    try {
      await this.stop('immediate');
    } catch {
      await this.kill9();
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  /** For process 'exit' handlers, where nothing asynchronous runs: stop and remove, synchronously. */
  destroySync(): void {
    spawnSync('runuser', ['-u', 'postgres', '--', path.join(PG_BIN, 'pg_ctl'), '-D', this.dataDir, '-m', 'immediate', '-w', 'stop'], { stdio: 'ignore', timeout: 20_000 });
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
