import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { freePort } from '../support/processes.js';
import { sleep } from '../support/pipeline.js';

/**
 * The chaos test's own redis-server on a spare port: the only Redis it ever
 * flushes or kills. No persistence, so a restart after kill -9 comes back
 * empty, which is the data loss the reconciler must repair. Its working
 * directory is a temp folder removed by destroy().
 */
export class ChaosRedis {
  private child: ChildProcess | undefined;
  private output = '';

  private constructor(
    readonly port: number,
    private readonly dir: string,
  ) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  static async create(): Promise<ChaosRedis> {
    const r = new ChaosRedis(await freePort(), fs.mkdtempSync(path.join(os.tmpdir(), 'op-chaos-redis-')));
    await r.start();
    return r;
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  async start(): Promise<void> {
    if (this.running) return;
    const args = ['--port', String(this.port), '--bind', '127.0.0.1', '--dir', this.dir, '--save', '', '--appendonly', 'no', '--maxmemory-policy', 'noeviction'];
    const child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const keep = (b: Buffer) => {
      this.output = (this.output + b.toString()).slice(-8000);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    this.child = child;
    for (let i = 0; i < 200; i++) {
      if (child.exitCode !== null) break;
      if (await this.ping()) return;
      await sleep(25);
    }
    throw new Error(`redis-server on ${this.port} did not start: ${this.output}`);
  }

  private async ping(): Promise<boolean> {
    const r = new Redis(this.port, '127.0.0.1', { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 500 });
    r.on('error', () => undefined);
    try {
      await r.connect();
      return (await r.ping()) === 'PONG';
    } catch {
      return false;
    } finally {
      r.disconnect();
    }
  }

  /** SIGKILL: everything in memory is gone; start() brings it back empty on the same port. */
  async kill9(): Promise<void> {
    const child = this.child;
    if (!child || !this.running) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
  }

  /** FLUSHALL on this private server (never the machine's Redis). */
  async flushAll(): Promise<void> {
    const r = new Redis(this.port, '127.0.0.1', { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null });
    r.on('error', () => undefined);
    try {
      await r.connect();
      await r.flushall();
    } finally {
      r.disconnect();
    }
  }

  async destroy(): Promise<void> {
    await this.kill9();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  /** For process 'exit' handlers: nothing asynchronous runs there. */
  destroySync(): void {
    if (this.running) this.child?.kill('SIGKILL');
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
