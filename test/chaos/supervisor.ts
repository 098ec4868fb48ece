import { spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import path from 'node:path';
import { projectRoot } from '../../lib/paths.js';
import { sleep } from '../support/pipeline.js';
import type { Journal } from './journal.js';

export type Role = 'web' | 'relay' | 'worker';
export const ROLES: readonly Role[] = ['web', 'relay', 'worker'];

/** The Procfile commands (`node dist/...`). */
const SCRIPTS: Record<Role, string> = {
  web: 'api/main.js',
  relay: 'workers/relay/main.js',
  worker: 'workers/projector/main.js',
};

/** SPEC §6: a process stops cleanly on SIGTERM within 10 s. */
export const SIGTERM_LIMIT_MS = 10_000;
/** How long to wait for a SIGTERM'd process before giving up on it (then SIGKILL). */
const SIGTERM_GIVE_UP_MS = 15_000;
const OUTPUT_KEEP = 20_000;
/** See Slot.booted. */
export const BOOT_MS = 2_000;

/**
 * One Procfile process slot (web.1, relay.2, ...): the current child and its
 * last output. A slot keeps its name and, for a web, its port across
 * restarts, so the harness can always reach "web.1".
 */
export class Slot {
  child: ChildProcess | undefined;
  output = '';
  /** Set while the test itself is stopping the child: its exit is expected. */
  expectExit = false;
  /** The test (or the crash restart) has a restart scheduled. */
  restartPending = false;
  starts = 0;
  crashes = 0;
  /** When the current child was spawned. */
  startedAt = 0;

  constructor(
    readonly role: Role,
    readonly index: number,
    readonly env: Record<string, string>,
    readonly port: number | undefined,
  ) {}

  get name(): string {
    return `${this.role}.${this.index}`;
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Running and not being stopped by the test: a fair target for kill -9. */
  get targetable(): boolean {
    return this.running && !this.expectExit && !this.restartPending;
  }

  /**
   * Up long enough to have its signal handlers: a SIGTERM in the first few
   * hundred ms, while node still loads modules, kills it by the signal's
   * default action; a platform does not stop a process it has just started.
   */
  get booted(): boolean {
    return this.targetable && Date.now() - this.startedAt >= BOOT_MS;
  }

  get base(): string {
    if (this.port === undefined) throw new Error(`${this.name} has no HTTP port`);
    return `http://127.0.0.1:${this.port}`;
  }
}

/**
 * A process manager for the Procfile processes, as a platform would run
 * them: a process the test kills is restarted by the test after a delay; a
 * process that exits on its own is a violation (with its last output) and is
 * restarted too, with backoff, so the run goes on and the end-of-run
 * invariants still get checked.
 */
export class Supervisor {
  readonly slots: Slot[] = [];
  private readonly pending = new Set<Promise<void>>();
  private shuttingDown = false;

  constructor(
    private readonly journal: Journal,
    baseEnv: Record<string, string>,
    scale: Record<Role, number>,
    webPorts: number[],
    envByRole: Partial<Record<Role, Record<string, string>>> = {},
  ) {
    for (const role of ROLES) {
      for (let i = 1; i <= scale[role]; i++) {
        const port = role === 'web' ? webPorts[i - 1] : undefined;
        if (role === 'web' && port === undefined) throw new Error(`no port for web.${i}`);
        const env = { ...baseEnv, ...envByRole[role], ...(port === undefined ? {} : { PORT: String(port) }) };
        this.slots.push(new Slot(role, i, env, port));
      }
    }
  }

  byRole(role: Role): Slot[] {
    return this.slots.filter((s) => s.role === role);
  }

  /** Start every slot and wait until each web answers /healthz. */
  async startAll(): Promise<void> {
    for (const s of this.slots) this.spawn(s);
    await this.waitReady();
  }

  private spawn(slot: Slot): void {
    if (this.shuttingDown) return;
    slot.output = '';
    slot.expectExit = false;
    slot.starts++;
    slot.startedAt = Date.now();
    const child = spawn(process.execPath, [path.join(projectRoot, 'dist', SCRIPTS[slot.role])], {
      env: { ...process.env, ...slot.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    slot.child = child;
    const keep = (b: Buffer) => {
      slot.output = (slot.output + b.toString()).slice(-OUTPUT_KEEP);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    child.once('exit', (code, signal) => this.onExit(slot, child, code, signal));
  }

  private onExit(slot: Slot, child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (slot.child !== child || slot.expectExit || this.shuttingDown) return;
    slot.crashes++;
    this.journal.count(`exit:${slot.role}`);
    this.journal.violation('process-exit', `${slot.name} exited on its own (code ${code}, signal ${signal}), start #${slot.starts}`, slot.output);
    // Like a platform's process manager: restart, backing off if it keeps dying.
    const delay = Math.min(500 * slot.crashes, 5000);
    this.restartAfter(slot, delay);
  }

  private restartAfter(slot: Slot, delayMs: number): void {
    slot.restartPending = true;
    this.track(
      (async () => {
        await sleep(delayMs);
        slot.restartPending = false;
        if (!slot.running) this.spawn(slot);
      })(),
    );
  }

  private track(p: Promise<void>): void {
    const tracked = p.catch((err: unknown) => this.journal.violation('harness', `supervisor task failed: ${(err as Error).message}`, (err as Error).stack));
    this.pending.add(tracked);
    void tracked.finally(() => this.pending.delete(tracked));
  }

  /** kill -9 now; the restart comes after `restartDelayMs`, in the background. */
  async kill9(slot: Slot, restartDelayMs: number): Promise<void> {
    const child = slot.child;
    if (!child || !slot.running) return;
    slot.expectExit = true;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
    this.restartAfter(slot, restartDelayMs);
  }

  /**
   * SIGTERM and, in the background, check the exit (code 0 within 10 s),
   * then restart after `restartDelayMs`. Returns at once: the shutdown
   * overlaps whatever the run does next, as a deploy would.
   */
  sigterm(slot: Slot, restartDelayMs: number): void {
    if (!slot.running) return;
    slot.expectExit = true;
    slot.restartPending = true;
    this.track(
      (async () => {
        await this.terminate(slot);
        await sleep(restartDelayMs);
        slot.restartPending = false;
        if (!slot.running) this.spawn(slot);
      })(),
    );
  }

  /** SIGTERM one child, wait for it, record a slow or non-zero exit. */
  private async terminate(slot: Slot): Promise<void> {
    const child = slot.child;
    if (!child || !slot.running) return;
    const t0 = Date.now();
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.once('exit', (code, signal) => r({ code, signal })));
    child.kill('SIGTERM');
    const result = await Promise.race([exited, sleep(SIGTERM_GIVE_UP_MS).then(() => undefined)]);
    const ms = Date.now() - t0;
    if (result === undefined) {
      this.journal.violation('sigterm', `${slot.name} still running ${SIGTERM_GIVE_UP_MS} ms after SIGTERM; killed`, slot.output);
      child.kill('SIGKILL');
      await exited;
      return;
    }
    if (result.code !== 0 || ms > SIGTERM_LIMIT_MS) {
      this.journal.violation('sigterm', `${slot.name} after SIGTERM: exit code ${result.code}, signal ${result.signal}, after ${ms} ms (want 0 within ${SIGTERM_LIMIT_MS} ms)`, slot.output);
    } else {
      this.journal.note(`${slot.name} stopped cleanly after SIGTERM in ${ms} ms`);
    }
  }

  /** Background tasks can schedule more (a crash loop): bounded. */
  private async drainPending(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.pending.size > 0) {
      if (Date.now() > deadline) throw new Error(`supervisor: restarts still pending after ${timeoutMs} ms (${this.summary()})`);
      await Promise.race([Promise.all([...this.pending]), sleep(1000)]);
    }
  }

  /** Wait for every scheduled restart and SIGTERM check, then for every slot to be up. */
  async settle(timeoutMs = 60_000): Promise<void> {
    await this.drainPending(timeoutMs);
    for (const s of this.slots) if (!s.running) this.spawn(s);
    await this.waitReady();
  }

  /** Until every web answers GET /healthz (a relay or worker has no probe: the drain shows whether they work). */
  async waitReady(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (const s of this.byRole('web')) {
      while (!(await healthz(s))) {
        if (Date.now() > deadline) throw new Error(`${s.name} did not answer /healthz within ${timeoutMs} ms: ${s.output.slice(-2000)}`);
        await sleep(100);
      }
    }
  }

  /** SIGTERM everything at once at the end of a run; the same 10 s rule applies. */
  async stopAll(): Promise<void> {
    await this.drainPending(60_000);
    this.shuttingDown = true;
    await Promise.all(
      this.slots.map(async (s) => {
        // A process restarted a moment ago gets to finish booting first (see Slot.booted).
        await sleep(Math.max(0, s.startedAt + BOOT_MS - Date.now()));
        s.expectExit = true;
        await this.terminate(s);
      }),
    );
  }

  /** Last resort (teardown after a failure, process exit): SIGKILL whatever still runs. */
  killAll(): void {
    this.shuttingDown = true;
    for (const s of this.slots) {
      s.expectExit = true;
      if (s.running) s.child?.kill('SIGKILL');
    }
  }

  summary(): string {
    return this.slots.map((s) => `${s.name}: ${s.starts} start(s), ${s.crashes} crash(es)`).join('; ');
  }
}

function healthz(slot: Slot): Promise<boolean> {
  if (!slot.running) return Promise.resolve(false);
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port: slot.port, path: '/healthz', agent: false, timeout: 1000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
  });
}
